"""`thinksae serve`: one local web app over a run directory (features, try text, steer, monitor)."""

from .app import create_app, serve
from .config import ServeConfig

__all__ = ["ServeConfig", "create_app", "serve"]
