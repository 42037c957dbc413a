"""Auto-interpretation: LLM explanations of SAE features, scored on held-out contexts (detection,
fuzzing) next to a no-LLM baseline; delphi-compatible files. `thinksae explain`: :mod:`.config`,
:mod:`.run`."""

from ..lazy import lazy_exports

__getattr__, __dir__, __all__ = lazy_exports(__name__, {
    "read_explanations": "cache", "ExplainConfig": "config", "ExplainResult": "run",
    "explain": "run:run",
})
