"""Present an evaluation: the latent-frequency histogram (PNG) and a table on the console."""

from __future__ import annotations

from pathlib import Path

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


def _rows(metrics: dict) -> list[tuple[str, dict]]:
    rows = [("all", metrics["all"])]
    rows += [(f"region {k}", v) for k, v in metrics["regions"].items()]
    rows += [(f"behaviour {k}", v) for k, v in metrics["behaviours"].items()]
    return rows


def print_table(result: dict) -> None:
    """The per-group metrics as a table (columns without any value are left out)."""
    from rich.console import Console
    from rich.table import Table

    rows = _rows(result["metrics"])
    columns = [c for c in _COLUMNS if any(r.get(c[0]) is not None for _, r in rows)]
    table = Table(title=f"SAE eval: {result['sae']} ({result['hookpoint']})")
    table.add_column("group")
    for _, header, _ in columns:
        table.add_column(header, justify="right")
    for name, values in rows:
        cells = ["-" if values.get(key) is None else fmt.format(values[key])
                 for key, _, fmt in columns]
        table.add_row(name, *cells)
    Console(width=max(160, 12 * len(columns) + 24)).print(table)
