"""Steering: change SAE features at a hookpoint during generation and measure what it does."""

from .generation import Settings, generate_condition, plan_batches
from .hooks import Markers, RowScanner, Steerer, scan, steering
from .measure import behaviour_counts, compare, summarize, trace_record
from .run import SteerConfig, steer
from .spec import (
    Intervention,
    Window,
    check_features,
    parse_intervention,
    parse_interventions,
    parse_sweep,
    parse_value,
    parse_window,
)

__all__ = [
    "Intervention", "Markers", "RowScanner", "Settings", "SteerConfig", "Steerer", "Window",
    "behaviour_counts", "check_features", "compare", "generate_condition", "parse_intervention",
    "parse_interventions", "parse_sweep", "parse_value", "parse_window", "plan_batches", "scan",
    "steer", "steering", "summarize", "trace_record",
]
