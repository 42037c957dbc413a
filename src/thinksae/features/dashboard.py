"""Static HTML dashboard: ``index.html`` (sortable by every score, filterable by label) and one
``feature-N.html`` per feature (highlighted contexts, top tokens, histogram, per-region bars,
logit lens). Self-contained files: inline CSS, plain JavaScript, inline SVG; opens offline.

The index reads its sort and filter from the URL hash, e.g.
``index.html#sort=reason_score&dir=desc&label=narrow``.
"""

from __future__ import annotations

from pathlib import Path

from jinja2 import Environment, FileSystemLoader, select_autoescape

from .. import atomic
from .report import feature_details
from .scores import LABELS
from .stats import FeatureStats

DASHBOARD_DIR = "dashboard"
INDEX_COLUMNS = [
    ("feature", "feature"), ("label", "label"), ("freq", "freq"), ("trace_freq", "trace freq"),
    ("reason_score", "ReasonScore"), ("think_rate_ratio", "think/other rate"),
    ("think_mean_ratio", "think/other mean"), ("format_share", "format share"),
    ("tokens_90", "tokens 90%"), ("token_entropy", "token entropy"),
    ("top_token_share", "top share"), ("top_token_text", "top token"), ("max_act", "max act"),
    ("verdict", "verdict"),  # only after `thinksae validate` (see _with_verdicts)
    ("explanation", "explanation"), ("llm_detection_auroc", "detection AUROC"),
    ("baseline_detection_auroc", "baseline AUROC"),  # from `thinksae explain`
]


def _env() -> Environment:
    env = Environment(loader=FileSystemLoader(Path(__file__).parent / "templates"),
                      autoescape=select_autoescape(["html"]), trim_blocks=True,
                      lstrip_blocks=True)
    env.filters["fmt"] = fmt
    env.filters["show"] = show_token
    return env


def fmt(x, digits: int = 3) -> str:
    """A number for display: ``–`` for missing, compact otherwise."""
    if x is None:
        return "–"
    if isinstance(x, bool) or isinstance(x, int):
        return str(x)
    if x != 0 and (abs(x) < 1e-3 or abs(x) >= 1e5):
        return f"{x:.{digits - 1}e}"
    return f"{x:.{digits}g}"


def show_token(text: str) -> str:
    """Whitespace made visible: newlines as ↵, tabs as →, a lone space as ␣."""
    text = text.replace("\n", "↵").replace("\t", "→")
    return "␣" if text == " " else text


def bars(values: dict[str, float | None], width: int = 360, height: int = 22) -> dict:
    """Horizontal bar chart geometry for an inline SVG."""
    vals = {k: (v or 0.0) for k, v in values.items()}
    top = max(vals.values(), default=0.0) or 1.0
    items = [{"label": k, "value": values[k], "y": i * height,
              "w": max(1.0, (width - 130) * v / top) if v else 0.0} for i, (k, v) in enumerate(vals.items())]
    return {"items": items, "height": height * len(items), "width": width, "bar": height - 6}


def histogram(hist: dict, width: int = 360, height: int = 120) -> dict:
    """Vertical bar geometry for the activation histogram (log-spaced bins)."""
    counts = hist["counts"]
    if not counts:
        return {"items": [], "width": width, "height": height}
    top, bw = max(counts), width / len(counts)
    items = [{"x": j * bw, "w": max(bw - 1, 1), "h": height * c / top, "count": c,
              "lo": hist["edges"][j], "hi": hist["edges"][j + 1]} for j, c in enumerate(counts)]
    return {"items": items, "width": width, "height": height, "lo": hist["edges"][0],
            "hi": hist["edges"][-1]}


def _context_cells(ctx: dict) -> list[dict]:
    top = max((a or 0.0 for a in ctx["acts"]), default=0.0) or 1.0
    return [{"text": tok, "act": a or 0.0, "alpha": round(min(1.0, (a or 0.0) / top), 3),
             "trigger": j == ctx["trigger"]} for j, (tok, a) in enumerate(zip(ctx["tokens"], ctx["acts"]))]


PAGE_SCORES = ("reason_score", "think_rate_ratio", "think_mean_ratio", "trace_freq", "format_share",
               "freq")
"""Rankings that share the feature pages: the top of each gets a page before the next ranks."""


