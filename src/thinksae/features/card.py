"""`thinksae feature N`: one feature's card in the terminal, read from an analysis directory."""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import ThinksaeError
from .config import FeatureCardConfig
from .dashboard import VERDICT_NUMBERS, fmt, show_token
from .report import STATS_FILE, VOCAB_FILE, feature_details, load_analysis, read_feature_row
from .stats import FeatureStats


def feature_info(analysis: str | Path, index: int) -> tuple[dict, dict]:
    """(scores row, details) of feature ``index``; reads only that feature's rows."""
    out = Path(analysis)
    meta = load_analysis(out)
    n = int(meta["sae"]["num_latents"])
    if not 0 <= index < n:
        raise ThinksaeError(f"feature index {index} is out of range: the SAE has {n} features "
                            f"(0..{n - 1})")
    stats = FeatureStats.load(out / STATS_FILE, feature=index)
    try:
        strings = json.loads((out / VOCAB_FILE).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ThinksaeError(f"cannot read {out / VOCAB_FILE}: {e}") from None
    row = read_feature_row(out, index)
    det = feature_details(stats, index, strings, meta.get("trace_ids"), row=0)
    return row, det


def _num(x) -> str:
    return fmt(x)


def feature_card(analysis: str | Path, index: int, contexts: int = 5, tokens: int = 10,
                 verdicts: dict[int, dict] | None = None, explanations: dict[int, dict] | None = None):
    """A rich renderable of feature ``index``'s card; ``verdicts`` and ``explanations`` (feature →
    row, from later stages; see ``thinksae.annotations``) add the verdict and explanation parts."""
    from rich.console import Group
    from rich.markup import escape
    from rich.panel import Panel
    from rich.table import Table
    from rich.text import Text

    row, det = feature_info(analysis, index)
    head = Table.grid(padding=(0, 2))
    head.add_column(style="bold")
    head.add_column()
    keys = ("label", "fires", "freq", "traces", "trace_freq", "mean_act", "max_act",
            "reason_score", "think_rate_ratio", "think_mean_ratio", "format_share", "tokens_90",
            "token_entropy", "top_token_share")
    for k in keys:
        if k in row:
            value = _num(row[k]) if not isinstance(row[k], str) else row[k]
            if k in ("think_rate_ratio", "think_mean_ratio") and row.get(k) is not None:
                value += f"  95% CI [{_num(row[k + '_lo'])}, {_num(row[k + '_hi'])}]"
            if k == "think_rate_ratio" and "think_q" in row:
                value += f"  q {_num(row['think_q'])} (trace-level, BH)"
            head.add_row(k, escape(value))
    parts = [head, *_verdict_part((verdicts or {}).get(index)),
             *_explanation((explanations or {}).get(index))]
    ctx_lines = Text()
    for ctx in det["contexts"][:contexts]:
        ctx_lines.append(f"{_num(ctx['act']):>8}  ", style="dim")
        for j, tok in enumerate(ctx["tokens"]):
            style = "bold reverse red" if j == ctx["trigger"] else ""
            ctx_lines.append(show_token(tok), style=style)
        ctx_lines.append("\n")
    parts += [Text("\ntop contexts (trigger token highlighted)", style="bold"), ctx_lines]
    tok_table = Table("token", "share", "count", title="top tokens", title_justify="left")
    for t in det["tokens"][:tokens]:
        tok_table.add_row(escape(repr(show_token(t["text"]))), _num(t["share"]), str(t["count"]))
    parts.append(tok_table)
    if "lens_pos" in det:
        lens = Table("promoted", "suppressed", title="logit lens", title_justify="left")
        for a, b in zip(det["lens_pos"], det["lens_neg"]):
            lens.add_row(escape(repr(show_token(a["text"]))), escape(repr(show_token(b["text"]))))
        parts.append(lens)
    return Panel(Group(*parts), title=f"feature {index}", expand=False)


def _verdict_part(v: dict | None) -> list:
    """The validation verdict and its key numbers, when the feature was validated."""
    from rich.text import Text

    if v is None:
        return []
    numbers = ", ".join(f"{k} {_num(v.get(k))}" for k in VERDICT_NUMBERS if k in v)
    return [Text(f"\nverdict: {v['verdict']}", style="bold"), Text(numbers)]


def _explanation(ex: dict | None) -> list:
    """The `thinksae explain` panel: explanation and its scores next to the baseline's."""
    from rich.markup import escape
    from rich.table import Table
    from rich.text import Text

    if not ex or not ex.get("explanation"):
        return []
    table = Table("", "explanation", "detection AUROC", "bal. acc.", "fuzzing AUROC", "bal. acc.",
                  title="explanation (held-out scores)", title_justify="left")
    for src in ("llm", "baseline", "delphi"):
        if f"{src}_detection_auroc" in ex and (src == "llm" or ex.get(src)):
            text = ex["explanation"] if src == "llm" else ex[src]
            table.add_row(src, escape(text), *(_num(ex.get(f"{src}_{m}")) for m in (
                "detection_auroc", "detection_balanced_accuracy", "fuzzing_auroc",
                "fuzzing_balanced_accuracy")))
    return [Text(f"\nexplanation: {ex['explanation']}", style="bold"), table]


def print_feature(cfg: FeatureCardConfig, verdicts: dict[int, dict] | None = None,
                  explanations: dict[int, dict] | None = None) -> None:
    """Print the card of ``cfg.index`` from ``cfg.analysis`` (with the annotations given)."""
    from rich.console import Console

    Console().print(feature_card(cfg.analysis, cfg.index, cfg.contexts, cfg.tokens, verdicts,
                                 explanations))
