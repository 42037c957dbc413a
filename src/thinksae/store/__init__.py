"""Activation store: harvest hookpoint activations with token labels; read them back in batches."""

from .harvest import HarvestConfig, harvest, tokenizer_hash
from .reader import LABELS, ActivationStore

__all__ = ["LABELS", "ActivationStore", "HarvestConfig", "harvest", "tokenizer_hash"]
