"""Options of `thinksae explain` (field docstrings are the CLI help) and their checks."""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import ThinksaeError
from .scorers import SCORERS


@dataclass
class ExplainConfig:
    """Options of `thinksae explain`."""

    run: str | None = None
    """Run directory written by `thinksae run`: the SAE, store, analysis come from it
    unless given, and the output goes to <run>/cli/explain unless --out is given."""
    analysis: str | None = None
    """Analysis directory written by `thinksae analyze` (results go to its explain/ folder)."""
    out: str | None = None
    """Results folder (default: the analysis' explain/ folder); the analysis is only read."""
    features: str | None = None
    """Comma-separated feature indices to explain (default: the --top features by --by)."""
    top: int = 10
    """How many features to explain, taken from the top of the --by ranking."""
    by: str = "reason_score"
    """Column of features.jsonl that ranks the features for --top (highest first)."""
    all_firing: bool = False
    """Explain every feature that fires at least --min_fires times (instead of --top)."""
    min_fires: int = 10
    """Features firing on fewer tokens are not chosen by --top or --all_firing."""
    explainer: str = "offline"
    """Local explainer model: a hub id, a directory, a .gguf file or `offline` (the offline GGUF)."""
    endpoint: str | None = None
    """OpenAI-compatible chat endpoint used as explainer instead, e.g. http://localhost:8000/v1
    (vLLM, llama.cpp server, Ollama)."""
    endpoint_model: str = "default"
    """Model name sent to --endpoint."""
    api_key_env: str | None = None
    """Environment variable holding a bearer token for --endpoint (none sent by default)."""
    timeout: float = 120.0
    """Seconds to wait for each --endpoint reply."""
    scorer: str | None = None
    """Local scorer model (default: --explainer's model; `offline` with --endpoint)."""
    scorers: str = "detection,fuzzing"
    """Scores to compute, comma-separated: detection, fuzzing (empty: none)."""
    baseline: bool = True
    """Also score the no-LLM explanation 'fires on: <top trigger tokens>'."""
    sae: str | None = None
    """SAE directory (default: the one the analysis used)."""
    store: str | None = None
    """Activation store for the held-out scoring contexts (default: the analysis' store)."""
    contexts: int = 10
    """Top contexts shown to the explainer."""
    n_score: int = 20
    """Held-out activating contexts scored per feature (and as many non-activating ones)."""
    bins: int = 5
    """Activation bins the held-out activating contexts are drawn across (equal numbers each)."""
    window: int | None = None
    """Tokens on each side of a held-out context's centre (default: the analysis' window)."""
    max_new_tokens: int = 128
    """Tokens a local explainer may generate per feature (a reasoning model needs more)."""
    batch_size: int = 8
    """Prompts per generate call, and excerpts per scorer forward."""
    prefix_cache: bool = True
    """Run the scorer's shared prompt prefix once per explanation and reuse its cache."""
    seed: int = 0
    """Seed of the held-out draw and of fuzzing's random marks."""
    delphi_out: str | None = None
    """Also write the explanations and scores in delphi's layout (eai-delphi 0.1.3) here."""
    delphi_in: str | None = None
    """A delphi run directory: its explanations of the same features are scored too (source
    `delphi`), next to thinksae's."""
    delphi_module: str | None = None
    """Module name in delphi's file names (default: the SAE's hookpoint)."""
    device: str = "auto"
    """cpu, cuda, cuda:N or auto."""
    dtype: str = "float32"
    """Model dtype: auto, float32, bfloat16, float16."""
    progress: bool = True
    """Print one line per feature as it is explained and scored."""


def check_config(cfg: ExplainConfig) -> list[str]:
    """Refuse bad options before anything loads; returns the scorer names."""
    for name in ("top", "contexts", "n_score", "bins", "max_new_tokens", "batch_size"):
        if getattr(cfg, name) < 1:
            raise ThinksaeError(f"--{name} must be >= 1 (got {getattr(cfg, name)})")
    if cfg.min_fires < 0 or (cfg.window is not None and cfg.window < 0) or cfg.timeout <= 0:
        raise ThinksaeError("--min_fires and --window must be >= 0 and --timeout > 0")
    if cfg.features is not None and cfg.all_firing:
        raise ThinksaeError("give --features or --all_firing, not both")
    if cfg.endpoint is not None and not cfg.endpoint.startswith(("http://", "https://")):
        raise ThinksaeError(f"--endpoint must be an http(s) URL (got {cfg.endpoint!r})")
    names = [s.strip() for s in cfg.scorers.split(",") if s.strip()]

    bad = [s for s in names if s not in SCORERS]
    if bad:
        raise ThinksaeError(f"unknown scorer {bad[0]!r} in --scorers (use {', '.join(SCORERS)})")
    return names


def parse_features(spec: str, num_latents: int) -> list[int]:
    try:
        out = [int(x) for x in spec.split(",") if x.strip()]
    except ValueError:
        raise ThinksaeError(f"--features must be comma-separated integers (got {spec!r})") from None
    bad = [f for f in out if not 0 <= f < num_latents]
    if bad:
        raise ThinksaeError(f"feature {bad[0]} is out of range: the SAE has {num_latents} features")
    if not out:
        raise ThinksaeError("--features names no feature")
    return list(dict.fromkeys(out))


def choose_features(cfg: ExplainConfig, rows: list[dict], num_latents: int) -> list[int]:
    """The features to explain: --features, every feature firing enough, or the top by --by."""
    if cfg.features is not None:
        return parse_features(cfg.features, num_latents)
    alive = [r for r in rows if (r.get("fires") or 0) >= max(cfg.min_fires, 1)]
    if cfg.all_firing:
        chosen = [r["feature"] for r in alive]
    else:
        if rows and cfg.by not in rows[0]:
            scalar = [k for k, v in rows[0].items() if isinstance(v, (int, float))]
            raise ThinksaeError(f"--by {cfg.by!r} is not a column of features.jsonl "
                                f"(e.g. {', '.join(scalar[:8])})")
        ranked = sorted((r for r in alive if isinstance(r.get(cfg.by), (int, float))),
                        key=lambda r: (-r[cfg.by], r["feature"]))
        chosen = [r["feature"] for r in ranked[: cfg.top]]
    if not chosen:
        raise ThinksaeError(f"no feature fires at least {max(cfg.min_fires, 1)} times; "
                            "lower --min_fires or give --features")
    return chosen
