"""The stages of `thinksae run`, declared once: one `Stage` record each in `TABLE`, in running
order, next to the function that runs it. The spec checks (`spec.py`), the hashing and skipping
(`stages.py`, `runner.py`) and the report (`report.py`) all read this table.

Adding a stage: write its function (``fn(p, st) -> Step``: build the config with
``p.config(st, **paths)`` and return it with the action that writes ``p.dir(st)``), add its
record where it runs, and, if the report shows it, a section in `report.SECTIONS` and the
templates."""

from __future__ import annotations

import dataclasses
import importlib
import json
import typing
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple

from .. import atomic
from ..config import FLAT
from ..errors import ThinksaeError

if TYPE_CHECKING:
    from .runner import Pipeline

FEATURE_SCORES = ("reason_score", "think_rate_ratio", "think_rate_ratio_lo", "think_mean_ratio",
                  "freq")
"""Scores that `feature: top:<score>` (steer, monitor) may rank content features by."""


class Step(NamedTuple):
    """What a stage function hands the runner."""

    cfg: Any
    """The stage's config dataclass (hashed; saved in its marker)."""
    action: Callable[[], None]
    """Writes the stage's folder; run unless the stage is done for the same hash."""
    extra: dict[str, Any] | None = None
    """What the stage uses beside its config (hashed with it), e.g. the monitor's rule."""


@dataclass(frozen=True)
class Stage:
    """One stage of `thinksae run`."""

    name: str
    """Its section in a pipeline config; its name in logs, markers and the report."""
    folder: str
    """Its directory in the run directory."""
    config: str
    """Its config dataclass as ``module:Class`` (imported when first needed)."""
    run: Callable[[Pipeline, Stage], Step | None]
    """Its function: the config and the action (None: it stands in with a hash it set itself)."""
    upstream: tuple[str, ...] = ()
    """Stages whose outputs it reads; their hashes enter its own, in this order."""
    optional: bool = False
    """A config may turn it off (``name: null`` or ``enabled: false``)."""
    managed: tuple[str, ...] = ()
    """Config fields `thinksae run` sets itself (paths between stages): a config may not."""
    extra: tuple[str, ...] = ()
    """Keys of its section that are not config fields (read by its function)."""
    command: str = ""
    """The command whose options its section holds (default: its name)."""
    all_ranks: bool = False
    """Under torchrun every rank runs it (after waiting for its upstream); others: rank 0 only."""
    check: Callable[[dict[str, Any], str], None] | None = None
    """More checks of its (resolved) section before anything runs: raise a ThinksaeError."""
    default_on: bool = True
    """Runs when a config has no section for it (False: only when a config gives one)."""
    version: int = 1
    """Its code version: raise it when the stage writes something else for the same config
    (its hash changes, so run directories redo it and what depends on it)."""

    @property
    def config_class(self) -> type:
        module, name = self.config.split(":")
        return getattr(importlib.import_module(module), name)

    @property
    def help(self) -> str:
        return f"thinksae {self.command or self.name} --help"


def nested_configs(cls: type) -> dict[str, type]:
    """Fields of a config dataclass that are dataclasses themselves (``train.sae``): a section
    gives them as a mapping. (Flat groups, e.g. ``generation``, are given flat: not here.)"""
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)
            if dataclasses.is_dataclass(hints.get(f.name)) and not f.metadata.get(FLAT)}


# --- the stage functions -----------------------------------------------------------------------

def run_corpus(p: Pipeline, st: Stage) -> Step:
    cfg = p.config(st, out=str(p.paths.traces))

    def action():
        from ..corpus import build_corpus

        model, tok = (None, None) if cfg.traces else p.models.get(cfg)
        build_corpus(cfg, model, tok)
    return Step(cfg, action)


def run_harvest(p: Pipeline, st: Stage) -> Step:
    cfg = p.config(st, corpus=str(p.paths.traces), out=str(p.dir(st)))

    def action():
        from ..store import harvest

        harvest(cfg, *p.models.get(cfg))
    return Step(cfg, action)


def run_train(p: Pipeline, st: Stage) -> Step | None:
    if p.spec.sae:  # a pretrained SAE stands in: its files' hash is the train stage's hash
        from ..sae.hub import fetch_sae
        from .stages import sae_digest

        p.sae_dir = fetch_sae(p.spec.sae, p.spec.hookpoint)
        p.hashes[st.name] = sae_digest(p.sae_dir)
        p.log(f"[run] train: using the pretrained SAE {p.sae_dir}")
        return None
    cfg = p.config(st, store=str(p.paths.store), out=str(p.dir(st)))
    p.sae_dir = p.paths.trained_sae

    def action():
        from ..train import train

        train(cfg)
    return Step(cfg, action)


