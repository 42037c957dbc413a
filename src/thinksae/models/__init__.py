"""Models: load a reasoning model (hub id, local dir, GGUF, or the offline build) and capture hookpoints."""

from .hookpoints import capture, decoder_stack, num_layers, parse_hookpoints, resolve_hookpoint
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

__all__ = [
    "DEFAULT_MODEL",
    "OFFLINE_ALIAS",
    "capture",
    "cpu_has_fast_bf16",
    "decoder_stack",
    "dtype_name",
    "load_model",
    "num_layers",
    "parse_hookpoints",
    "precheck_model",
    "resolve_device",
    "resolve_dtype",
    "resolve_hookpoint",
]
