"""Stage configs are dataclasses: their fields are the CLI options and are saved next to outputs."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import typing
from pathlib import Path
from typing import Any

from . import atomic
from .errors import ThinksaeError

FLAT = "thinksae.flat"
"""Field metadata: a nested config dataclass (e.g. ``generation``) whose options read as the
parent's own everywhere a user sees them: CLI flags (simple_parsing nests them without a prefix),
pipeline sections, saved configs and stage hashes. Only code sees the nesting."""


def flat_group(cls: type) -> Any:
    """A config field holding ``cls()`` whose options are given flat (see :data:`FLAT`)."""
    return dataclasses.field(default_factory=cls, metadata={FLAT: True})


def flat_groups(cls: type) -> dict[str, type]:
    """The flat groups of a config dataclass: field name → nested dataclass."""
    flat = [f.name for f in dataclasses.fields(cls) if f.metadata.get(FLAT)]
    hints = typing.get_type_hints(cls) if flat else {}
    return {name: hints[name] for name in flat}


def config_fields(cls: type) -> list[str]:
    """The option names of a config dataclass as users give them: its fields, with each flat
    group replaced by the group's fields."""
    groups = flat_groups(cls)
    out: list[str] = []
    for f in dataclasses.fields(cls):
        out += [g.name for g in dataclasses.fields(groups[f.name])] if f.name in groups else [f.name]
    return out


def nest(cls: type, options: dict[str, Any]) -> dict[str, Any]:
    """Keyword arguments for ``cls`` from flat ``options``: each flat group's options moved into
    an instance of its dataclass (a group given as an instance is kept)."""
    out = dict(options)
    for name, sub in flat_groups(cls).items():
        names = [f.name for f in dataclasses.fields(sub)]
        given = {k: out.pop(k) for k in names if k in out}
        if name not in out:
            out[name] = sub(**given)
        elif given:
            raise ThinksaeError(f"give {', '.join(given)} either flat or inside {name}, not both")
    return out


def to_dict(cfg: Any) -> dict[str, Any]:
    """A config dataclass as a JSON-ready dict (paths become strings); flat groups inline, so
    saved configs and their hashes read as they did before the group was nested."""
    d = json.loads(json.dumps(dataclasses.asdict(cfg), default=str))
    groups = flat_groups(type(cfg))
    if not groups:
        return d
    out: dict[str, Any] = {}
    for key, value in d.items():  # the group's options where the group is, in field order
        out.update(value if key in groups else {key: value})
    return out


def config_hash(cfg: Any, exclude: tuple[str, ...] = ()) -> str:
    """Short stable hash of a config's fields, ignoring ``exclude`` (e.g. progress options)."""
    d = {k: v for k, v in to_dict(cfg).items() if k not in exclude}
    return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]


def save_config(cfg: Any, path: str | Path) -> None:
    """Write a config dataclass to ``path`` as JSON, atomically."""
    atomic.write_json(path, to_dict(cfg))
