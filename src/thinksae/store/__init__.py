"""Activation store: harvest hookpoint activations with token labels; read them back in batches.

`thinksae harvest`: :mod:`.config`, :mod:`.run`; domain modules: :mod:`.harvest` (shards, labels,
manifest), :mod:`.shards` (files), :mod:`.reader` (:class:`ActivationStore`), :mod:`.split`
(held-out traces).
"""

from ..lazy import lazy_exports

__getattr__, __dir__, __all__ = lazy_exports(__name__, {
    "HarvestConfig": "config", "harvest": "run:run",
    "tokenizer_hash": "..models.tokenizer",
    "TOKEN_LABELS": "reader", "ActivationStore": "reader",
    "SPLITS": "split", "heldout_docs": "split", "split_docs": "split",
})
