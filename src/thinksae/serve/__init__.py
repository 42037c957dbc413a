"""`thinksae serve`: one local web app over a run directory (features, try text, steer, monitor).
:mod:`.config`, :mod:`.run`; the app: :mod:`.app`, :mod:`.workbench`, :mod:`.steering`."""

from ..lazy import lazy_exports

__getattr__, __dir__, __all__ = lazy_exports(__name__, {
    "ServeConfig": "config", "create_app": "app", "serve": "run:run",
})
