"""thinksae: k-sparse autoencoders for looking inside reasoning models.

Pipeline: corpus → activations → SAE → features → steer/monitor. Each stage has a config
dataclass (its CLI options) and one entry point.
"""

from .errors import ThinksaeError

__version__ = "0.1.0"
__all__ = ["ThinksaeError", "__version__"]
