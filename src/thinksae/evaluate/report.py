"""Present an evaluation: the latent-frequency histogram (PNG) and a table on the console, whose
rows (headline first) the run report shares."""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

from ..atomic import atomic_path

_COLUMNS = [  # (result key, header, format)
    ("tokens", "tokens", "{:d}"),
    ("sinks", "sinks", "{:d}"),
    ("fvu", "FVU", "{:.4f}"),
    ("explained_variance", "expl. var", "{:.4f}"),
    ("cosine", "cos", "{:.4f}"),
    ("relative_norm", "‖x̂‖/‖x‖", "{:.3f}"),
    ("l0", "L0", "{:.1f}"),
    ("dead_fraction", "dead", "{:.3f}"),
    ("ce_clean", "CE clean", "{:.4f}"),
    ("ce_spliced", "CE spliced", "{:.4f}"),
    ("ce_zero_ablated", "CE zero", "{:.4f}"),
    ("ce_mean_ablated", "CE mean", "{:.4f}"),
    ("loss_recovered", "loss rec.", "{:.4f}"),
    ("loss_recovered_mean", "loss rec. (mean)", "{:.4f}"),
    ("kl_spliced", "KL", "{:.4f}"),
]
_CORE_LABELS = {  # core metric → short label (the definitions: saebench/definitions.py)
    "ce_loss_score": "CE-loss score", "kl_score": "KL score",
    "explained_variance": "explained variance", "mse": "MSE", "cosine_similarity": "cosine",
    "l2_ratio": "l2 ratio", "relative_reconstruction_bias": "rel. reconstruction bias",
    "l0": "L0", "l1": "L1", "alive_fraction": "alive", "share_density_over_1pct": "density > 1%",
    "share_density_over_10pct": "density > 10%",
}


def write_histogram_png(path: str | Path, histogram: dict, title: str) -> None:
    """Bar chart of the number of latents per log10(firing frequency) bin, written atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    try:
        edges, counts = histogram["log10_bin_edges"], histogram["counts"]
        if counts:
            widths = [b - a for a, b in zip(edges[:-1], edges[1:])]
            ax.bar(edges[:-1], counts, width=widths, align="edge", edgecolor="black", lw=0.3)
        ax.set_xlabel("log10(fraction of eval tokens the latent fires on)")
        ax.set_ylabel("latents")
        ax.set_title(f"{title}\n{histogram['alive']} latents fired, {histogram['dead']} dead",
                     fontsize=9)
        fig.tight_layout()
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format="png", dpi=100)
    finally:
        plt.close(fig)


class Row(NamedTuple):
    """One row of an evaluation table."""

    group: str
    """Stable key: ``trained``, ``all``, ``region <name>`` or ``behaviour <name>``."""
    label: str
    """What the row is called, e.g. ``trained regions (think, answer)`` or ``all tokens``."""
    metrics: dict
    headline: bool


def rows(result: dict) -> list[Row]:
    """The rows of an evaluation result: the headline first (the regions the SAE was trained
    on, or all tokens), then all tokens when that is not the headline, each region and each
    behaviour tag. Results written before the headline existed head with all tokens."""
    metrics = result["metrics"]
    head = result.get("headline") or {"group": "all", "label": "all tokens"}
    out = [Row(head["group"], head["label"], metrics[head["group"]], True)]
    if head["group"] != "all":
        out.append(Row("all", "all tokens", metrics["all"], False))
    out += [Row(f"region {k}", f"region {k}", v, False) for k, v in metrics["regions"].items()]
    out += [Row(f"behaviour {k}", f"behaviour {k}", v, False)
            for k, v in metrics["behaviours"].items()]
    return out


def print_table(result: dict) -> None:
    """The per-group metrics as a table, headline row first and in bold (columns without any
    value are left out)."""
    from rich.console import Console
    from rich.table import Table

    table_rows = rows(result)
    columns = [c for c in _COLUMNS if any(r.metrics.get(c[0]) is not None for r in table_rows)]
    table = Table(title=f"SAE eval: {result['sae']} ({result['hookpoint']})")
    table.add_column("group")
    for _, header, _ in columns:
        table.add_column(header, justify="right")
    for row in table_rows:
        cells = ["-" if row.metrics.get(key) is None else fmt.format(row.metrics[key])
                 for key, _, fmt in columns]
        table.add_row(row.label, *cells, style="bold" if row.headline else None,
                      end_section=row.headline)
    console = Console(width=max(160, 12 * len(columns) + 24))
    console.print(table)
    for line in sink_lines(result) + saebench_lines(result):
        console.print(line, markup=False, highlight=False)


def sink_lines(result: dict) -> list[str]:
    """One line on the sinks: the rule, how many, which ids (results before sinks: none)."""
    sinks = result.get("sinks")
    if not sinks:
        return []
    rule = sinks["rule"]
    ids = ", ".join(f"{t['id']}{' ' + repr(t['text']) if 'text' in t else ''} x{t['count']}"
                    for t in sinks.get("by_norm_tokens", []))
    median = "none" if rule.get("median_norm") is None else f"{rule['median_norm']:.3g}"
    verb = "left out of every metric" if sinks["excluded"] else "counted, not left out"
    return [f"sinks ({verb}): {sinks['sinks']} of {sinks['tokens']} tokens: {sinks['special']} "
            f"special, {sinks['by_norm']} with norm > {rule['norm_multiple']} x median "
            f"({median}, {rule['median_from']}){': ' + ids if ids else ''}"]


def core_rows(core: dict) -> list[tuple[str, str, float | None]]:
    """The core metrics shown: (key, label, value), those with a value."""
    return [(k, label, core.get(k)) for k, label in _CORE_LABELS.items() if core.get(k) is not None]


def saebench_lines(result: dict) -> list[str]:
    """A short section on SAEBench's metrics (results before them: none)."""
    bench = result.get("saebench") or {}
    lines = []
    core = bench.get("core")
    if core:
        cells = ", ".join(f"{label} {value:.4g}" for _, label, value in core_rows(core))
        lines.append(f"SAEBench core ({core['tokens']} non-sink tokens): {cells}")
    probing = bench.get("probing")
    if probing:
        for family in ("regions", "behaviours"):
            res = probing.get(family)
            if res:
                sae = ", ".join(f"k={k} {v:.3f}" for k, v in res["mean"]["sae"].items())
                resid = ", ".join(f"k={k} {v:.3f}" for k, v in res["mean"]["residual"].items())
                full = res["mean"].get("residual_all")
                lines.append(f"SAEBench k-sparse probing, {family} ({len(res['classes'])} classes, "
                             f"{res['units']} units): SAE {sae}; residual {resid}"
                             f"{'' if full is None else f', all dims {full:.3f}'}")
        for family, why in probing.get("skipped", {}).items():
            lines.append(f"SAEBench k-sparse probing, {family}: skipped ({why})")
    absorption = bench.get("absorption")
    if absorption:
        agg = absorption["aggregate"]
        shown = ", ".join(f"{k} {agg[k]:.3f}" for k in ("mean_absorption_fraction",
                                                         "mean_full_absorption_rate",
                                                         "mean_split_features")
                          if agg.get(k) is not None)
        lines.append(f"SAEBench absorption ({len(agg['letters_evaluated'])} letters pass probe F1 > "
                     f"{absorption['options']['min_probe_f1']}): {shown or 'too few letters for means'}")
    return lines


