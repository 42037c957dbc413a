"""`thinksae monitor`: watch SAE features while the model generates, in the terminal or a browser."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from simple_parsing import field

from ..errors import ThinksaeError
from ..generation import GenerationConfig, generation_field
from ..models.loading import DEFAULT_MODEL
from ..sae.bound import SaeAtHookpoint
from .engine import Monitor, check_rule_values, check_value
from .rules import load_rules


@dataclass
class MonitorConfig:
    """Options of `thinksae monitor`."""

    sae: str = field(positional=True, metavar="SAE_DIR")
    """SAE directory (sparsify or SAELens layout), or a training run directory with --hookpoint."""
    prompt: str | None = None
    """Question to generate from (chat-templated); shows the terminal view."""
    serve: bool = False
    """Serve the web app instead (prompt, features and rules are entered in the page)."""
    features: str = ""
    """Features to watch, comma-separated (those the rules read are added)."""
    rules: str | None = None
    """Rules file (YAML or JSON; see thinksae.monitor.rules for the format)."""
    value: str = "topk"
    """Value watched and compared by the rules: topk (the SAE's activation as Sae.encode gives
    it, 0 outside the top k; one full encoder GEMM per token) or pre (relu of the
    pre-activation from the watched encoder rows: > 0 for many latents the SAE leaves off)."""
    hookpoint: str | None = None
    """Hookpoint the SAE reads (default: the SAE's own, from thinksae.json or its directory)."""
    model: str = DEFAULT_MODEL
    """Model (hub id, local directory, .gguf or `offline`)."""
    tokenizer: str | None = None
    """Load the tokenizer from another spec (default: the model's)."""
    generation: GenerationConfig = generation_field()
    """How to generate (flat options: --max_new_tokens, --do_sample, ...)."""
    alert_log: str = "runs/monitor/alerts.jsonl"
    """JSONL file every alert is appended to (empty: no log)."""
    live: bool = True
    """Redraw the terminal view per token (off: print it once at the end)."""
    host: str = "127.0.0.1"
    """Address the web app binds (with --serve)."""
    port: int = 8765
    """Port of the web app (with --serve)."""
    device: str = "auto"
    """cpu, cuda, cuda:N or auto."""
    dtype: str = "auto"
    """Model dtype: auto (bf16 where fast), float32, bfloat16 or float16. The SAE runs in float32."""


def parse_features(text: str) -> list[int]:
    out = []
    for item in (s.strip() for s in text.split(",")):
        if not item:
            continue
        if not item.isdigit():
            raise ThinksaeError(f"--features: {item!r} is not a feature index")
        out.append(int(item))
    return list(dict.fromkeys(out))


def _check(cfg: MonitorConfig) -> None:
    if cfg.serve == bool(cfg.prompt):
        raise ThinksaeError("give --prompt (terminal view) or --serve (web app), one of them")
    if cfg.prompt is not None and not cfg.prompt.strip():
        raise ThinksaeError("--prompt is empty")
    cfg.generation.check()
    check_value(cfg.value)
    if not 0 < cfg.port < 65536:
        raise ThinksaeError(f"--port must be in 1..65535 (got {cfg.port})")


def build_monitor(cfg: MonitorConfig, model=None, tokenizer=None) -> Monitor:
    """Everything checked (rules, features, SAE) before the model is loaded."""
    _check(cfg)
    features = parse_features(cfg.features)
    bound = SaeAtHookpoint.find(cfg.sae, cfg.hookpoint)
    hookpoint, sae = bound.hookpoint, bound.load()
    bad = [f for f in features if f >= sae.num_latents]
    if bad:
        raise ThinksaeError(f"--features: feature {bad[0]} is not a latent of the SAE "
                            f"(0..{sae.num_latents - 1})")
    rules = load_rules(cfg.rules, sae.num_latents) if cfg.rules else []
    check_rule_values(rules, cfg.value)
    if not features and not rules and not cfg.serve:
        raise ThinksaeError("nothing to watch: give --features and/or --rules")
    if model is None:
        from ..models import load_model

        bound.precheck(cfg.model)
        model, tokenizer = load_model(cfg.model, cfg.device, cfg.dtype, tokenizer=cfg.tokenizer)
    elif tokenizer is None:
        raise ThinksaeError("a model was passed without its tokenizer")
    bound.check_model(model)
    sae = sae.to(next(model.parameters()).device)
    return Monitor(model, tokenizer, sae, hookpoint, features, rules,
                   value=cfg.value, alert_log=cfg.alert_log or None,
                   **dataclasses.asdict(cfg.generation))


def monitor(cfg: MonitorConfig, model=None, tokenizer=None):
    """Run `thinksae monitor` (terminal view or web app)."""
    mon = build_monitor(cfg, model, tokenizer)
    if cfg.serve:
        from .server import serve

        serve(mon, cfg.host, cfg.port)
        return None
    from .terminal import run_terminal

    return run_terminal(mon, cfg.prompt, live=cfg.live)
