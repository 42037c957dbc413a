"""The checks of Ma et al.'s options and text counts: one-line errors before any model loads."""

from __future__ import annotations

import warnings

import numpy as np

from ...errors import ThinksaeError
from ...sinks import SinkRule, check_norm_multiple
from .config import MIN_INJECTION_TEXTS, Ma2026Options, check_mask_mode
from .stats import MAX_P


def sink_rule(opt: Ma2026Options) -> SinkRule:
    """The sink rule of the ``sinks`` mode (``norm_multiple``, ``median_norm``)."""
    return SinkRule(opt.norm_multiple, opt.median_norm)


def min_selection_p(n_reasoning: int, n_other: int) -> float:
    """The smallest two-sided Mann–Whitney p any latent can get with these sample sizes (the two
    sets perfectly separated, no ties), by the same scipy call the selection makes."""
    from scipy.stats import mannwhitneyu

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        r = np.arange(n_reasoning, dtype=np.float64) + n_other
        return float(mannwhitneyu(r, np.arange(n_other, dtype=np.float64),
                                  alternative="two-sided").pvalue)


def check_options(opt: Ma2026Options, num_latents: int | None = None) -> None:
    """Every option, before anything is read or loaded; with ``num_latents`` (the SAE's), also
    that ``n_texts`` texts per set can pass the Bonferroni-corrected selection at all."""
    for name in ("n_texts", "n_injection_texts", "max_tokens", "max_chars", "top_candidates",
                 "top_tokens", "n_inject", "n_inject_bigram", "n_inject_trigram", "texts_per_batch"):
        value = getattr(opt, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ThinksaeError(f"--{name} must be an integer >= 1 (got {value!r})")
    if opt.n_texts < 2 or opt.n_injection_texts < MIN_INJECTION_TEXTS:
        raise ThinksaeError("--n_texts and --n_injection_texts must be >= 2 (the statistics need "
                            "two texts per set)")
    opt.strategy_list()
    check_mask_mode(opt.mask)
    check_norm_multiple(opt.norm_multiple)
    sink_rule(opt)
    if num_latents is not None:
        check_text_counts(opt.n_texts, opt.n_texts, opt.n_injection_texts, num_latents)


def check_text_counts(n_reasoning: int, n_other: int, n_injection: int, num_latents: int) -> None:
    """One-line errors when the texts are too few for the statistics: fewer than 2 per set, or
    so few that even perfectly separated sets miss p ≤ 0.01 after Bonferroni over
    ``num_latents``."""
    if min(n_reasoning, n_other) < 2 or n_injection < MIN_INJECTION_TEXTS:
        raise ThinksaeError(f"too few texts: {n_reasoning} reasoning, {n_other} non-reasoning, "
                            f"{n_injection} for injection (at least 2 each)")
    best = min_selection_p(n_reasoning, n_other) * num_latents
    if best > MAX_P:
        raise ThinksaeError(
            f"with {n_reasoning} reasoning and {n_other} non-reasoning texts no latent can reach "
            f"p <= {MAX_P} after Bonferroni over {num_latents} latents (best {best:.2g}); give "
            "more texts (--n_texts)")
