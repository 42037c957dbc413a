"""`thinksae run`: corpus → harvest → train → eval → splice → analyze → (steer) → (monitor) →
report, in one run directory, resumable stage by stage."""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from simple_parsing import field

from .. import atomic
from ..errors import ThinksaeError
from .spec import PipelineSpec, resolve
from .stages import (
    DEPENDS,
    Models,
    Paths,
    build_config,
    read_marker,
    run_stage,
    sae_digest,
    stage_hash,
)


@dataclass
class RunConfig:
    """Options of `thinksae run`."""

    config: str | None = field(default=None, positional=True, nargs="?", metavar="CONFIG")
    """Pipeline config (YAML or JSON): shared keys (name, out, model, hookpoint, device, dtype,
    sae) and one section per stage holding that command's options. `preset: NAME` inside it
    starts from a preset."""
    preset: str | None = None
    """Start from a preset: offline-demo (Qwen2.5-Coder GGUF from PyPI, CPU) or r1-distill-1.5b
    (DeepSeek-R1-Distill-Qwen-1.5B from the hub, layer 10, one GPU)."""
    out: str | None = None
    """Run directory (default: the config's `out`)."""
    model: str | None = None
    """Replace the config's model (hub id, local directory, .gguf or `offline`)."""
    device: str | None = None
    """Replace the config's device (auto, cpu, cuda, cuda:1, ...)."""
    show_config: bool = False
    """Print the resolved pipeline config (YAML) and exit."""
    progress: bool = True
    """Show progress bars."""


def pick_feature(rows: list[dict], rule: str = "auto") -> tuple[int, str]:
    """The feature the steer/monitor stages use when the spec says `auto` or `top:<score>`.

    ``auto``: the most think-specific content feature (not dead, rare or formatting), else the
    highest ReasonScore, else the most frequent content feature. ``top:<score>``: the content
    feature with the highest value of that score (one of ``FEATURE_SCORES``)."""
    content = [r for r in rows if r.get("label") not in ("dead", "rare", "formatting")]
    if rule.startswith("top:"):
        key = rule.removeprefix("top:")
        scored = [r for r in content if r.get(key) is not None]
        if not scored:
            raise ThinksaeError(f"feature {rule}: no live content feature has a {key}")
        best = max(scored, key=lambda r: (r[key], -r["feature"]))
        return best["feature"], f"highest {key} among content features"
    specific = [r for r in content if r.get("think_specific") and r.get("think_rate_ratio")]
    if specific:
        best = max(specific, key=lambda r: (r["think_rate_ratio_lo"] or 0, r["feature"] * -1))
        return best["feature"], "highest lower bound of the think/other firing-rate ratio"
    scored = [r for r in content if (r.get("reason_score") or 0) > 0]
    if scored:
        best = max(scored, key=lambda r: (r["reason_score"], -r["feature"]))
        return best["feature"], "highest ReasonScore (no think-specific content feature)"
    if content:
        best = max(content, key=lambda r: (r.get("freq") or 0, -r["feature"]))
        return best["feature"], "most frequent content feature (no think-specific one)"
    raise ThinksaeError("no live content feature to steer or monitor: the analysis found none")


def _feature_rule(spec_feature: Any) -> str | None:
    """``auto`` or ``top:<score>`` when the config leaves the feature to the run, else None."""
    if spec_feature in (None, "auto", []):
        return "auto"
    return str(spec_feature) if str(spec_feature).startswith("top:") else None


def _chosen(paths: Paths, spec_feature: Any) -> tuple[int, str]:
    rule = _feature_rule(spec_feature)
    if rule is None:
        return int(str(spec_feature[0] if isinstance(spec_feature, list) else spec_feature)
                   .split("=")[0]), "given in the config"
    from ..features.report import read_features

    return pick_feature(read_features(paths.stage_dir("analyze")), rule)


