"""Options of `thinksae validate` (the field docstrings are the CLI help) and their checks."""

from __future__ import annotations

from dataclasses import dataclass

from ..config import flat_group
from ..errors import ThinksaeError
from .ma2026.config import Ma2026Options

SCORES = ("reason_score", "think_rate_ratio", "think_mean_ratio")
"""Rankings whose top ``--top`` content features are validated (plus ``--features``)."""
METRICS = ("logprob", "logit")
PROTOCOLS = ("thinksae", "ma2026", "both")
"""thinksae: our tests (context, injection, causal, attribution); ma2026: Ma et al.'s token
injection (:mod:`.ma2026`); both: ours, then theirs on our candidates and their own selection."""


@dataclass
class ValidateConfig:
    """Options of `thinksae validate`."""

    run: str | None = None
    """Run directory written by `thinksae run`: the SAE, store, analysis and model come from it
    unless given, and the output goes to <run>/cli/validate unless --out is given."""
    analysis: str | None = None
    """Analysis directory written by `thinksae analyze` (features.jsonl, stats.safetensors)."""
    sae: str | None = None
    """SAE directory (sparsify or SAELens layout), or a run directory holding SAEs per hookpoint."""
    hookpoint: str | None = None
    """Which SAE of a run directory / the hookpoint to splice at (default: the SAE's own)."""
    store: str | None = None
    """Activation store of the SAE's hookpoint (context control; also the traces' token ids)."""
    model: str | None = None
    """Model for injection, causal and attribution tests (default: the store's model)."""
    tokenizer: str | None = None
    """Load the tokenizer from another spec (default: the model's)."""
    corpus: str | None = None
    """Read the held-out traces from this corpus instead of the store's token ids."""
    out: str | None = None
    """Output directory (default: <analysis>/validate): verdicts.jsonl, validation.json (and
    ma2026.json/.md, side_by_side.md with --protocol ma2026 or both)."""
    protocol: str = "thinksae"
    """Which tests: thinksae (ours: context, injection, causal, attribution), ma2026 (Ma et al.
    2026's token injection, their selection and thresholds) or both (ours, then theirs on our
    candidates and their own top selection, side by side)."""
    traces: str | None = None
    """ma2026: the reasoning set, the thinking of this traces JSONL cut into max_tokens-token pieces
    (default: --corpus, else the run's traces, else the store's corpus)."""
    nonreasoning: str | None = None
    """ma2026: the non-reasoning set, JSONL with a text field, plain text (one text per paragraph),
    a saved `datasets` directory or a hub dataset name (default: the packaged plain prose, 64 texts
    the offline model wrote with no thinking)."""
    text_field: str = "text"
    """ma2026: the field (JSONL) or column (datasets) holding the non-reasoning texts."""
    our_verdicts: str | None = None
    """--protocol ma2026: a folder with verdicts.jsonl of an earlier `thinksae validate` of the same
    SAE (e.g. a run's validate stage): its features are judged by their protocol too, and put side
    by side with these verdicts."""
    compare_masking: bool = False
    """ma2026: run their protocol under both --mask modes (the second reuses the first's
    encodings of the same texts) and count the verdicts the choice changes
    (ma2026_masking.json/.md)."""
    ma2026: Ma2026Options = flat_group(Ma2026Options)
    """Ma et al.'s options (flat: --n_texts, --strategies, --mask, ...)."""
    top: int = 10
    """Validate the top N features (not dead or rare) of each score: reason_score,
    think_rate_ratio, think_mean_ratio (formatting ones are judged too: verdict formatting)."""
    features: str | None = None
    """Also validate these features (comma-separated indices)."""
    split: str = "heldout"
    """Traces for the causal and attribution tests: heldout (the SAE's held-out traces, from its
    report card), train or all (e.g. for an SAE trained on other data)."""
    max_traces: int = 16
    """At most this many traces of the split (causal and attribution tests)."""
    max_length: int = 1024
    """Tokens kept per trace (model tests)."""
    batch_size: int = 4
    """Traces (or injection texts) per model forward."""
    trigger_mass: float = 0.8
    """Trigger tokens: a feature's top tokens holding this share of its activation mass ..."""
    max_triggers: int = 5
    """... at most this many."""
    targets: str | None = None
    """Target tokens of the causal and attribution tests, comma-separated strings that must each
    be one token (default: the behaviour vocabulary's first words, in the single-token forms
    ' Wait', 'Wait', ' wait', ..., and </think>)."""
    metric: str = "logprob"
    """logprob: Σ log p(target) where a target token comes next; logit: Σ its logit (linear in
    the last block's output when the final norm is the identity; for checks)."""
    attribution_top: int = 20
    """Features with the largest attribution whose real ablation effect is measured too."""
    prompts: int = 8
    """Injection texts taken from the traces' own prompts (besides the built-in passages)."""
    min_context_ratio: float = 2.0
    """Context test passes when the lower 95 percent bound of think/other mean activation on the
    trigger tokens exceeds this."""
    max_injection_ratio: float = 0.5
    """Injection test passes when the mean activation on injected trigger tokens is below this
    share of the mean on the same tokens in thinking."""
    min_effect: float = 0.05
    """Causal when the ablation or 2x-max clamp changes the mean log-probability of the next
    target token by at least this (nats, 95 percent interval excluding 0) ..."""
    min_kl: float = 0.01
    """... or the mean KL(clean ‖ ablated) after the feature's first firing is at least this."""
    clamp_factor: float = 2.0
    """The clamp test sets the feature to this times its max activation (AIRI's recipe)."""
    bootstrap: int = 1000
    """Bootstrap resamples of traces (or texts) for the 95 percent intervals."""
    seed: int = 0
    """Seed of the bootstrap."""
    refresh_dashboard: bool = True
    """Rewrite the analysis dashboard with the verdict column and panels (the command line does,
    after the tests ran; only when --out is not given)."""
    device: str = "auto"
    """cpu, cuda, cuda:N or auto."""
    dtype: str = "auto"
    """Model dtype: auto, float32, bfloat16, float16."""
    progress: bool = True
    """Show progress bars."""


