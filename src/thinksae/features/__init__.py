"""Feature analysis: which SAE features carry the model's reasoning.

One streaming pass (:func:`stream_pass` with a :class:`FeatureCollector`) gathers per-feature
statistics with memory fixed by the number of features; :func:`score_columns` turns them into
frequencies, token selectivity and labels, think-vs-answer specificity, formatting share and
ReasonScore; :func:`logit_lens` reads decoder rows through the unembedding; :func:`analyze`
(`thinksae analyze`) does all of it and writes ``features.jsonl`` and the HTML dashboard;
:func:`feature_card` (`thinksae feature N`) shows one feature in the terminal.
"""

from .card import FeatureCardConfig, feature_card, feature_info
from .collect import FeatureCollector
from .logit_lens import logit_lens
from .reason_score import REASON_VOCAB, ReasonMatcher, read_vocab, reason_score
from .report import load_analysis, read_features
from .run import AnalyzeConfig, analyze, stream_pass
from .scores import LABELS, score_columns
from .stats import FeatureStats
from .tokens import TokenInfo

__all__ = [
    "LABELS", "REASON_VOCAB", "AnalyzeConfig", "FeatureCardConfig", "FeatureCollector",
    "FeatureStats", "ReasonMatcher", "TokenInfo", "analyze", "feature_card",
    "feature_info", "load_analysis", "logit_lens", "read_features", "read_vocab", "reason_score",
    "score_columns", "stream_pass",
]
