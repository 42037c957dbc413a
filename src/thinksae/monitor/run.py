"""`thinksae monitor`: watch SAE features while the model generates, in the terminal or a browser."""

from __future__ import annotations

import dataclasses

from ..binding import ModelSource, bind_sae
from ..errors import ThinksaeError
from ..models.names import DEFAULT_MODEL
from ..runs import need, with_defaults, with_run
from ..sae.bound import SaeAtHookpoint
from .config import MonitorConfig
from .engine import Monitor, check_rule_values, check_value
from .rules import load_rules
from .server import serve
from .terminal import run_terminal


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
    cfg = with_defaults(with_run(cfg, "monitor", ("sae", "model", "tokenizer")),
                        model=DEFAULT_MODEL)
    need(cfg, "sae", "an SAE directory")
    _check(cfg)
    features = parse_features(cfg.features)
    sae_at = SaeAtHookpoint.find(cfg.sae, cfg.hookpoint)
    sae = sae_at.load()
    bad = [f for f in features if f >= sae.num_latents]
    if bad:
        raise ThinksaeError(f"--features: feature {bad[0]} is not a latent of the SAE "
                            f"(0..{sae.num_latents - 1})")
    rules = load_rules(cfg.rules, sae.num_latents) if cfg.rules else []
    check_rule_values(rules, cfg.value)
    if not features and not rules and not cfg.serve:
        raise ThinksaeError("nothing to watch: give --features and/or --rules")
    bound = bind_sae(sae_at, ModelSource.of(cfg), model, tokenizer)
    return Monitor(bound.model, bound.tokenizer, bound.sae, bound.hookpoint, features, rules,
                   value=cfg.value, alert_log=cfg.alert_log or None,
                   **dataclasses.asdict(cfg.generation))


def run(cfg: MonitorConfig, model=None, tokenizer=None):
    """Run `thinksae monitor` (terminal view or web app)."""
    mon = build_monitor(cfg, model, tokenizer)
    if cfg.serve:
        serve(mon, cfg.host, cfg.port)
        return None
    return run_terminal(mon, cfg.prompt, live=cfg.live)
