"""Sparse autoencoders behind one interface (TopK, BatchTopK, Matryoshka BatchTopK, JumpReLU),
their sparse kernels, and their file formats. An architecture is one module registering a
SparseAutoencoder subclass (:mod:`.registry` imports them all); :mod:`.formats` reads and writes
any of them (``save_sparsify``/``load_sparsify``, ``save_saelens``/``load_saelens``,
``load_sae``); :mod:`.config` is light (no torch)."""

from ..lazy import lazy_exports

__getattr__, __dir__, __all__ = lazy_exports(__name__, {
    "SaeConfig": "config",
    "ARCHITECTURES": "registry", "make_sae": "registry", "register": "registry",
    "sae_class": "registry", "BatchTopKSae": "registry", "JumpReLUSae": "registry",
    "MatryoshkaBatchTopKSae": "registry", "Sae": "registry",
    "EncoderOutput": "base", "ForwardOutput": "base", "SparseAutoencoder": "base",
    "load_sae": "formats", "load_saelens": "formats", "load_sparsify": "formats",
    "read_report_card": "formats", "resolve_sae_dir": "formats", "save_saelens": "formats",
    "save_sparsify": "formats", "update_report_card": "formats", "write_report_card": "formats",
})
