"""What later stages say about an analysis' features: `validate`'s verdicts and `explain`'s
explanations. Data flows one way (corpus → store → SAE → features → validate / explain → …), so
the analysis' dashboard and `thinksae feature N` never read these themselves: this module, above
the stages (like cli.py), finds them and hands them over as data.

Where they live (first folder that has any wins): a run directory's ``<run>/validate`` and
``<run>/explain`` (when a run is named), then the analysis' own ``<analysis>/validate`` and
``<analysis>/explain`` (the commands' default output), then, when the analysis sits in a run
directory (``<run>/features`` next to ``run_config.json``), that run's folders.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import NamedTuple

from .explain.cache import read_explanations
from .features.card import print_feature
from .features.dashboard import DASHBOARD_DIR, write_dashboard
from .features.report import STATS_FILE, VOCAB_FILE, load_analysis, read_features
from .features.stats import FeatureStats
from .runs import RUN_CONFIG, with_defaults, with_run
from .validate.verdicts import read_verdicts


class Annotations(NamedTuple):
    verdicts: dict[int, dict]
    """Feature → its verdict row (`thinksae validate`); {} when none."""
    explanations: dict[int, dict]
    """Feature → explanation and scores (`thinksae explain`); {} when none."""


def _folders(analysis: Path, run: Path | None, name: str) -> list[Path]:
    out = [run / name] if run is not None else []
    out.append(analysis / name)
    if run is None and (analysis.parent / RUN_CONFIG).is_file():
        out.append(analysis.parent / name)
    return out


def find_annotations(analysis: str | Path, run: str | Path | None = None,
                     validate_dir: str | Path | None = None,
                     explain_dir: str | Path | None = None) -> Annotations:
    """The verdicts and explanations of ``analysis`` (see the module docstring for where they are
    looked for); ``validate_dir`` / ``explain_dir`` name the folders outright."""

    analysis, run = Path(analysis), Path(run) if run is not None else None

    def first(reader, folders):
        return next((found for d in folders if d.is_dir() and (found := reader(d))), {})

    verdicts = first(read_verdicts, [Path(validate_dir)] if validate_dir
                     else _folders(analysis, run, "validate"))
    explanations = first(read_explanations, [Path(explain_dir)] if explain_dir
                         else _folders(analysis, run, "explain"))
    return Annotations(verdicts, explanations)


def _shows_annotations(index: Path) -> bool:
    """Whether a dashboard index has a verdict or explanation column (to be taken off again)."""
    text = index.read_text()
    return '["verdict", ' in text or '["explanation", ' in text


def refresh_dashboard(analysis: str | Path, run: str | Path | None = None,
                      validate_dir: str | Path | None = None,
                      explain_dir: str | Path | None = None) -> Path | None:
    """Redraw the analysis dashboard with the verdicts and explanations found (``find_annotations``);
    None when the analysis has no dashboard, or when there is nothing to show and nothing to take
    off (the dashboard stays as `thinksae analyze` drew it)."""

    d = Path(analysis)
    index = d / DASHBOARD_DIR / "index.html"
    if not index.is_file():
        return None
    found = find_annotations(d, run, validate_dir, explain_dir)
    if not found.verdicts and not found.explanations and not _shows_annotations(index):
        return None
    meta = load_analysis(d)
    strings = json.loads((d / VOCAB_FILE).read_text())
    return write_dashboard(d, read_features(d), FeatureStats.load(d / STATS_FILE), strings,
                           meta.get("trace_ids"), int(meta.get("config", {}).get("max_pages", 3000)),
                           found.verdicts, found.explanations)


def print_feature_card(cfg) -> None:
    """`thinksae feature N`: the feature's card from an analysis, with its verdict and
    explanation when validate and explain have run."""
    cfg = with_defaults(with_run(cfg, "feature", ("analysis",)), analysis="runs/features")
    print_feature(cfg, *find_annotations(cfg.analysis))


def refresh_after(cfg, result) -> None:
    """After `thinksae explain` / `validate`: the dashboard shows the new columns (the stage
    writes only its own folder); prints where the stage wrote."""
    if cfg.out is None and cfg.run is None and getattr(cfg, "refresh_dashboard", True):
        refresh_dashboard(cfg.analysis)
    print(result.out)
