"""Every architecture, registered: importing this module imports each architecture's file (each
registers its :class:`~.base.SparseAutoencoder` subclass by name), so the registry is complete
wherever it is read. Adding an architecture: one file with a registered class, and one import
line here."""

from .base import ARCHITECTURES, make_sae, register, sae_class
from .batchtopk_sae import BatchTopKSae
from .jumprelu_sae import JumpReLUSae
from .matryoshka_sae import MatryoshkaBatchTopKSae
from .topk_sae import Sae

__all__ = ["ARCHITECTURES", "BatchTopKSae", "JumpReLUSae", "MatryoshkaBatchTopKSae", "Sae",
           "make_sae", "register", "sae_class"]
