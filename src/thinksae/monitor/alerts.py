"""The alert log: every alert is appended to a JSONL file before anyone is shown it.

Each line is one JSON object (the alert event plus the prompt's first characters), written with a
single ``write`` on an O_APPEND descriptor and fsynced (:func:`thinksae.atomic.append_line`), so
concurrent writers never interleave and a crash or a vanished UI loses nothing already reported.
"""

from __future__ import annotations

import json
from pathlib import Path

from .. import atomic
from ..errors import ThinksaeError
from .events import AlertEvent

PROMPT_CHARS = 200


class AlertLog:
    """Appends alerts to ``path`` (its directory is created)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise ThinksaeError(f"cannot create the alert log's directory {self.path.parent}: "
                                f"{e.strerror or e}") from None

    def append(self, alert: AlertEvent, prompt: str = "") -> None:
        record = {**alert.to_dict(), "prompt": prompt[:PROMPT_CHARS]}
        atomic.append_line(self.path, json.dumps(record, ensure_ascii=False))


def read_alerts(path: str | Path) -> list[dict]:
    """The alerts logged in ``path`` (an unfinished last line is skipped)."""
    out = []
    try:
        lines = Path(path).read_text().splitlines()
    except FileNotFoundError:
        return []
    for line in lines:
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out
