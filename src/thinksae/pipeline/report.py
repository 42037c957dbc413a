"""The run directory's report: ``index.html`` (links to the dashboard, eval tables per region,
plots, the SAE report card, the exact config), ``report.json`` (every number it shows) and
``summary.md`` (the same tables in Markdown). Built only from the stage outputs, leaving out
clocks, so a resumed run gives the same report as an uninterrupted one."""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import yaml

from .. import atomic
from ..annotations import refresh_dashboard
from ..corpus.problems import answers_match
from ..corpus.traces import iter_traces
from ..evaluate.report import rows, saebench_summary, sink_lines
from ..explain.cache import SUMMARY_FILE as EXPLAIN_SUMMARY
from ..features.card import feature_info
from ..features.dashboard import fmt, show_token
from ..features.report import read_features
from ..features.scores import LABELS
from ..runs import RUN_CONFIG
from ..sae.formats import read_report_card
from ..store.reader import ActivationStore
from ..validate.side_by_side import levels_rows, levels_table
from ..validate.verdicts import KEY_NUMBERS, read_verdicts
from ..validate.verdicts import SUMMARY_FILE as VALIDATE_SUMMARY
from . import table
from .markers import MARKER, read_marker

SCORES = {  # ranking key → (title, how it reads)
    "reason_score": ("ReasonScore", "Galichin et al.: reasoning-vocabulary windows, entropy-weighted"),
    "think_rate_ratio": ("think/other firing-rate ratio", "P(fires | think) / P(fires | prompt, answer)"),
    "think_mean_ratio": ("think/other mean-activation ratio", "mean act. on think / on prompt+answer"),
    "freq": ("firing frequency", "share of all tokens it fires on"),
}
TOP = 10
CONTENT = ("monosemantic", "narrow", "polysemantic")
_CLOCK = ("wall_time_s", "seconds", "tokens_per_s", "tok_per_s", "time")


