"""Models: load a reasoning model (hub id, local dir, GGUF, or the offline build) and capture hookpoints."""

from .hookpoints import (
    Hookpoint,
    capture,
    decoder_stack,
    is_hookpoint,
    num_layers,
    parse_hookpoint,
    parse_hookpoints,
    resolve_hookpoint,
)
from .loading import (
    DEFAULT_MODEL,
    OFFLINE_ALIAS,
    cpu_has_fast_bf16,
    dtype_name,
    load_model,
    resolve_device,
    resolve_dtype,
)
from .precheck import precheck_model
from .splice import final_hidden, output_head, splice
from .tokenizer import load_tokenizer

__all__ = [
    "DEFAULT_MODEL",
    "Hookpoint",
    "OFFLINE_ALIAS",
    "capture",
    "cpu_has_fast_bf16",
    "decoder_stack",
    "dtype_name",
    "final_hidden",
    "is_hookpoint",
    "load_model",
    "load_tokenizer",
    "num_layers",
    "output_head",
    "parse_hookpoint",
    "parse_hookpoints",
    "precheck_model",
    "resolve_device",
    "resolve_dtype",
    "resolve_hookpoint",
    "splice",
]
