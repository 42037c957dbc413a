"""Feature analysis: which SAE features carry the model's reasoning.

One streaming pass (:func:`~.run.stream_pass` with a :class:`~.collect.FeatureCollector`) gathers
per-feature statistics with memory fixed by the number of features; :func:`~.scores.score_columns`
turns them into frequencies, token selectivity and labels, think-vs-answer specificity,
formatting share and ReasonScore; :func:`~.logit_lens.logit_lens` reads decoder rows through the
unembedding. `thinksae analyze`: :mod:`.config`, :mod:`.run`; `thinksae feature N`
(:func:`~.card.feature_card`) shows one feature in the terminal.
"""

from ..lazy import lazy_exports

__getattr__, __dir__, __all__ = lazy_exports(__name__, {
    "AnalyzeConfig": "config", "FeatureCardConfig": "config", "analyze": "run:run",
    "stream_pass": "run", "feature_card": "card", "feature_info": "card",
    "FeatureCollector": "collect", "REASON_VOCAB": "reason_score",
    "ReasonMatcher": "reason_score", "read_vocab": "reason_score",
    "load_analysis": "report", "read_features": "report", "LABELS": "scores",
    "score_columns": "scores", "FeatureStats": "stats", "TokenInfo": "tokens",
})
