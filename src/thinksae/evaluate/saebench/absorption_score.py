"""Feature absorption's formulas (Chanin et al. 2024, with SAEBench's thresholds): per word, per
letter, and over letters. Pure functions of probe directions, latent activations and F1 scores.

Notation for one test word of letter ℓ (a true positive of ℓ's ground-truth probe): x its
residual, p̂ = p / ‖p‖ the unit probe direction, proj = ⟨x, p̂⟩; for each active latent i with
activation a_i and decoder row d_i, its probe projection c_i = a_i · cos(p̂, d_i); M = Σ_{i ∈ main}
c_i over ℓ's main latents.
"""

from __future__ import annotations

import dataclasses
import statistics
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
from torch import Tensor


class Thresholds(NamedTuple):
    """SAEBench's absorption thresholds (``feature_absorption.py``)."""

    fraction_cos: float = 0.1
    """An absorber (for the fraction) must have cos(p̂, d_i) at least this."""
    full_cos: float = 0.025
    """The top latent (for full absorption) must have cos(p̂, d_i) at least this."""
    projection_share: float = 0.4
    """Absorbers must supply at least this share of proj (both metrics)."""
    max_absorbers: int = 3
    """At most this many absorbers count towards the fraction."""
    silent: float = 1e-8
    """A main latent with activation below this did not fire."""


SAEBENCH = Thresholds()


class WordAbsorption(NamedTuple):
    fraction: float
    """The absorption fraction (see :func:`word_absorption`)."""
    full: bool
    """Full absorption (see :func:`word_absorption`)."""
    main_projection: float
    """M: the main latents' probe projection."""
    absorber_projection: float
    """A: the top absorbers' probe projection."""


def word_absorption(projection: float, latent_acts: Tensor, latent_ids: Tensor, probe_cos: Tensor,
                    main: list[int], t: Thresholds = SAEBENCH) -> WordAbsorption:
    """Absorption of one word (module docstring for x, p̂, proj, c_i, M).

    - A = the sum of the largest ``max_absorbers`` c_i over latents i ∉ main with
      cos(p̂, d_i) ≥ ``fraction_cos`` and c_i > 0.
    - fraction = 0 if proj ≤ 0, M ≥ proj or A / proj < ``projection_share``; else 1 if M ≤ 0;
      else m / (m + M) with m = min(A, proj − M).
    - full = every main latent silent (a_i < ``silent``), proj > 0, and the latent with the
      largest c_i has cos(p̂, d_i) ≥ ``full_cos``, c_i > 0 and c_i / proj ≥ ``projection_share``.

    ``latent_acts``/``latent_ids`` ``[width]``: the word's active latents (zero = padding);
    ``probe_cos`` ``[num_latents]``: cos(p̂, d_i) for every latent. SAEBench treats proj = 0 as
    positive (then divides by it); we count it as no absorption.
    """
    live = latent_acts > 0
    acts, ids = latent_acts[live].double(), latent_ids[live]
    cos = probe_cos[ids].double()
    contrib = acts * cos
    is_main = torch.isin(ids, torch.as_tensor(main, dtype=ids.dtype))
    main_proj = float(contrib[is_main].sum())
    candidates = contrib[~is_main & (cos >= t.fraction_cos) & (contrib > 0)]
    absorbed = float(candidates.topk(min(t.max_absorbers, len(candidates))).values.sum())
    if projection <= 0 or main_proj >= projection or absorbed / projection < t.projection_share:
        fraction = 0.0
    elif main_proj <= 0:
        fraction = 1.0
    else:
        m = min(absorbed, projection - main_proj)
        fraction = min(max(m / (m + main_proj), 0.0), 1.0)
    full = False
    main_silent = not bool((acts[is_main] >= t.silent).any())
    if main_silent and projection > 0 and len(contrib):
        top = int(contrib.argmax())
        full = (float(cos[top]) >= t.full_cos and float(contrib[top]) > 0
                and float(contrib[top]) / projection >= t.projection_share)
    return WordAbsorption(fraction, full, main_proj, absorbed)


def grow_main_latents(f1_by_k: list[float], latents_by_k: list[list[int]], jump: float = 0.03
                      ) -> list[int]:
    """The main latents of a letter: the latents of the k-sparse probe at the largest k reached
    by growing k = 1, 2, … while each step raises the F1 by more than ``jump`` (k = 1 always
    counts). ``f1_by_k[j]``, ``latents_by_k[j]``: the probe with k = j + 1."""
    best, chosen = float("-inf"), []
    for f1, latents in zip(f1_by_k, latents_by_k, strict=True):
        if f1 > best + jump:
            best, chosen = f1, list(latents)
        else:
            break
    return chosen


@dataclass
class LetterAbsorption:
    """Absorption of one letter over its test words that the ground-truth probe finds."""

    letter: str
    probe_f1: float
    """The ground-truth probe's F1 on the test words (logit > 0 predicts the letter)."""
    sparse_probe_f1: list[float]
    """F1 of the k-sparse SAE probe for k = 1, 2, …, max_k."""
    main_latents: list[int]
    """The letter's main latents (:func:`grow_main_latents`)."""
    split_features: int
    """len(main_latents) − 1: the latents the letter split into beyond the first (0 with no
    main latent)."""
    true_positives: int
    """Test words of the letter with a positive probe logit: the words absorption is over."""
    mean_absorption_fraction: float | None
    """Σ fraction / true positives (None with none)."""
    full_absorption_rate: float | None
    """#(full absorption) / true positives."""


def letter_absorption(letter: str, probe_f1: float, sparse_probe_f1: list[float],
                      main_latents: list[int], words: list[WordAbsorption]) -> LetterAbsorption:
    """One letter's numbers from its true-positive words' :func:`word_absorption`."""
    n = len(words)
    return LetterAbsorption(
        letter, probe_f1, list(sparse_probe_f1), list(main_latents), max(len(main_latents) - 1, 0), n,
        sum(w.fraction for w in words) / n if n else None,
        sum(w.full for w in words) / n if n else None)


def aggregate_letters(letters: list[LetterAbsorption], min_probe_f1: float, min_letters: int
                      ) -> dict[str, Any]:
    """Means over the letters whose probe F1 is above ``min_probe_f1`` and that have a true
    positive: mean absorption fraction, full-absorption rate, main-latent count and split count
    (SAEBench reports the main-latent count under the name ``mean_num_split_features``), with
    their sample standard deviations. None when fewer than ``min_letters`` letters qualify."""
    kept = [x for x in letters if x.probe_f1 > min_probe_f1 and x.true_positives > 0]
    out: dict[str, Any] = {"letters_evaluated": [x.letter for x in kept]}
    fields = {"absorption_fraction": "mean_absorption_fraction",
              "full_absorption_rate": "full_absorption_rate",
              "main_latents": "main_latents", "split_features": "split_features"}
    for name, attr in fields.items():
        values = [len(getattr(x, attr)) if attr == "main_latents" else getattr(x, attr) for x in kept]
        enough = len(kept) >= max(min_letters, 1)
        out[f"mean_{name}"] = statistics.fmean(values) if enough else None
        out[f"std_{name}"] = statistics.stdev(values) if enough and len(values) > 1 else None
    return out


def letters_to_dicts(letters: list[LetterAbsorption]) -> list[dict[str, Any]]:
    return [dataclasses.asdict(x) for x in letters]