def page_features(feature_rows: list[dict], max_pages: int) -> list[int]:
    """Features that get a page (alive ones, at most ``max_pages``): taken in turn from the top of
    each ranking in PAGE_SCORES, so the leaders by every score have pages."""
    alive = [r for r in feature_rows if r["fires"] > 0]
    if len(alive) <= max_pages:
        return sorted(r["feature"] for r in alive)

    def ranking(key: str) -> list[int]:
        scored = [r for r in alive if r.get(key) is not None]
        return [r["feature"] for r in sorted(scored, key=lambda r: -r[key])]

    rankings = [ranking(key) for key in PAGE_SCORES]
    chosen: set[int] = set()
    for rank in range(len(alive)):
        for order in rankings:
            if rank < len(order) and len(chosen) < max_pages:
                chosen.add(order[rank])
        if len(chosen) >= max_pages:
            break
    return sorted(chosen)


def _with_verdicts(out_dir: str | Path, feature_rows: list[dict]) -> tuple[list[dict], dict]:
    """Rows with a ``verdict`` key when the analysis was validated (else unchanged), and the
    verdict rows by feature (for the feature pages' panel)."""
    from ..validate.verdicts import read_verdicts

    verdicts = read_verdicts(out_dir)
    if not verdicts:
        return feature_rows, {}
    return [{**r, "verdict": verdicts.get(r["feature"], {}).get("verdict")}
            for r in feature_rows], verdicts


def feature_page(row: dict, det: dict, meta: dict, verdict: dict | None = None,
                 env: Environment | None = None) -> str:
    """The HTML of one feature's page (its scores ``row`` and ``feature_details``)."""
    for ctx in det["contexts"]:
        ctx["cells"] = _context_cells(ctx)
    return (env or _env()).get_template("feature.html").render(
        row=row, det=det, meta=meta, verdict=verdict,
        region_bars=bars(det["region_rates"]),
        behaviour_bars=bars({k: v for k, v in det["behaviour_rates"].items() if k != "none"}),
        hist=histogram(det["hist"]),
        scores=[(k, v) for k, v in row.items() if not isinstance(v, list)],
        top_mass=max([t["mass"] or 0 for t in det["tokens"]], default=0) or 1)


def write_dashboard(out_dir: str | Path, feature_rows: list[dict], stats: FeatureStats,
                    strings: list[str], trace_ids: list[str] | None = None,
                    max_pages: int = 3000) -> Path:
    """Write the dashboard into ``out_dir/dashboard``; returns the index path."""
    env = _env()
    folder = Path(out_dir) / DASHBOARD_DIR
    feature_rows, verdicts = _with_verdicts(out_dir, feature_rows)
    pages = page_features(feature_rows, max_pages)
    has_page = set(pages)
    first = feature_rows[0] if feature_rows else {}
    columns = [(k, title) for k, title in INDEX_COLUMNS if k in first]
    # every scalar score can be sorted by (the table shows the chosen one as an extra column)
    sortable = [k for k, v in first.items() if not isinstance(v, list)]
    table = [{k: r.get(k) for k in sortable} | {"page": r["feature"] in has_page}
             for r in feature_rows]
    meta = stats.meta
    counts = {label: sum(r["label"] == label for r in feature_rows) for label in LABELS}
    index = env.get_template("index.html").render(
        columns=columns, sortable=sortable, rows=table, labels=LABELS, counts=counts, meta=meta,
        num_pages=len(pages))
    atomic.write_bytes(folder / "index.html", index.encode())
    for i in pages:
        html = feature_page(feature_rows[i], feature_details(stats, i, strings, trace_ids), meta,
                            verdicts.get(i), env)
        atomic.write_bytes(folder / f"feature-{i}.html", html.encode())
    keep = {f"feature-{i}.html" for i in pages}
    for old in folder.glob("feature-*.html"):  # pages left from an earlier analysis
        if old.name not in keep:
            old.unlink()
    return folder / "index.html"


def rewrite_dashboard(out_dir: str | Path) -> Path:
    """Write the dashboard of an analysis directory again from its files (e.g. after
    `thinksae explain` added columns to features.jsonl)."""
    import json

    from .report import ANALYSIS_FILE, STATS_FILE, VOCAB_FILE, read_features

    out = Path(out_dir)
    meta = json.loads((out / ANALYSIS_FILE).read_text())
    stats = FeatureStats.load(out / STATS_FILE)
    strings = json.loads((out / VOCAB_FILE).read_text())
    return write_dashboard(out, read_features(out), stats, strings, meta.get("trace_ids"),
                           meta.get("config", {}).get("max_pages", 3000))
