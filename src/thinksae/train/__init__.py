"""Train TopK sparse autoencoders on an activation store or on the fly, resumably, on 1..N ranks."""

from .config import TrainConfig, default_lr
from .run import fold_input_scale, train
from .synthetic import SyntheticActivations

__all__ = ["SyntheticActivations", "TrainConfig", "default_lr", "fold_input_scale", "train"]
