"""Held-out documents: a fixed share of a store's traces kept out of SAE training, so that
evaluation can measure an SAE on traces it never saw.

The choice depends only on the trace ids and the fraction, never on a seed or the machine, so
the trainer and a later `thinksae eval --split heldout` pick the same traces. All samples of one
question (`<question id>#<n>`) land on the same side, so a held-out trace's question was never
trained on either.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np

from ..corpus.problems import question_of
from ..errors import ThinksaeError

SPLITS = ("all", "train", "heldout")
"""Which documents of a store an evaluation reads."""


def _rank(question: str) -> str:
    return hashlib.sha256(f"thinksae-holdout\0{question}".encode()).hexdigest()


def check_fraction(fraction: float) -> None:
    if not 0.0 <= fraction < 1.0:
        raise ThinksaeError(f"holdout must be a share of the traces in [0, 1), got {fraction}")


def heldout_docs(trace_ids: Sequence[str], fraction: float) -> np.ndarray:
    """Sorted document indices held out: whole questions, in the order of a hash of their id,
    until ``round(fraction × documents)`` traces are held out (at least one question when the
    fraction is above 0)."""
    check_fraction(fraction)
    if fraction == 0.0 or not trace_ids:
        return np.zeros(0, dtype=np.int64)
    by_question: dict[str, list[int]] = {}
    for i, trace_id in enumerate(trace_ids):
        by_question.setdefault(question_of(trace_id), []).append(i)
    if len(by_question) < 2:
        raise ThinksaeError(f"cannot hold out traces: the data has {len(by_question)} question(s)")
    want = max(1, round(fraction * len(trace_ids)))
    held: list[int] = []
    for question in sorted(by_question, key=_rank):
        if len(held) >= want:
            break
        held += by_question[question]
    if len(held) == len(trace_ids):
        raise ThinksaeError(f"holdout {fraction} leaves no traces to train on")
    return np.array(sorted(held), dtype=np.int64)


def split_docs(trace_ids: Sequence[str], fraction: float, split: str) -> np.ndarray | None:
    """Document indices of ``split`` (``all`` → None, meaning every document)."""
    if split not in SPLITS:
        raise ThinksaeError(f"unknown split {split!r} (use {', '.join(SPLITS)})")
    if split == "all":
        return None
    held = heldout_docs(trace_ids, fraction)
    if split == "heldout":
        return held
    return np.setdiff1d(np.arange(len(trace_ids), dtype=np.int64), held)
