"""Show a steering run: generations side by side, a table of the measures, a sweep plot (PNG)."""

from __future__ import annotations

from pathlib import Path

from ..atomic import atomic_path

_COLUMNS = [  # (summary key, header, format)
    ("think_tokens_mean", "think tok", "{:.1f}"),
    ("reached_think_end", "</think>", "{:.0%}"),
    ("finished", "EOS", "{:.0%}"),
    ("accuracy", "accuracy", "{:.0%}"),
    ("behaviour_words_per_trace", "beh. words", "{:.2f}"),
    ("kl_mean", "KL", "{:.4f}"),
    ("changed", "changed", "{:.0%}"),
    ("steered_positions", "steered pos", "{:d}"),
]
_PANELS = [  # (summary key, y label)
    ("think_tokens_mean", "thinking tokens (mean)"),
    ("reached_think_end", "share reaching </think>"),
    ("accuracy", "accuracy"),
    ("behaviour_words_per_trace", "behaviour words / trace"),
    ("kl_mean", "KL(clean ‖ steered) per steered token"),
]


def _console():
    from rich.console import Console

    return Console(width=160)


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[:limit] + f" … [{len(text) - limit} more chars]"


def print_side_by_side(question: str, baseline: str, steered: str, label: str,
                       limit: int = 1500) -> None:
    """One prompt's baseline and steered generations in two columns."""
    from rich.markup import escape
    from rich.table import Table

    table = Table(title=escape(_clip(question, 200)), show_lines=True, expand=True)
    table.add_column("baseline", ratio=1)
    table.add_column(escape(f"steered {label}"), ratio=1)
    table.add_row(escape(_clip(baseline, limit)), escape(_clip(steered, limit)))
    _console().print(table)


def print_summary(rows: list[tuple[str, dict]], title: str) -> None:
    """The headline measures of each condition (baseline first)."""
    from rich.markup import escape
    from rich.table import Table

    columns = [c for c in _COLUMNS if any(r.get(c[0]) is not None for _, r in rows)]
    table = Table(title=escape(title))
    table.add_column("condition")
    for _, header, _ in columns:
        table.add_column(escape(header), justify="right")
    for name, summary in rows:
        cells = ["-" if summary.get(k) is None else fmt.format(summary[k])
                 for k, _, fmt in columns]
        table.add_row(escape(name), *cells)
    _console().print(table)


def write_sweep_png(path: str | Path, labels: list[str], summaries: list[dict],
                    baseline: dict, title: str) -> None:
    """One panel per measure: its value at each swept setting, the baseline as a dashed line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(_PANELS), figsize=(4 * len(_PANELS), 3.6))
    try:
        xs = list(range(len(labels)))
        for ax, (key, ylabel) in zip(axes, _PANELS):
            ys = [s.get(key) for s in summaries]
            points = [(x, y) for x, y in zip(xs, ys) if y is not None]
            if points:
                ax.plot(*zip(*points), marker="o")
            if baseline.get(key) is not None:
                ax.axhline(baseline[key], color="gray", ls="--", lw=1, label="baseline")
                ax.legend(fontsize=7)
            ax.set_xticks(xs, labels, rotation=30, fontsize=7)
            ax.set_ylabel(ylabel, fontsize=8)
        fig.suptitle(title, fontsize=9)
        fig.tight_layout()
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format="png", dpi=100)
    finally:
        plt.close(fig)
