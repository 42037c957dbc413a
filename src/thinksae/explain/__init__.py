"""Auto-interpretation: LLM explanations of SAE features, scored on held-out contexts (detection,
fuzzing) next to a no-LLM baseline; delphi-compatible files."""

from .cache import read_explanations
from .config import ExplainConfig
from .run import ExplainResult, explain

__all__ = ["ExplainConfig", "ExplainResult", "explain", "read_explanations"]
