"""The record of one stage of `thinksae run` (:class:`Stage`), what its function hands the runner
(:class:`Step`), and what a stage function may use of the running pipeline (:class:`Context`)."""

from __future__ import annotations

import dataclasses
import importlib
import typing
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple, Protocol

from ..config import FLAT


class Step(NamedTuple):
    """What a stage function hands the runner."""

    cfg: Any
    """The stage's config dataclass (hashed; saved in its marker)."""
    action: Callable[[], None]
    """Writes the stage's folder; run unless the stage is done for the same hash."""
    extra: dict[str, Any] | None = None
    """What the stage uses beside its config (hashed with it), e.g. the monitor's rule."""


@dataclass(frozen=True)
class Stage:
    """One stage of `thinksae run`."""

    name: str
    """Its section in a pipeline config; its name in logs, markers and the report."""
    folder: str
    """Its directory in the run directory."""
    config: str
    """Its config dataclass as ``module:Class`` (imported when first needed)."""
    run: Callable[[Context, Stage], Step | None]
    """Its function: the config and the action (None: it stands in with a hash it set itself)."""
    upstream: tuple[str, ...] = ()
    """Stages whose outputs it reads; their hashes enter its own, in this order."""
    optional: bool = False
    """A config may turn it off (``name: null`` or ``enabled: false``)."""
    managed: tuple[str, ...] = ()
    """Config fields `thinksae run` sets itself (paths between stages): a config may not."""
    extra: tuple[str, ...] = ()
    """Keys of its section that are not config fields (read by its function)."""
    command: str = ""
    """The command whose options its section holds (default: its name)."""
    all_ranks: bool = False
    """Under torchrun every rank runs it (after waiting for its upstream); others: rank 0 only."""
    check: Callable[[dict[str, Any], str], None] | None = None
    """More checks of its (resolved) section before anything runs: raise a ThinksaeError."""
    default_on: bool = True
    """Runs when a config has no section for it (False: only when a config gives one)."""
    version: int = 1
    """Its code version: raise it when the stage writes something else for the same config
    (its hash changes, so run directories redo it and what depends on it)."""

    @property
    def config_class(self) -> type:
        module, name = self.config.split(":")
        return getattr(importlib.import_module(module), name)

    @property
    def help(self) -> str:
        return f"thinksae {self.command or self.name} --help"


def nested_configs(cls: type) -> dict[str, type]:
    """Fields of a config dataclass that are dataclasses themselves (``train.sae``): a section
    gives them as a mapping. (Flat groups, e.g. ``generation``, are given flat: not here.)"""
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)
            if dataclasses.is_dataclass(hints.get(f.name)) and not f.metadata.get(FLAT)}


class Context(Protocol):
    """What a stage function reads of the running pipeline (:class:`thinksae.pipeline.run.
    Pipeline` is one)."""

    spec: Any
    paths: Any
    models: Any
    hashes: dict[str, str]
    sae_dir: Path | None

    def config(self, st: Stage, **extra) -> Any: ...

    def dir(self, stage: str | Stage) -> Path: ...

    def log(self, msg: str) -> None: ...
