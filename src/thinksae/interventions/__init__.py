"""Interventions on SAE features at a hookpoint while a model runs: the spec grammar
(`123=2.5`, `123=x4`, `123=off`, `123=2max`, windows) and the hooks that apply them with the SAE's
error term kept. Used by steering, by validation's causal tests and by the workbench."""

from .hooks import Markers, RowScanner, SteeredFeatureStats, Steerer, scan, steering
from .spec import Intervention, Window

__all__ = ["Intervention", "Markers", "RowScanner", "SteeredFeatureStats", "Steerer", "Window",
           "scan", "steering"]