def check_config(cfg: ValidateConfig) -> None:
    """Numeric options and choices, before anything is read (Ma et al.'s options:
    :func:`.ma2026.checks.check_options`)."""
    for name in ("top", "max_traces", "max_length", "batch_size", "max_triggers", "bootstrap",
                 "attribution_top"):
        if getattr(cfg, name) < (0 if name in ("top", "attribution_top") else 1):
            raise ThinksaeError(f"--{name} must be >= 1 (got {getattr(cfg, name)})")
    if cfg.prompts < 0:
        raise ThinksaeError(f"--prompts must be >= 0 (got {cfg.prompts})")
    if not 0 < cfg.trigger_mass <= 1:
        raise ThinksaeError(f"--trigger_mass must be in (0, 1] (got {cfg.trigger_mass})")
    if cfg.metric not in METRICS:
        raise ThinksaeError(f"unknown --metric {cfg.metric!r} (use {', '.join(METRICS)})")
    if cfg.min_context_ratio <= 0 or cfg.max_injection_ratio <= 0 or cfg.clamp_factor <= 0:
        raise ThinksaeError("--min_context_ratio, --max_injection_ratio and --clamp_factor "
                            "must be > 0")
    if cfg.min_effect < 0 or cfg.min_kl < 0:
        raise ThinksaeError("--min_effect and --min_kl must be >= 0")
    if cfg.protocol not in PROTOCOLS:
        raise ThinksaeError(f"unknown --protocol {cfg.protocol!r} (use {', '.join(PROTOCOLS)})")
    if cfg.our_verdicts is not None and cfg.protocol != "ma2026":
        raise ThinksaeError("--our_verdicts goes with --protocol ma2026 (both runs our tests itself)")


def parse_features(text: str | None) -> list[int]:
    """The indices of ``--features`` (comma-separated)."""
    if not text:
        return []
    out = []
    for part in str(text).split(","):
        part = part.strip()
        if not part.isdigit():
            raise ThinksaeError(f"--features: {part!r} is not a feature index")
        out.append(int(part))
    return list(dict.fromkeys(out))
