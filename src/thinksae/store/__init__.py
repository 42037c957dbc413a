"""Activation store: harvest hookpoint activations with token labels; read them back in batches."""

from .harvest import HarvestConfig, harvest, tokenizer_hash
from .reader import TOKEN_LABELS, ActivationStore
from .split import SPLITS, heldout_docs, split_docs

__all__ = ["TOKEN_LABELS", "SPLITS", "ActivationStore", "HarvestConfig", "harvest", "heldout_docs",
           "split_docs", "tokenizer_hash"]
