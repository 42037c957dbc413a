"""Steering: change SAE features at a hookpoint during generation and measure what it does.

`thinksae steer`: :mod:`.config` (its options), :mod:`.run` (its one entry); domain modules:
:mod:`.measure` (per-trace and per-set measures), :mod:`.regions` (where Smax looks),
:mod:`.report` (terminal and plot), :mod:`.result`. Decoding is the one decoding API,
:mod:`thinksae.generation.decode`; hooks and windows are :mod:`thinksae.interventions`.
"""

from ..lazy import lazy_exports

__getattr__, __dir__, __all__ = lazy_exports(__name__, {
    "SteerConfig": "config", "steer": "run:run", "SteerResult": "result",
    "behaviour_counts": "measure", "compare": "measure", "summarize": "measure",
    "trace_record": "measure",
    "baseline_max": "regions", "max_mask": "regions", "position_regions": "regions",
    "trained_regions": "regions",
    # re-exported for the Python API
    "Intervention": "..interventions.spec", "Window": "..interventions.spec",
    "parse_intervention": "..interventions.spec", "parse_interventions": "..interventions.spec",
    "parse_sweep": "..interventions.spec", "parse_value": "..interventions.spec",
    "parse_window": "..interventions.spec", "check_features": "..interventions.spec",
    "check_unique": "..interventions.spec", "steering": "..interventions.hooks",
    "Steerer": "..interventions.hooks", "SteeredFeatureStats": "..interventions.stats",
    "scan": "..interventions.window", "ThinkMarkers": "..chat",
    "generate_rows": "..generation.decode", "Batch": "..generation.batches",
    "plan_groups": "..generation.batches", "plan_rows": "..generation.batches",
})
