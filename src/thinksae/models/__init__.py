"""Models: load a reasoning model (hub id, local dir, GGUF, or the offline build) and capture
hookpoints. Modules: :mod:`.names` (light), :mod:`.loading`, :mod:`.hookpoints`, :mod:`.precheck`,
:mod:`.splice`, :mod:`.tokenizer`, :mod:`.offline`, :mod:`.packed`, :mod:`.dequant_cache`."""

from ..lazy import lazy_exports

__getattr__, __dir__, __all__ = lazy_exports(__name__, {
    "DEFAULT_MODEL": "names", "OFFLINE_ALIAS": "names",
    "Hookpoint": "hookpoints", "capture": "hookpoints", "decoder_stack": "hookpoints",
    "is_hookpoint": "hookpoints", "num_layers": "hookpoints", "parse_hookpoint": "hookpoints",
    "parse_hookpoints": "hookpoints", "resolve_hookpoint": "hookpoints",
    "cpu_has_fast_bf16": "loading", "dtype_name": "loading", "load_model": "loading",
    "resolve_device": "loading", "resolve_dtype": "loading",
    "precheck_model": "precheck",
    "final_hidden": "splice", "output_head": "splice", 
    "load_tokenizer": "tokenizer",
})