class Pipeline:
    def __init__(self, spec: PipelineSpec, progress: bool = True):
        self.spec, self.progress = spec, progress
        self.paths = Paths(Path(spec.out), spec.hookpoint)
        self.models = Models(progress)
        self.hashes: dict[str, str] = {}
        self.sae_dir: Path | None = None
        self.rank = int(os.environ.get("RANK", "0"))

    def log(self, msg: str) -> None:
        print(msg, flush=True)

    def _cfg(self, stage: str, **extra):
        return build_config(stage, self.spec, self.progress, extra)

    def _run(self, stage: str, cfg, action, extra: dict | None = None) -> None:
        digest = stage_hash(stage, cfg, [self.hashes[d] for d in DEPENDS[stage]], self.paths.root,
                            extra)
        self.hashes[stage] = digest
        if self.rank == 0:
            run_stage(stage, self.paths.stage_dir(stage), cfg, digest, action, self.log)
        elif stage == "train":  # under torchrun the other ranks only join the training
            self._wait_for("harvest")
            marker = read_marker(self.paths.stage_dir("train")) or {}
            if not (marker.get("status") == "done" and marker.get("hash") == digest):
                action()

    def _wait_for(self, stage: str) -> None:
        """Rank > 0: wait until rank 0 has finished ``stage`` with the expected config."""
        want, said = self.hashes[stage], False
        while True:
            marker = read_marker(self.paths.stage_dir(stage)) or {}
            if marker.get("status") == "done" and marker.get("hash") == want:
                return
            if not said:
                self.log(f"[run] rank {self.rank}: waiting for rank 0 to finish {stage}")
                said = True
            time.sleep(5)

    def run(self) -> Path | None:
        spec, paths = self.spec, self.paths
        if self.rank != 0:  # torchrun: rank 0 runs every stage, the others join train (DDP)
            self.corpus()
            self.harvest()
            self.train()
            return None
        paths.root.mkdir(parents=True, exist_ok=True)
        atomic.write_json(paths.root / "run_config.json", spec.to_dict())
        self.corpus()
        self.harvest()
        self.train()
        self.evaluate()
        if spec.stages["splice"] is not None:
            self.splice()
        self.analyze()
        if spec.stages["steer"] is not None:
            self.steer()
        if spec.stages["monitor"] is not None:
            self.monitor()
        from .report import write_report

        index = write_report(paths.root, self.sae_dir if spec.sae else None)
        self.log(f"[run] report: {index}")
        return index

    def corpus(self) -> None:
        cfg = self._cfg("corpus", out=str(self.paths.traces))

        def action():
            from ..corpus import build_corpus

            model, tok = (None, None) if cfg.traces else self.models.get(cfg)
            build_corpus(cfg, model, tok)
        self._run("corpus", cfg, action)

    def harvest(self) -> None:
        cfg = self._cfg("harvest", corpus=str(self.paths.traces),
                        out=str(self.paths.stage_dir("harvest")))

        def action():
            from ..store import harvest

            harvest(cfg, *self.models.get(cfg))
        self._run("harvest", cfg, action)

    def train(self) -> None:
        if self.spec.sae:
            from ..sae.hub import fetch_sae

            self.sae_dir = fetch_sae(self.spec.sae, self.spec.hookpoint)
            self.hashes["train"] = sae_digest(self.sae_dir)
            self.log(f"[run] train: using the pretrained SAE {self.sae_dir}")
            return
        cfg = self._cfg("train", store=str(self.paths.store), out=str(self.paths.stage_dir("train")))

        def action():
            from ..train import train

            train(cfg)
        self._run("train", cfg, action)
        self.sae_dir = self.paths.trained_sae

    def evaluate(self) -> None:
        cfg = self._cfg("eval", sae=str(self.sae_dir), store=str(self.paths.store),
                        out=str(self.paths.stage_dir("eval") / "eval.json"),
                        update_card=not self.spec.sae)

        def action():
            from ..evaluate import evaluate

            evaluate(cfg)
        self._run("eval", cfg, action)

    def splice(self) -> None:
        cfg = self._cfg("splice", sae=str(self.sae_dir), store=str(self.paths.store),
                        out=str(self.paths.stage_dir("splice") / "eval.json"), update_card=False)

        def action():
            from ..evaluate import evaluate
            from ..sae import update_report_card

            result = evaluate(cfg, *self.models.get(cfg))
            if not self.spec.sae:
                update_report_card(self.sae_dir, "eval_spliced", result.to_dict())
        self._run("splice", cfg, action)

    def analyze(self) -> None:
        cfg = self._cfg("analyze", sae=str(self.sae_dir), store=str(self.paths.store),
                        out=str(self.paths.stage_dir("analyze")))

        def action():
            from ..features import analyze

            model, tok = self.models.get(cfg) if cfg.logit_lens else (None, None)
            analyze(cfg, model, tok)
        self._run("analyze", cfg, action)

    def steer(self) -> None:
        options = self.spec.stages["steer"]
        given = options.get("feature", "auto")
        feature, why = _chosen(self.paths, given)
        specs = [str(feature)] if options.get("sweep") else (
            [f"{feature}=0"] if _feature_rule(given) else given)
        extra = {"max_from": str(self.paths.stage_dir("analyze"))} \
            if options.get("max_from") == "analysis" else {}
        cfg = self._cfg("steer", sae=str(self.sae_dir), feature=specs,
                        out=str(self.paths.stage_dir("steer")), **extra)

        def action():
            from ..steer import steer

            steer(cfg, *self.models.get(cfg))
            atomic.write_json(self.paths.stage_dir("steer") / "choice.json",
                              {"feature": feature, "why": why})
        self._run("steer", cfg, action)

    def monitor(self) -> None:
        options = self.spec.stages["monitor"]
        rule = dict(options.get("rule") or {})
        feature, why = _chosen(self.paths, rule.pop("feature", "auto"))
        from ..features.report import read_feature_row

        row = read_feature_row(self.paths.stage_dir("analyze"), feature)
        max_act = row.get("max_act") or 0.0
        threshold = rule.pop("threshold", "auto")
        if threshold == "auto":  # clearly firing: half its mean activation when it fires
            threshold = round(0.5 * (row.get("mean_act") or max_act), 4)
        threshold = float(threshold)
        rule = {"name": f"feature-{feature}", "feature": feature, "threshold": threshold,
                "severity": "warning", **rule}
        question = options.get("question") or "What is 15% of 240?"
        cfg = self._cfg("monitor", sae=str(self.sae_dir), prompt=question, alert_log=None,
                        live=False, rules=None, features=str(feature))
        out = self.paths.stage_dir("monitor")

        def action():
            from ..monitor.run import build_monitor

            mon = build_monitor(cfg, *self.models.get(cfg))
            events = [e.to_dict() for e in mon.watch(question, rules=[rule])]
            for e in events:  # clock and run id differ between runs: keep the file reproducible
                for key in ("time", "run_id", "seconds"):
                    e.pop(key, None)
            lines = "".join(json.dumps(e, ensure_ascii=False) + "\n" for e in events)
            atomic.write_bytes(out / "events.jsonl", lines.encode())
            atomic.write_json(out / "monitor.json", {
                "question": question, "rule": rule, "feature": feature, "why": why,
                "max_act": max_act})
        self._run("monitor", cfg, action, extra={"rule": rule, "question": question})


def run(cfg: RunConfig) -> Path | None:
    """Resolve the pipeline spec and run it; returns the report's index.html."""
    spec = resolve(cfg.config, cfg.preset, {"out": cfg.out, "model": cfg.model,
                                            "device": cfg.device})
    if cfg.show_config:
        import yaml

        print(yaml.safe_dump(spec.to_dict(), sort_keys=False, allow_unicode=True), end="")
        return Path(spec.out) / "index.html"
    return Pipeline(spec, cfg.progress).run()
