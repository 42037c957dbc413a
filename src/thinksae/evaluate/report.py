"""Present an evaluation: the latent-frequency histogram (PNG) and a table on the console, whose
rows (headline first) the run report shares."""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

from ..atomic import atomic_path

_COLUMNS = [  # (result key, header, format)
    ("tokens", "tokens", "{:d}"),
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
    Console(width=max(160, 12 * len(columns) + 24)).print(table)
