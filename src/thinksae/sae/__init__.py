"""TopK sparse autoencoders: the module, its sparse kernels, and its file formats."""

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
from .topk_sae import EncoderOutput, ForwardOutput, Sae

__all__ = [
    "EncoderOutput", "ForwardOutput", "Sae", "SaeConfig", "load_sae", "load_saelens",
    "load_sparsify", "read_report_card", "resolve_sae_dir", "save_saelens", "save_sparsify",
    "update_report_card", "write_report_card",
]