def run_eval(p: Pipeline, st: Stage) -> Step:
    cfg = p.config(st, sae=str(p.sae_dir), store=str(p.paths.store),
                   out=str(p.dir(st) / "eval.json"), update_card=not p.spec.sae)

    def action():
        from ..evaluate import evaluate

        evaluate(cfg)
    return Step(cfg, action)


def run_splice(p: Pipeline, st: Stage) -> Step:
    cfg = p.config(st, sae=str(p.sae_dir), store=str(p.paths.store),
                   out=str(p.dir(st) / "eval.json"), update_card=False)

    def action():
        from ..evaluate import evaluate
        from ..sae import update_report_card

        result = evaluate(cfg, *p.models.get(cfg))
        if not p.spec.sae:
            update_report_card(p.sae_dir, "eval_spliced", result.to_dict())
    return Step(cfg, action)


def run_analyze(p: Pipeline, st: Stage) -> Step:
    cfg = p.config(st, sae=str(p.sae_dir), store=str(p.paths.store), out=str(p.dir(st)))

    def action():
        from ..features import analyze

        model, tok = p.models.get(cfg) if cfg.logit_lens else (None, None)
        analyze(cfg, model, tok)
    return Step(cfg, action)


def run_validate(p: Pipeline, st: Stage) -> Step:
    cfg = p.config(st, sae=str(p.sae_dir), store=str(p.paths.store), analysis=str(p.dir("analyze")),
                   out=str(p.dir(st)), refresh_dashboard=False)

    def action():
        from ..validate import validate

        validate(cfg, *p.models.get(cfg))
    return Step(cfg, action)


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


def feature_rule(spec_feature: Any) -> str | None:
    """``auto`` or ``top:<score>`` when the config leaves the feature to the run, else None."""
    if spec_feature in (None, "auto", []):
        return "auto"
    return str(spec_feature) if str(spec_feature).startswith("top:") else None


def chosen_feature(p: Pipeline, spec_feature: Any) -> tuple[int, str]:
    """The feature a steer/monitor section names, or the one its rule picks from the analysis."""
    rule = feature_rule(spec_feature)
    if rule is None:
        return int(str(spec_feature[0] if isinstance(spec_feature, list) else spec_feature)
                   .split("=")[0]), "given in the config"
    from ..features.report import read_features

    return pick_feature(read_features(p.dir("analyze")), rule)


def run_steer(p: Pipeline, st: Stage) -> Step:
    options = p.spec.stages[st.name]
    given = options.get("feature", "auto")
    feature, why = chosen_feature(p, given)
    specs = [str(feature)] if options.get("sweep") else (
        [f"{feature}=0"] if feature_rule(given) else given)
    extra = {"max_from": str(p.dir("analyze"))} if options.get("max_from") == "analysis" else {}
    cfg = p.config(st, sae=str(p.sae_dir), feature=specs, out=str(p.dir(st)), **extra)

    def action():
        from ..steer import steer

        steer(cfg, *p.models.get(cfg))
        atomic.write_json(p.dir(st) / "choice.json", {"feature": feature, "why": why})
    return Step(cfg, action)


def run_monitor(p: Pipeline, st: Stage) -> Step:
    from ..features.report import read_feature_row

    options = p.spec.stages[st.name]
    rule = dict(options.get("rule") or {})
    feature, why = chosen_feature(p, rule.pop("feature", "auto"))
    row = read_feature_row(p.dir("analyze"), feature)
    max_act = row.get("max_act") or 0.0
    threshold = rule.pop("threshold", "auto")
    if threshold == "auto":  # half its mean top-k activation when it fires: the quantity
        # the rule compares under the default value topk (value pre: refused by the spec)
        threshold = round(0.5 * (row.get("mean_act") or max_act), 4)
    rule = {"name": f"feature-{feature}", "feature": feature, "threshold": float(threshold),
            "severity": "warning", **rule}
    question = options.get("question") or "What is 15% of 240?"
    cfg = p.config(st, sae=str(p.sae_dir), prompt=question, alert_log=None, live=False,
                   rules=None, features=str(feature))
    out = p.dir(st)

    def action():
        from ..monitor.run import build_monitor

        mon = build_monitor(cfg, *p.models.get(cfg))
        events = [e.to_dict() for e in mon.watch(question, rules=[rule])]
        for e in events:  # clock and run id differ between runs: keep the file reproducible
            for key in ("time", "run_id", "seconds"):
                e.pop(key, None)
        lines = "".join(json.dumps(e, ensure_ascii=False) + "\n" for e in events)
        atomic.write_bytes(out / "events.jsonl", lines.encode())
        atomic.write_json(out / "monitor.json", {
            "question": question, "rule": rule, "feature": feature, "why": why,
            "max_act": max_act})
    return Step(cfg, action, extra={"rule": rule, "question": question})


