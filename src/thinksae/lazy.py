"""Package faces that load their modules on first use, so that ``thinksae <command> --help`` and
the config classes load no torch.

A package's ``__init__`` names what it offers and where each name lives; the module is imported
when the name is first read (PEP 562 module ``__getattr__``)::

    __getattr__, __dir__, __all__ = lazy_exports(__name__, {"steer": "run:run", "Window": "spec"})

``"module"`` takes the attribute of the same name from ``package.module``; ``"module:attr"`` a
differently named one; ``"..other.module"`` is relative to the package, as in an import.
Code inside thinksae imports from the modules themselves, so the import
graph shows every real dependency; the faces are for users of the Python API.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable


def lazy_exports(package: str, names: dict[str, str]
                 ) -> tuple[Callable[[str], object], Callable[[], list[str]], list[str]]:
    """``(__getattr__, __dir__, __all__)`` for the package ``package`` (module docstring)."""

    def __getattr__(name: str):
        target = names.get(name)
        if target is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        module, _, attr = target.partition(":")
        relative = module if module.startswith(".") else f".{module}"
        value = getattr(importlib.import_module(relative, package), attr or name)
        setattr(sys.modules[package], name, value)
        return value

    def __dir__() -> list[str]:
        return sorted(set(names) | set(vars(sys.modules[package])))

    return __getattr__, __dir__, sorted(names)