def _load(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def _rel(path: str | Path | None, root: Path) -> str | None:
    if not path or not Path(path).exists():
        return None
    return os.path.relpath(Path(path).resolve(), root.resolve())


def _no_clock(d: Any) -> Any:
    if isinstance(d, dict):
        return {k: _no_clock(v) for k, v in d.items() if k not in _CLOCK}
    if isinstance(d, list):
        return [_no_clock(v) for v in d]
    return d


def _corpus_section(root: Path) -> dict | None:
    """What the traces are: how many, how their thinking ended, how many answered right."""
    path = root / table.stage("corpus").folder / "traces.jsonl"
    if not path.is_file():
        return None
    traces = list(iter_traces(path))
    meta = [t.meta for t in traces]
    forced = sum(bool(m.get("forced_answer")) for m in meta)
    graded = [t for t in traces if t.reference_answer is not None]
    return {
        "traces": len(traces), "questions": len({t.question for t in traces}),
        "closed_thinking": sum("</think>" in t.completion for t in traces) - forced,
        "forced_answer": forced, "finished": sum(bool(m.get("finished")) for m in meta),
        "new_tokens_mean": round(sum(m.get("num_new_tokens", 0) + m.get("answer_new_tokens", 0)
                                     for m in meta) / max(len(meta), 1), 1),
        "graded": len(graded),
        "correct": sum(answers_match(t.completion, t.reference_answer) for t in graded),
    }


def _store_regions(store_dir: Path) -> dict[str, int]:
    """Tokens per region in the activation store."""
    if not (store_dir / "manifest.json").is_file():
        return {}
    store = ActivationStore(store_dir, allow_incomplete=True)
    counts = Counter(store.labels("regions").tolist())
    return {name: counts.get(i, 0) for i, name in enumerate(store.manifest["regions"])}


def _eval_section(path: Path, root: Path) -> dict | None:
    result = _load(path)
    if not result:
        return None

    groups = [{"group": r.group, "label": r.label, "headline": r.headline, **r.metrics}
              for r in rows(result)]  # the headline row first: the SAE's trained regions
    return {"tokens": result["data"]["tokens"], "mode": result["data"]["mode"],
            "split": result["data"].get("split", "all"), "traces": result["data"].get("traces"),
            "splice_regions": result["config"].get("splice_regions"),
            "headline": groups[0]["label"], "groups": groups,
            "sinks": result.get("sinks"), "sinks_line": next(iter(sink_lines(result)), None),
            "saebench": saebench_summary(result),
            "png": _rel(path.with_name(Path(result["latent_frequency"]["png"]).name), root),
            "json": _rel(path, root)}


def _features_section(root: Path) -> dict | None:

    analysis = root / table.stage("analyze").folder
    if not (analysis / "features.jsonl").is_file():
        return None
    rows = read_features(analysis)
    labels = Counter(r["label"] for r in rows)
    dash = analysis / "dashboard"
    tops: dict[str, list[dict]] = {}
    for key in SCORES:
        scored = [r for r in rows if r.get(key) is not None and r["fires"] > 0
                  and r["label"] not in ("dead", "rare")]
        if key == "reason_score":
            scored = [r for r in scored if r[key] > 0]
        ranked = sorted(scored, key=lambda r: (-r[key], r["feature"]))[:TOP]
        tops[key] = []
        for r in ranked:
            _, det = feature_info(analysis, r["feature"])
            page = dash / f"feature-{r['feature']}.html"
            tops[key].append({
                "feature": r["feature"], "score": r[key], "label": r["label"], "freq": r["freq"],
                "format_share": r.get("format_share"), "think_specific": r.get("think_specific"),
                "tokens_90": r.get("tokens_90"),
                "tokens": [{"text": t["text"], "share": t["share"]} for t in det["tokens"][:5]],
                "context": next(iter(det["contexts"]), None),
                "lens": r.get("lens_pos"), "page": _rel(page, root)})
    alive = [r for r in rows if r["fires"] > 0]
    return {
        "num_latents": len(rows), "labels": {k: labels.get(k, 0) for k in LABELS},
        "formatting": labels.get("formatting", 0), "content": sum(labels.get(k, 0) for k in CONTENT),
        "monosemantic": labels.get("monosemantic", 0),
        "polysemantic": labels.get("polysemantic", 0), "narrow": labels.get("narrow", 0),
        "alive": len(alive), "think_specific": sum(bool(r.get("think_specific")) for r in alive),
        "think_specific_content": sum(bool(r.get("think_specific")) for r in alive
                                      if r["label"] in CONTENT),
        "reason_score_positive": sum((r.get("reason_score") or 0) > 0 for r in alive),
        "top": tops, "dashboard": _rel(dash / "index.html", root),
        "features_jsonl": _rel(analysis / "features.jsonl", root)}


def _steer_section(root: Path) -> dict | None:
    folder = root / table.stage("steer").folder
    result, choice = _load(folder / "steer.json"), _load(folder / "choice.json")
    if not result or (read_marker(folder) or {}).get("status") != "done":
        return None
    runs = [{"label": "baseline", "summary": _no_clock(result["baseline"]["summary"])}]
    runs += [{"label": r["label"], "specs": [i["spec"] for i in r["interventions"]],
              "summary": _no_clock(r["summary"])} for r in result["runs"]]
    from_baseline = result.get("max_activation_from", "baseline") == "baseline"  # older files
    max_act = None if not result.get("max_activation") else {
        "values": result["max_activation"],
        "over": "the baseline generations" if from_baseline else "the analysed tokens"}
    return {"feature": choice, "window": result["window"], "settings": result["settings"],
            "questions": len(result["questions"]), "runs": runs, "max_activation": max_act,
            "png": _rel(folder / "steer.png", root), "json": _rel(folder / "steer.json", root)}


def _monitor_section(root: Path) -> dict | None:
    folder = root / table.stage("monitor").folder
    info = _load(folder / "monitor.json")
    if not info or not (folder / "events.jsonl").is_file():
        return None
    events = [json.loads(line) for line in (folder / "events.jsonl").read_text().splitlines()]
    key = str(info["feature"])
    tokens = [{"text": e["text"], "act": e["acts"].get(key, 0.0), "region": e["region"]}
              for e in events if e["type"] == "token"]
    alerts = [e for e in events if e["type"] == "alert"]
    done = next((e for e in events if e["type"] == "done"), {})
    return {**info, "tokens": tokens, "alerts": alerts, "end": done.get("reason"),
            "events": _rel(folder / "events.jsonl", root)}


def _validate_section(root: Path) -> dict | None:
    """Our verdicts (when our tests ran), Ma et al.'s levels next to the paper's and the side by
    side table (when their protocol ran)."""
    folder = root / table.stage("validate").folder
    summary = _load(folder / VALIDATE_SUMMARY)
    if not summary or (read_marker(folder) or {}).get("status") != "done":
        return None
    out: dict[str, Any] = {"protocol": summary.get("protocol", "thinksae"),
                           "ma2026": summary.get("ma2026"),
                           "side_by_side": summary.get("side_by_side")}
    if out["ma2026"]:
        out["ma2026_md"] = _rel(folder / "ma2026.md", root)
        out["levels_header"], out["levels_rows"] = levels_rows(out["ma2026"]["levels"])
        out["levels_md"] = "\n".join(levels_table(out["ma2026"]["levels"]))
    if "counts" not in summary:  # their protocol alone
        return out
    rows = [{"feature": f, "verdict": r["verdict"], "label": r.get("label"), "why": r.get("why"),
             **{k: r.get(k) for k in KEY_NUMBERS}} for f, r in sorted(read_verdicts(folder).items())]
    return {**out, "counts": summary["counts"], "passed_all": summary["passed_all"],
            "features": summary["features"], "traces": summary["traces"],
            "targets": summary["target_text"], "thresholds": summary["thresholds"],
            "comparisons": summary["comparisons"], "comparisons_note": summary["comparisons_note"],
            "attribution": {k: summary["attribution"][k] for k in ("metric", "spearman")},
            "rows": rows, "verdicts": _rel(folder / "verdicts.jsonl", root)}


def llm_vs_baseline(rows: list[dict], scorer: str) -> dict:
    """The LLM's explanations against the no-LLM baseline on one scorer, over the n features
    where both have an AUROC: ``llm = Σ_f llm_<scorer>_auroc(f) / n``, ``baseline`` likewise
    with ``baseline_<scorer>_auroc``, ``llm_better = llm > baseline`` (None, None, None when
    n = 0)."""
    both = [r for r in rows if r.get(f"llm_{scorer}_auroc") is not None
            and r.get(f"baseline_{scorer}_auroc") is not None]
    if not both:
        return {"n": 0, "llm": None, "baseline": None, "llm_better": None}
    llm = sum(r[f"llm_{scorer}_auroc"] for r in both) / len(both)
    base = sum(r[f"baseline_{scorer}_auroc"] for r in both) / len(both)
    return {"n": len(both), "llm": llm, "baseline": base, "llm_better": llm > base}


def _explain_section(root: Path) -> dict | None:
    folder = root / table.stage("explain").folder
    summary = _load(folder / EXPLAIN_SUMMARY)
    if not summary or (read_marker(folder) or {}).get("status") != "done":
        return None
    keys = [f"{src}_{name}_auroc" for name in ("detection", "fuzzing") for src in ("llm", "baseline")]
    rows = [{"feature": r["feature"], "explanation": r.get("explanation"),
             "baseline": r.get("baseline"), **{k: r.get(k) for k in keys}}
            for r in summary["features"]]
    scorers = summary.get("scorers", [])
    return {"features": len(rows), "scorers": scorers,
            "explainer": next((r.get("explainer") for r in summary["features"]), None),
            "errors": len(summary.get("errors", [])), "rows": rows,
            "compare": {name: llm_vs_baseline(summary["features"], name) for name in scorers},
            "summary": _rel(folder / EXPLAIN_SUMMARY, root)}


class Run(NamedTuple):
    """What the report's sections read: the run directory, its config, where its SAE is."""

    root: Path
    spec: dict[str, Any]
    sae_dir: Path

    def at(self, stage: str) -> Path:
        return self.root / table.stage(stage).folder


def _store_section(run: Run) -> dict[str, Any]:
    store_dir = run.at("harvest") / run.spec.get("hookpoint", "")
    manifest = _load(store_dir / "manifest.json") or {}
    return {"store": {**{k: manifest.get(k) for k in ("model", "hookpoint", "d_in", "dtype",
                                                      "num_tokens", "num_docs")},
                      "regions": _store_regions(store_dir)}}


def _card_section(run: Run) -> dict[str, Any]:
    card = read_report_card(run.sae_dir) if run.sae_dir.is_dir() else {}
    card = {k: v for k, v in card.items() if k not in ("eval", "eval_spliced")}
    return {"card": _no_clock(card), "card_path": _rel(run.sae_dir / "thinksae.json", run.root)}


SECTIONS: dict[str, Callable[[Run], dict[str, Any]]] = {
    "corpus": lambda run: {"corpus": _corpus_section(run.root)},
    "harvest": _store_section,
    "train": _card_section,
    "eval": lambda run: {"eval": _eval_section(run.at("eval") / "eval.json", run.root)},
    "splice": lambda run: {"splice": _eval_section(run.at("splice") / "eval.json", run.root)},
    "analyze": lambda run: {"features": _features_section(run.root)},
    "validate": lambda run: {"validate": _validate_section(run.root)},
    "explain": lambda run: {"explain": _explain_section(run.root)},
    "steer": lambda run: {"steer": _steer_section(run.root)},
    "monitor": lambda run: {"monitor": _monitor_section(run.root)},
}
"""Stage → its keys in report.json, in the order of `table.TABLE`. An optional stage's section
is under its own name: None when the config turns the stage off."""


def collect(root: Path, sae_dir: Path | None = None) -> dict:
    """Everything the report shows, from the stage outputs under ``root`` (``sae_dir``: where
    the SAE is when it is not the run's own)."""
    spec = _load(root / RUN_CONFIG) or {}

    def on(stage: str) -> bool:  # stages the config turned off are left out of the report
        return stage in spec and spec[stage] is not None

    stages = []
    for st in table.TABLE:
        marker = read_marker(root / st.folder)
        if marker and on(st.name):
            stages.append({"stage": st.name, "status": marker["status"], "hash": marker["hash"],
                           "dir": _rel(root / st.folder, root),
                           "marker": _rel(root / st.folder / MARKER, root)})
    run = Run(root, spec, sae_dir if sae_dir is not None
              else root / table.stage("train").folder / spec.get("hookpoint", ""))
    data: dict[str, Any] = {"name": spec.get("name"), "spec": spec, "stages": stages}
    for st in table.TABLE:
        if st.optional and not on(st.name):
            data[st.name] = None
        elif st.name in SECTIONS:
            data.update(SECTIONS[st.name](run))
    data["spec_yaml"] = yaml.safe_dump(spec, sort_keys=False, allow_unicode=True)
    return data


def _num(x: Any, digits: int = 3) -> str:
    """Numbers for the report: compact, ``–`` for anything missing."""
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        return "–" if x is None or not isinstance(x, (str, bool)) else str(x)
    return fmt(x, digits)


def _token(text: str) -> str:
    """A token for a table cell: whitespace made visible, Markdown table bars escaped."""
    return show_token(text).replace("|", "\\|").replace("`", "ˋ")


def write_report(root: str | Path, sae_dir: str | Path | None = None) -> Path:
    """Write index.html, report.json and summary.md into the run directory ``root``; redraw the
    analysis dashboard with the run's verdicts and explanations first."""
    from jinja2 import Environment, PackageLoader, select_autoescape

    root = Path(root)
    # the analysis dashboard with the run's verdicts and explanations (analyze drew it without)
    refresh_dashboard(root / table.stage("analyze").folder, run=root)
    data = collect(root, Path(sae_dir) if sae_dir else None)
    atomic.write_json(root / "report.json", data)
    env = Environment(loader=PackageLoader("thinksae.pipeline", "templates"),
                      autoescape=select_autoescape(["html"]), trim_blocks=True, lstrip_blocks=True)
    env.filters["num"] = _num
    env.filters["tok"] = _token
    atomic.write_bytes(root / "summary.md",
                       env.get_template("summary.md.j2").render(r=data, scores=SCORES).encode())
    html = env.get_template("index.html.j2").render(r=data, scores=SCORES)
    atomic.write_bytes(root / "index.html", html.encode())
    return root / "index.html"
