"""Options of `thinksae analyze` and `thinksae feature` (the field docstrings are the CLI help)."""

from __future__ import annotations

from dataclasses import dataclass

from simple_parsing import field

ALPHA = 0.7
"""Exponent of the ReasonScore's entropy term (Galichin et al.)."""
FDR = 0.05
"""False discovery rate of think_specific (Benjamini-Hochberg)."""


@dataclass
class AnalyzeConfig:
    """Options of `thinksae analyze`."""

    run: str | None = None
    """Run directory written by `thinksae run`: the SAE and store come from it
    unless given, and the output goes to <run>/cli/analyze unless --out is given."""
    sae: str | None = None
    """SAE directory (sparsify or SAELens layout), or a run directory holding SAEs per hookpoint."""
    hookpoint: str | None = None
    """Which SAE of a run directory; with --corpus, the hookpoint to capture (default: the SAE
    directory's name, e.g. layers.10 or layers.10.mlp)."""
    store: str | None = None
    """Activation store of the SAE's hookpoint (from `thinksae harvest`)."""
    corpus: str | None = None
    """Instead of a store: trace corpus (JSONL) to run --model over."""
    model: str | None = None
    """Model for --corpus and for the logit lens (default with --store: the store's model)."""
    tokenizer: str | None = None
    """Load the tokenizer from another spec (default: the model's)."""
    out: str | None = None
    """Output directory: features.jsonl, stats.safetensors, analysis.json, dashboard/; default
    runs/features, or <run>/cli/analyze with --run."""
    top_n: int = 20
    """Top activating contexts kept per feature."""
    window: int = 10
    """Tokens of context on each side of a top activation."""
    token_slots: int = 64
    """Vocabulary items whose activation mass is tracked per feature (exact up to this many)."""
    min_fires: int = 10
    """Features firing on fewer tokens are labelled `rare` instead of judged for selectivity."""
    reason_vocab: str | None = None
    """ReasonScore vocabulary: JSON list of strings or {group: [strings]} (default: the paper's
    10 groups; the authors' extraction/reason_tokens.json can be given as it is)."""
    reason_vocab_match: str = "reference"
    """How vocabulary strings match tokens: reference (the authors' code: each string's exact
    token ids anywhere, no word-boundary test) or wide (lower/Capital/UPPER/Title, with and
    without a leading space, whole words only)."""
    alpha: float = ALPHA
    """Exponent of the ReasonScore's entropy term."""
    think_fdr: float = FDR
    """False discovery rate for think_specific (Benjamini-Hochberg over the features tested)."""
    logit_lens: bool = True
    """Compute each feature's logit lens (needs the model's weights)."""
    lens_k: int = 10
    """Promoted and suppressed tokens listed per feature."""
    dashboard: bool = True
    """Write the static HTML dashboard (dashboard/index.html)."""
    max_pages: int = 3000
    """Feature pages written (alive features, taken in turn from the top of each score's
    ranking: ReasonScore, think/other rate and mean ratios, trace frequency, format share)."""
    chunk_tokens: int = 8192
    """Tokens encoded per step."""
    batch_size: int = 8
    """With --corpus: traces per forward pass."""
    max_length: int = 2048
    """With --corpus: tokens kept per trace."""
    limit: int | None = None
    """With --corpus: use only the first N traces."""
    max_tokens: int | None = None
    """With --store: stop after this many tokens."""
    allow_no_regions: bool = False
    """Analyse a store without prompt/think/answer labels (the region scores are left out)."""
    device: str = "auto"
    """cpu, cuda, cuda:N or auto."""
    dtype: str = "auto"
    """Model dtype (with --corpus or for the logit lens): auto, float32, bfloat16, float16."""
    progress: bool = True
    """Show a progress bar."""


@dataclass
class FeatureCardConfig:
    """Options of `thinksae feature`."""

    index: int = field(positional=True)
    """The feature (latent) index."""
    run: str | None = None
    """Run directory written by `thinksae run`: its analysis unless --analysis is given."""
    analysis: str | None = None
    """Analysis directory written by `thinksae analyze`."""
    contexts: int = 5
    """Top contexts shown."""
    tokens: int = 10
    """Top tokens shown."""
