"""Options of the Ma et al. 2026 protocol (the field docstrings are the CLI help; `thinksae
validate` takes them as a flat option group). Light on purpose: the command line imports this
module to build its parser (no torch, no numpy); the checks are in :mod:`.checks`."""

from __future__ import annotations

from dataclasses import dataclass

from ...errors import ThinksaeError
from .strategies import DEFAULT_STRATEGIES, parse_strategies

MIN_INJECTION_TEXTS = 2
"""The t-test needs two texts per sample."""
LEVELS = ("token_driven", "partially_token_driven", "weakly_token_driven", "context_dependent")
"""Their four verdicts, strongest first (their strings; the rule: :mod:`.stats`)."""
MASK_MODES = ("sinks", "ma2026")
"""sinks: thinksae's rule (default); ma2026: their code's positions (:mod:`.activations`)."""


def check_mask_mode(mode: str) -> None:
    if mode not in MASK_MODES:
        raise ThinksaeError(f"unknown masking mode {mode!r} (use {', '.join(MASK_MODES)})")


@dataclass
class Ma2026Options:
    """Ma et al. 2026's token-injection protocol (arXiv 2601.05679): options of `thinksae validate
    --protocol ma2026` (or both)."""

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
    injection_seed: int = 0
    """Seed of the injections' random draws (theirs are unseeded)."""
    mask: str = "sinks"
    """Positions the per-text max is taken over: sinks (thinksae's rule: no special ids, padding or
    norm sinks) or ma2026 (their code, to reproduce it: BOS and padding included)."""
    norm_multiple: float | None = 10.0
    """sinks mode: tokens whose hookpoint norm is above this multiple of the median are sinks
    (given with no value, or null in a config: special ids only)."""
    median_norm: float | None = None
    """sinks mode: the reference median norm; default: the activation store's (`thinksae
    validate`), else per batch the median over its non-special tokens."""
    texts_per_batch: int = 16
    """Texts per model forward (the Ma et al. protocol)."""

    def strategy_list(self) -> list[str]:
        return parse_strategies(self.strategies)
