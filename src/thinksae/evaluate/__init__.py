"""SAE evaluation: reconstruction metrics and spliced next-token losses, per region and behaviour."""

from .metrics import TokenGroups, fvu, latent_frequency_histogram, loss_recovered
from .result import EvalData, EvalResult
from .run import EvalConfig, evaluate
from .spliced import add_error_back, replace_with, spliced_batch

__all__ = [
    "EvalConfig", "EvalData", "EvalResult", "TokenGroups", "add_error_back", "evaluate", "fvu",
    "latent_frequency_histogram", "loss_recovered", "replace_with", "spliced_batch",
]