def _top_score(value: Any, what: str, where: str) -> None:
    value = str(value)
    if value.startswith("top:") and value.removeprefix("top:") not in FEATURE_SCORES:
        raise ThinksaeError(f"{where}: {what} {value!r}: use top:<score> with one of "
                            f"{', '.join(FEATURE_SCORES)}")


def check_steer(options: dict[str, Any], where: str) -> None:
    if not options.get("sweep") and not options.get("feature"):
        raise ThinksaeError(f"{where}: steer needs `sweep` (values) or `feature` (interventions)")
    _top_score(options.get("feature", "auto"), "steer.feature", where)


def check_monitor(options: dict[str, Any], where: str) -> None:
    """`threshold: auto` is half the feature's mean top-k activation when it fires (from the
    analysis): a threshold for the monitor's default value, topk, and refused for value pre."""
    _top_score((options.get("rule") or {}).get("feature", "auto"), "monitor.rule.feature", where)
    rule, value = options.get("rule") or {}, options.get("value", "topk")
    if rule.get("value") not in (None, value):
        raise ThinksaeError(f"{where}: monitor.rule.value {rule['value']!r} differs from "
                            f"monitor.value {value!r}; set monitor.value")
    if value == "pre" and rule.get("threshold", "auto") == "auto":
        raise ThinksaeError(f"{where}: monitor.rule.threshold auto is calibrated on top-k "
                            "activations; with monitor.value pre give a number")


# --- the table ---------------------------------------------------------------------------------

TABLE: tuple[Stage, ...] = (
    Stage("corpus", "corpus", "thinksae.corpus:CorpusConfig", run_corpus, managed=("out",)),
    Stage("harvest", "store", "thinksae.store:HarvestConfig", run_harvest, upstream=("corpus",),
          managed=("corpus", "out")),
    Stage("train", "sae", "thinksae.train:TrainConfig", run_train, upstream=("harvest",),
          managed=("store", "model", "corpus", "hookpoint", "out"), all_ranks=True),
    Stage("eval", "eval", "thinksae.evaluate:EvalConfig", run_eval, upstream=("train", "harvest"),
          managed=("sae", "store", "model", "corpus", "out", "update_card"), version=2),
    Stage("splice", "splice", "thinksae.evaluate:EvalConfig", run_splice,
          upstream=("train", "harvest"), optional=True, command="eval",
          managed=("sae", "store", "corpus", "out", "update_card"), version=2),
    Stage("analyze", "features", "thinksae.features:AnalyzeConfig", run_analyze,
          upstream=("train", "harvest"), managed=("sae", "store", "corpus", "out"), version=2),
    Stage("validate", "validate", "thinksae.validate:ValidateConfig", run_validate,
          upstream=("train", "harvest", "analyze"), optional=True,
          managed=("sae", "store", "analysis", "out", "refresh_dashboard"), default_on=False),
    Stage("steer", "steer", "thinksae.steer:SteerConfig", run_steer, upstream=("train", "analyze"),
          optional=True, managed=("sae", "out"), check=check_steer, version=2),
    Stage("monitor", "monitor", "thinksae.monitor:MonitorConfig", run_monitor,
          upstream=("train", "analyze"), optional=True, extra=("question", "rule"),
          managed=("sae", "serve", "live", "alert_log", "rules", "prompt"), check=check_monitor,
          version=2),
)
"""Every stage, in running order. eval: reconstruction on every stored token; splice: the SAE
spliced into the model (CE/KL) on the first tokens of the store."""


def names() -> tuple[str, ...]:
    return tuple(st.name for st in TABLE)


def stage(name: str) -> Stage:
    """The record of the stage ``name``."""
    for st in TABLE:
        if st.name == name:
            return st
    raise ThinksaeError(f"unknown stage {name!r} (stages: {', '.join(names())})")
