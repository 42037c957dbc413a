"""Options of the Ma et al. 2026 protocol (the field docstrings are the CLI help) and the checks
that run before any model loads."""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np

from ...errors import ThinksaeError
from ...sinks import SinkRule, check_norm_multiple
from .activations import check_mask_mode
from .stats import MAX_P
from .strategies import DEFAULT_STRATEGIES, parse_strategies

MIN_INJECTION_TEXTS = 2
"""The t-test needs two texts per sample."""


@dataclass
class Ma2026Options:
    """Ma et al. 2026's token-injection protocol (arXiv 2601.05679)."""

    n_texts: int = 256
    """Texts per set (reasoning, non-reasoning) for candidate selection (theirs: 1000 each; 256 is
    the CPU default)."""
    n_injection_texts: int = 64
    """Non-reasoning texts injected per feature and strategy, and reasoning texts recorded
    (theirs: 500 + 500; 64 is the CPU default, about the fewest at which a d of 0.5 can reach
    p < 0.01 in the t-test)."""
    max_tokens: int = 64
    """Tokens per text (BOS included), theirs 64."""
    max_chars: int = 512
    """Non-reasoning texts are cut to this many characters before injection (theirs 512), then to
    max_tokens tokens: what is inserted past the max_tokens-th token is cut off."""
    top_candidates: int = 100
    """Keep at most this many selected latents (theirs 100)."""
    features: str | None = None
    """Also judge these latents by injection (comma-separated indices, e.g. the candidates of
    `thinksae validate`), whether or not their selection keeps them."""
    strategies: str = ",".join(DEFAULT_STRATEGIES)
    """Injection strategies, comma-separated: the paper's 8 by default; also append, bigram_after,
    active_trigram."""
    top_tokens: int = 10
    """Tokens drawn from a feature's first N top tokens (theirs 10); features with fewer than 3
    top tokens are skipped, as theirs."""
    n_inject: int = 3
    """Tokens inserted by prepend, append, intersperse, replace and comma_list."""
    n_inject_bigram: int = 2
    """Items inserted by inject_bigram, bigram_before and bigram_after."""
    n_inject_trigram: int = 1
    """Items inserted by inject_trigram, trigram and active_trigram."""
    seed: int = 0
    """Seed of the injections' random draws (theirs are unseeded)."""
    mask: str = "sinks"
    """Positions the per-text max is taken over: sinks (thinksae's rule: no special ids, padding or
    norm sinks) or ma2026 (their code: BOS and padding included)."""
    norm_multiple: float | None = 10.0
    """sinks mode: tokens whose hookpoint norm is above this multiple of the median are sinks
    (none: special ids only)."""
    median_norm: float | None = None
    """sinks mode: the reference median norm (e.g. the activation store's); default: per batch, the
    median over its non-special tokens."""
    batch_size: int = 16
    """Texts per model forward."""

    def strategy_list(self) -> list[str]:
        return parse_strategies(self.strategies)

    def feature_list(self) -> list[int]:
        """The indices of ``features``."""
        out = []
        for part in str(self.features or "").split(","):
            part = part.strip()
            if not part:
                continue
            if not part.isdigit():
                raise ThinksaeError(f"--features: {part!r} is not a feature index")
            out.append(int(part))
        return list(dict.fromkeys(out))

    def sink_rule(self) -> SinkRule:
        return SinkRule(self.norm_multiple, self.median_norm)


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
                 "top_tokens", "n_inject", "n_inject_bigram", "n_inject_trigram", "batch_size"):
        value = getattr(opt, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ThinksaeError(f"--{name} must be an integer >= 1 (got {value!r})")
    if opt.n_texts < 2 or opt.n_injection_texts < MIN_INJECTION_TEXTS:
        raise ThinksaeError("--n_texts and --n_injection_texts must be >= 2 (the statistics need "
                            "two texts per set)")
    opt.strategy_list()
    opt.feature_list()
    check_mask_mode(opt.mask)
    check_norm_multiple(opt.norm_multiple)
    opt.sink_rule()
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
