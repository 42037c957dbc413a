"""Steering: change SAE features at a hookpoint during generation and measure what it does."""

from ..interventions.hooks import Markers, RowScanner, SteeredFeatureStats, Steerer, scan, steering
from ..interventions.spec import (
    Intervention,
    Window,
    check_features,
    check_unique,
    parse_intervention,
    parse_interventions,
    parse_sweep,
    parse_value,
    parse_window,
)
from .generation import Batch, generate_rows, plan_groups, plan_rows
from .measure import behaviour_counts, compare, summarize, trace_record
from .regions import baseline_max, max_mask, position_regions, trained_regions
from .result import SteerResult
from .run import SteerConfig, steer

__all__ = [
    "Batch", "Intervention", "Markers", "RowScanner", "SteerConfig", "SteerResult",
    "SteeredFeatureStats",
    "Steerer", "Window", "baseline_max", "behaviour_counts", "check_features", "check_unique",
    "compare", "generate_rows", "max_mask", "parse_intervention", "parse_interventions",
    "parse_sweep", "parse_value", "parse_window", "plan_groups", "plan_rows", "position_regions",
    "scan", "steer", "steering", "summarize", "trace_record", "trained_regions",
]
