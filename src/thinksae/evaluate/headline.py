"""The headline of an evaluation: the tokens the SAE was trained on, named as such.

An SAE trained with ``--regions think,answer`` never saw the prompt or the special tokens, so its
headline numbers are those over the think and answer tokens together (group ``trained``: one
ratio over those tokens); the all-token row stays beside it. An SAE trained on every token, or one
without a report card saying how it was trained, has the all-token row as its headline.
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

from ..errors import ThinksaeError
from .metrics import ALL, TRAINED


class Headline(NamedTuple):
    """Which metric group is the headline row, and its label."""

    group: str
    """``trained`` (the union of the trained regions) or ``all``."""
    label: str
    """Row label, e.g. ``trained regions (think, answer)`` or ``all tokens (trained on all)``."""
    regions: list[str] | None
    """The regions the SAE was trained on; None for every token or unknown."""
    known: bool
    """False when no report card says how the SAE was trained."""

    def to_dict(self) -> dict:
        return self._asdict()


def headline(card: dict, region_names: list[str], sae_dir: str | Path) -> Headline:
    """The headline from the SAE's report card (``training.regions``, as `thinksae train`
    records it: comma-separated names, or None for every token)."""
    training = card.get("training")
    if not isinstance(training, dict):
        return Headline(ALL, "all tokens (no report card: trained regions unknown)", None, False)
    text = training.get("regions")
    if not text:
        return Headline(ALL, "all tokens (trained on all)", None, True)
    names = list(dict.fromkeys(r.strip() for r in str(text).split(",") if r.strip()))
    unknown = [r for r in names if r not in region_names]
    if unknown or not names:
        raise ThinksaeError(f"the report card of {sae_dir} says the SAE was trained on regions "
                            f"{text!r}, unknown in the eval data (regions: {', '.join(region_names)})")
    return Headline(TRAINED, f"trained regions ({', '.join(names)})", names, True)