def _probing_rows(probing: dict) -> list[dict]:
    rows_out = []
    for family in ("regions", "behaviours"):
        res = probing.get(family)
        if res:
            rows_out.append({"family": family, "classes": [c["name"] for c in res["classes"]],
                             "units": res["units"], "sae": res["mean"]["sae"],
                             "residual": res["mean"]["residual"],
                             "residual_all": res["mean"].get("residual_all")})
    return rows_out


def saebench_summary(result: dict) -> dict | None:
    """What the run report shows of SAEBench's metrics: the core metrics as (label, value,
    definition) rows, the mean probe accuracies per label family (and why a family was skipped),
    the absorption means; None for results without them."""
    bench = result.get("saebench")
    if not bench:
        return None
    defs = bench.get("definitions") or {}
    out: dict = {"core": None, "core_tokens": None, "probing": [], "probing_skipped": {},
                 "probing_definitions": defs.get("probing", {}), "absorption": None}
    core = bench.get("core")
    if core:
        out["core"] = [{"key": k, "label": label, "value": v,
                        "definition": (defs.get("core") or {}).get(k)}
                       for k, label, v in core_rows(core)]
        out["core_tokens"] = core["tokens"]
    probing = bench.get("probing")
    if probing:
        out["probing"] = _probing_rows(probing)
        out["probing_skipped"] = dict(probing.get("skipped") or {})
    absorption = bench.get("absorption")
    if absorption:
        agg = absorption["aggregate"]
        absorption_defs = defs.get("absorption") or {}
        out["absorption"] = {
            "letters": len(agg["letters_evaluated"]),
            "rows": [{"key": k, "value": agg.get(k), "definition": absorption_defs.get(k)}
                     for k in ("mean_absorption_fraction", "mean_full_absorption_rate",
                               "mean_split_features")]}
    return out
