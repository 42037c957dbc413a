"""Stage configs are dataclasses: their fields are the CLI options and are saved next to outputs."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Any

from . import atomic


def to_dict(cfg: Any) -> dict[str, Any]:
    """A config dataclass as a JSON-ready dict (paths become strings)."""
    return json.loads(json.dumps(dataclasses.asdict(cfg), default=str))


def config_hash(cfg: Any, exclude: tuple[str, ...] = ()) -> str:
    """Short stable hash of a config's fields, ignoring ``exclude`` (e.g. progress options)."""
    d = {k: v for k, v in to_dict(cfg).items() if k not in exclude}
    return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]


def save_config(cfg: Any, path: str | Path) -> None:
    """Write a config dataclass to ``path`` as JSON, atomically."""
    atomic.write_json(path, to_dict(cfg))
