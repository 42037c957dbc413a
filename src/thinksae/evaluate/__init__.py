"""SAE evaluation: reconstruction metrics and spliced next-token losses, per region and behaviour."""

from .metrics import TokenGroups, fvu, latent_frequency_histogram, loss_recovered
from .run import EvalConfig, evaluate
from .spliced import add_error_back, replace_with, splice, spliced_batch

__all__ = [
    "EvalConfig", "TokenGroups", "add_error_back", "evaluate", "fvu", "latent_frequency_histogram",
    "loss_recovered", "replace_with", "splice", "spliced_batch",
]
