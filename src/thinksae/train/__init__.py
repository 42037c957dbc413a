"""Train sparse autoencoders on an activation store or on the fly, resumably, on 1..N ranks.
`thinksae train`: :mod:`.config` (options), :mod:`.checks`, :mod:`.run`."""

from ..lazy import lazy_exports

__getattr__, __dir__, __all__ = lazy_exports(__name__, {
    "TrainConfig": "config", "default_lr": "config", "train": "run:run", "fold_input_scale": "run",
    "SyntheticActivations": "synthetic",
})
