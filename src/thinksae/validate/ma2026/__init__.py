"""Ma et al. 2026's token-injection protocol (arXiv 2601.05679, code GeorgeMLP/reasoning-probing),
as their code implements it, beside thinksae's own validation: candidate selection by Cohen's d,
ROC-AUC and a Bonferroni-corrected Mann–Whitney test on per-text max activations; trigger tokens
and n-grams per candidate; eight (of eleven) injection strategies into non-reasoning text; d and
a t-test per strategy; their four verdicts. :func:`run_ma2026` runs it, :func:`compare_masking`
runs it under both masking modes (their positions vs thinksae's sink rule)."""

from .config import Ma2026Options, check_options, check_text_counts
from .experiment import compare_masking, run_ma2026
from .report import (
           PAPER,
           FeatureResult,
           Ma2026Result,
           MaskingComparison,
           markdown,
           write_comparison,
           write_results,
)
from .stats import LEVELS
from .strategies import DEFAULT_STRATEGIES, STRATEGIES
from .texts import PLAIN_PROSE, load_texts, plain_prose, reasoning_pieces

__all__ = ["DEFAULT_STRATEGIES", "LEVELS", "PAPER", "PLAIN_PROSE", "STRATEGIES", "FeatureResult",
           "Ma2026Options", "Ma2026Result", "MaskingComparison", "check_options",
           "check_text_counts", "compare_masking", "load_texts", "markdown", "plain_prose",
           "reasoning_pieces", "run_ma2026", "write_comparison", "write_results"]
