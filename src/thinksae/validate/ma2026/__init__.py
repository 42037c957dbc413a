"""Ma et al. 2026's token-injection protocol (arXiv 2601.05679, code GeorgeMLP/reasoning-probing),
as their code implements it, beside thinksae's own validation: candidate selection by Cohen's d,
ROC-AUC and a Bonferroni-corrected Mann–Whitney test on per-text max activations; trigger tokens
and n-grams per candidate; eight (of eleven) injection strategies into non-reasoning text; d and
a t-test per strategy; their four verdicts. :func:`run_ma2026` runs it, :func:`compare_masking`
runs it under both masking modes (their positions vs thinksae's sink rule). `thinksae validate
--protocol ma2026` (or ``both``) runs it on a run's model and SAE (:mod:`thinksae.validate.theirs`).

Pitfalls of their protocol, kept (``mask="ma2026"``) and named:

- the selection max runs over padding and BOS positions (padded to 64 tokens, no attention
  mask), so a latent that fires on padding is "selected" when one set's texts are shorter, and a
  pad or BOS string can become a trigger token that is then injected as text;
- injections land anywhere in a 512-character text that is then cut to 64 tokens: what lands
  past the cut is lost, which favours ``prepend`` (and makes ``append`` useless on long texts);
- when injected and base activations are both constant the injection d is 0 (their code), and
  when both sets are constant in selection the d is Δ / 1e-10;
- the best strategy is the largest d alone, and its own p decides the verdict.

Ours differ only where stated: draws are seeded per (seed, feature, strategy); the reasoning set
is the run's own thinking in 64-token pieces; the offline non-reasoning set is plain prose
(:data:`PLAIN_PROSE`) and no Pile filters (≥ 100 characters, ASCII only) are applied.

The names below load their modules on first use (the options class loads no torch)."""

from ...lazy import lazy_exports

__getattr__, __dir__, __all__ = lazy_exports(__name__, {
    "Ma2026Options": "config", "check_options": "checks", "check_text_counts": "checks",
    "compare_masking": "experiment", "run_ma2026": "experiment",
    "PAPER": "report", "FeatureResult": "report", "Ma2026Result": "report",
    "MaskingComparison": "report", "markdown": "report", "shares": "report",
    "write_comparison": "report", "write_results": "report",
    "LEVELS": "config", "DEFAULT_STRATEGIES": "strategies", "STRATEGIES": "strategies",
    "PLAIN_PROSE": "texts", "load_texts": "texts", "plain_prose": "texts",
    "reasoning_pieces": "texts", "text_sets": "texts",
})
