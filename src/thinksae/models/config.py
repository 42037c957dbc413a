"""Options of `thinksae models fetch-offline` (the field docstrings are the CLI help)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class FetchOfflineConfig:
    """Options of `thinksae models fetch-offline`."""

    cache_dir: str | None = None
    """Where to put the GGUF (default: $THINKSAE_CACHE or ~/.cache/thinksae)."""
