"""The stage functions of `thinksae run`, one per :class:`~.stage.Stage` of the table: each builds
its stage's config with ``p.config(st, **paths)`` and returns it with the action that writes
``p.dir(st)``; and how steer and monitor pick their feature from the analysis."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from .. import atomic
from ..corpus.run import run as build_corpus
from ..errors import ThinksaeError
from ..evaluate.run import run as evaluate
from ..explain.run import run as explain
from ..features.report import read_feature_row, read_features
from ..features.run import run as analyze
from ..monitor.run import build_monitor
from ..sae.formats import update_report_card
from ..sae.hub import fetch_sae
from ..steer.run import run as steer
from ..store.run import run as harvest
from ..train.run import run as train
from ..validate.run import run as validate
from .markers import sae_digest
from .stage import Context, Stage, Step

FEATURE_SCORES = ("reason_score", "think_rate_ratio", "think_rate_ratio_lo", "think_mean_ratio",
                  "freq")
"""Scores that `feature: top:<score>` (steer, monitor) may rank content features by."""


def step_corpus(p: Context, st: Stage) -> Step:
    cfg = p.config(st, out=str(p.paths.traces))

    def action():
        model, tok = (None, None) if cfg.traces else p.models.get(cfg)
        build_corpus(cfg, model, tok)
    return Step(cfg, action)


def step_harvest(p: Context, st: Stage) -> Step:
    cfg = p.config(st, corpus=str(p.paths.traces), out=str(p.dir(st)))

    def action():
        harvest(cfg, *p.models.get(cfg))
    return Step(cfg, action)


def step_train(p: Context, st: Stage) -> Step | None:
    if p.spec.sae:  # a pretrained SAE stands in: its files' hash is the train stage's hash
        p.sae_dir = fetch_sae(p.spec.sae, p.spec.hookpoint)
        p.hashes[st.name] = sae_digest(p.sae_dir)
        p.log(f"[run] train: using the pretrained SAE {p.sae_dir}")
        return None
    cfg = p.config(st, store=str(p.paths.store), out=str(p.dir(st)))
    p.sae_dir = p.paths.trained_sae

    def action():
        train(cfg)
    return Step(cfg, action)


def step_eval(p: Context, st: Stage) -> Step:
    cfg = p.config(st, sae=str(p.sae_dir), store=str(p.paths.store),
                   out=str(p.dir(st) / "eval.json"), update_card=not p.spec.sae)

    def action():
        evaluate(cfg)
    return Step(cfg, action)


def step_splice(p: Context, st: Stage) -> Step:
    cfg = p.config(st, sae=str(p.sae_dir), store=str(p.paths.store),
                   out=str(p.dir(st) / "eval.json"), update_card=False)

    def action():
        result = evaluate(cfg, *p.models.get(cfg))
        if not p.spec.sae:
            update_report_card(p.sae_dir, "eval_spliced", result.to_dict())
    return Step(cfg, action)


def step_analyze(p: Context, st: Stage) -> Step:
    cfg = p.config(st, sae=str(p.sae_dir), store=str(p.paths.store), out=str(p.dir(st)))

    def action():
        model, tok = p.models.get(cfg) if cfg.logit_lens else (None, None)
        analyze(cfg, model, tok)
    return Step(cfg, action)


def step_validate(p: Context, st: Stage) -> Step:
    cfg = p.config(st, sae=str(p.sae_dir), store=str(p.paths.store), analysis=str(p.dir("analyze")),
                   out=str(p.dir(st)), refresh_dashboard=False)
    if cfg.protocol != "thinksae" and cfg.traces is None:  # Ma et al.'s reasoning set: the run's traces
        cfg = dataclasses.replace(cfg, traces=str(p.paths.traces))

    def action():
        validate(cfg, *p.models.get(cfg))
    return Step(cfg, action)


def step_explain(p: Context, st: Stage) -> Step:
    cfg = p.config(st, sae=str(p.sae_dir), store=str(p.paths.store), analysis=str(p.dir("analyze")),
                   out=str(p.dir(st)))

    def action():
        explain(cfg)  # loads its explainer/scorer by name (not the run's model)
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


def chosen_feature(p: Context, spec_feature: Any) -> tuple[int, str]:
    """The feature a steer/monitor section names, or the one its rule picks from the analysis."""
    rule = feature_rule(spec_feature)
    if rule is None:
        return int(str(spec_feature[0] if isinstance(spec_feature, list) else spec_feature)
                   .split("=")[0]), "given in the config"

    return pick_feature(read_features(p.dir("analyze")), rule)


def step_steer(p: Context, st: Stage) -> Step:
    options = p.spec.stages[st.name]
    given = options.get("feature", "auto")
    feature, why = chosen_feature(p, given)
    specs = [str(feature)] if options.get("sweep") else (
        [f"{feature}=0"] if feature_rule(given) else given)
    extra = {"max_from": str(p.dir("analyze"))} if options.get("max_from") == "analysis" else {}
    cfg = p.config(st, sae=str(p.sae_dir), feature=specs, out=str(p.dir(st)), **extra)

    def action():
        steer(cfg, *p.models.get(cfg))
        atomic.write_json(p.dir(st) / "choice.json", {"feature": feature, "why": why})
    return Step(cfg, action)


def step_monitor(p: Context, st: Stage) -> Step:
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
