"""SAE evaluation: reconstruction metrics and spliced next-token losses, per region and behaviour.
`thinksae eval`: :mod:`.config`, :mod:`.run`."""

from ..lazy import lazy_exports

__getattr__, __dir__, __all__ = lazy_exports(__name__, {
    "EvalConfig": "config", "SaebenchConfig": "config", "evaluate": "run:run",
    "TokenGroups": "metrics", "fvu": "metrics",
    "latent_frequency_histogram": "metrics", "loss_recovered": "metrics", "EvalData": "result",
    "EvalResult": "result", "add_error_back": "spliced", "replace_with": "spliced",
    "spliced_batch": "spliced",
})
