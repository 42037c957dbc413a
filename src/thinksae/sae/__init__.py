"""Sparse autoencoders behind one interface (TopK, BatchTopK, Matryoshka BatchTopK, JumpReLU),
their sparse kernels, and their file formats. An architecture is one module registering a
SparseAutoencoder subclass (with :class:`~thinksae.sae.formats.SaeFiles` mixed in)."""

from .base import (
    ARCHITECTURES,
    EncoderOutput,
    ForwardOutput,
    SparseAutoencoder,
    make_sae,
    register,
    sae_class,
)
from .batchtopk_sae import BatchTopKSae
from .config import SaeConfig
from .formats import (
    load_sae,
    load_saelens,
    load_sparsify,
    read_report_card,
    resolve_sae_dir,
    save_saelens,
    save_sparsify,
    update_report_card,
    write_report_card,
)
from .jumprelu_sae import JumpReLUSae
from .matryoshka_sae import MatryoshkaBatchTopKSae
from .topk_sae import Sae

__all__ = [
    "ARCHITECTURES", "BatchTopKSae", "EncoderOutput", "ForwardOutput", "JumpReLUSae",
    "MatryoshkaBatchTopKSae", "Sae", "SaeConfig", "SparseAutoencoder", "load_sae", "load_saelens",
    "load_sparsify", "make_sae", "read_report_card", "register", "resolve_sae_dir", "sae_class",
    "save_saelens", "save_sparsify", "update_report_card", "write_report_card",
]
