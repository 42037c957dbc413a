"""(e) One verdict per validated feature, the rule that gives it, and the reader that
``thinksae.annotations`` (dashboard, feature card) and the run report use (``read_verdicts``).

Rule (first that applies):

======================== ==================================================================
``formatting``           the analysis labels it formatting (≥ 80 % of its mass on formatting
                         tokens)
``token detector``       the context test fails (its trigger tokens activate it about as much
                         outside thinking) or the injection test fails (it fires about as
                         well on its triggers put into neutral text)
``no measurable effect`` neither ablating nor clamping it changes the targets measurably
                         (``causal`` false)
``reasoning candidate``  the injection test passes, the context test passes or cannot be run
                         (its triggers never occur outside thinking), and it is causal
``inconclusive``         otherwise (a test that decides could not be run)
======================== ==================================================================
"""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import ThinksaeError
from ..features.dashboard import VERDICT_NUMBERS as KEY_NUMBERS  # noqa: F401 (re-exported)

VERDICTS = ("reasoning candidate", "token detector", "formatting", "no measurable effect",
            "inconclusive")
VERDICTS_FILE, SUMMARY_FILE, VALIDATE_DIR = "verdicts.jsonl", "validation.json", "validate"


def verdict(label: str | None, context_passed: bool | None, injection_passed: bool | None,
            causal: bool | None) -> str:
    """The verdict by the rule in the module docstring."""
    if label == "formatting":
        return "formatting"
    if context_passed is False or injection_passed is False:
        return "token detector"
    if causal is False:
        return "no measurable effect"
    if injection_passed and causal:
        return "reasoning candidate"
    return "inconclusive"


def verdicts_path(directory: str | Path) -> Path | None:
    """``verdicts.jsonl`` of a validation directory or of an analysis directory's
    ``validate/`` (None when there is none)."""
    d = Path(directory)
    for path in (d / VERDICTS_FILE, d / VALIDATE_DIR / VERDICTS_FILE):
        if path.is_file():
            return path
    return None


def read_verdicts(directory: str | Path) -> dict[int, dict]:
    """Feature index → its verdict row (every number that decided it); {} when the analysis
    has not been validated."""
    path = verdicts_path(directory)
    if path is None:
        return {}
    try:
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    except (OSError, json.JSONDecodeError) as e:
        raise ThinksaeError(f"cannot read {path}: {e}") from None
    return {int(r["feature"]): r for r in rows}
