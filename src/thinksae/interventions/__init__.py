"""Interventions on SAE features at a hookpoint while a model runs: the spec grammar
(`123=2.5`, `123=x4`, `123=off`, `123=2max`, windows), the window each sequence is steered in, and
the hooks that apply interventions with the SAE's error term kept. Used by generation with
steering, by validation's causal tests and by the workbench."""

from .hooks import RECORD_VALUES, Steerer, feature_values, steering
from .spec import Intervention, Window
from .stats import SteeredFeatureStats
from .window import WindowScanner, scan

__all__ = ["RECORD_VALUES", "Intervention", "SteeredFeatureStats", "Steerer", "Window",
           "WindowScanner", "feature_values", "scan", "steering"]
