"""What `thinksae run` runs: a pipeline spec (a preset or a YAML/JSON file, optionally on top of a
preset), checked against each stage's config dataclass before anything runs."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..errors import ThinksaeError

PRESETS_DIR = Path(__file__).with_name("presets")

STAGES = ("corpus", "harvest", "train", "eval", "splice", "analyze", "steer", "monitor")
"""Stages in running order. eval: reconstruction on every stored token; splice: the SAE spliced
into the model (CE/KL) on the first tokens of the store; steer and monitor are optional."""

OPTIONAL = ("splice", "steer", "monitor")
"""Stages a spec may turn off with ``stage: null``."""

SHARED = ("model", "hookpoint", "device", "dtype", "tokenizer")
"""Top-level keys handed to every stage whose config has a field of that name (a stage's own
section may override them)."""

MANAGED = {
    "corpus": ("out",),
    "harvest": ("corpus", "out"),
    "train": ("store", "model", "corpus", "hookpoint", "out"),
    "eval": ("sae", "store", "model", "corpus", "out", "update_card"),
    "splice": ("sae", "store", "corpus", "out", "update_card"),
    "analyze": ("sae", "store", "corpus", "out"),
    "steer": ("sae", "out"),
    "monitor": ("sae", "serve", "live", "alert_log", "rules", "prompt"),
}
"""Options `thinksae run` sets itself (paths between stages): a spec may not set them."""

FEATURE_SCORES = ("reason_score", "think_rate_ratio", "think_rate_ratio_lo", "think_mean_ratio",
                  "freq")
"""Scores that `feature: top:<score>` (steer, monitor) may rank content features by."""

EXTRA = {
    "steer": ("enabled",),
    "monitor": ("question", "rule", "enabled"),
}
"""Stage keys that are not fields of the stage's config (explained in the presets)."""


@dataclass
class PipelineSpec:
    """A resolved pipeline: shared settings and one option dict per stage (None = stage off)."""

    name: str
    out: str
    model: str
    hookpoint: str = "layers.10"
    device: str = "auto"
    dtype: str = "auto"
    tokenizer: str | None = None
    sae: str | None = None
    """A pretrained SAE (sparsify/SAELens directory or hub repo) instead of the train stage."""
    stages: dict[str, dict[str, Any] | None] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """The spec as a config file holds it (shared keys, then one section per stage), so
        `thinksae run run_config.json` runs it again."""
        d = json.loads(json.dumps(dataclasses.asdict(self)))
        return {**{k: v for k, v in d.items() if k != "stages"}, **d["stages"]}


def stage_class(stage: str) -> type:
    """The config dataclass of a stage (imported lazily, like the CLI does)."""
    if stage == "corpus":
        from ..corpus import CorpusConfig as cls
    elif stage == "harvest":
        from ..store import HarvestConfig as cls
    elif stage == "train":
        from ..train import TrainConfig as cls
    elif stage in ("eval", "splice"):
        from ..evaluate import EvalConfig as cls
    elif stage == "analyze":
        from ..features import AnalyzeConfig as cls
    elif stage == "steer":
        from ..steer import SteerConfig as cls
    elif stage == "monitor":
        from ..monitor import MonitorConfig as cls
    else:
        raise ThinksaeError(f"unknown stage {stage!r} (stages: {', '.join(STAGES)})")
    return cls


def preset_names() -> list[str]:
    return sorted(p.stem for p in PRESETS_DIR.glob("*.yaml"))


def _read(path: Path, what: str) -> dict[str, Any]:
    try:
        text = path.read_text()
    except OSError as e:
        raise ThinksaeError(f"cannot read {what} {path}: {e.strerror or e}") from None
    try:
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as e:
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ThinksaeError(f"{path} is not valid {'JSON' if path.suffix == '.json' else 'YAML'}: "
                            f"{first}") from None
    if not isinstance(data, dict):
        raise ThinksaeError(f"{path}: expected a mapping of settings at the top level")
    return data


def read_preset(name: str) -> dict[str, Any]:
    path = PRESETS_DIR / f"{name}.yaml"
    if not path.is_file():
        raise ThinksaeError(f"unknown preset {name!r} (presets: {', '.join(preset_names())})")
    return _read(path, "preset")


def merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """``over`` on top of ``base``: stage sections merge key by key (``train.sae`` too); a
    ``null`` section turns an optional stage off."""
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def _check_stage(stage: str, options: Any, where: str) -> dict[str, Any] | None:
    if options is None:
        if stage not in OPTIONAL:
            raise ThinksaeError(f"{where}: stage {stage!r} cannot be turned off")
        return None
    if not isinstance(options, dict):
        raise ThinksaeError(f"{where}: {stage!r} must be a mapping of `thinksae {stage}` options")
    if options.get("enabled", True) is False:
        return None
    cls = stage_class(stage)
    names = {f.name for f in dataclasses.fields(cls)}
    for key in options:
        if key in MANAGED.get(stage, ()):
            raise ThinksaeError(f"{where}: {stage}.{key} is set by `thinksae run` itself")
        if key not in names and key not in EXTRA.get(stage, ()):
            raise ThinksaeError(f"{where}: unknown option {stage}.{key} (see `thinksae "
                                f"{'eval' if stage == 'splice' else stage} --help`)")
    if stage == "train" and "sae" in options:
        from ..sae import SaeConfig

        sae_names = {f.name for f in dataclasses.fields(SaeConfig)}
        bad = sorted(set(options["sae"] or {}) - sae_names)
        if bad:
            raise ThinksaeError(f"{where}: unknown option train.sae.{bad[0]} "
                                f"(options: {', '.join(sorted(sae_names))})")
    return {k: v for k, v in options.items() if k != "enabled"}


def _check_monitor_value(options: dict[str, Any], where: str) -> None:
    """`threshold: auto` is half the feature's mean top-k activation when it fires (from the
    analysis): a threshold for the monitor's default value, topk, and refused for value pre."""
    rule, value = options.get("rule") or {}, options.get("value", "topk")
    if rule.get("value") not in (None, value):
        raise ThinksaeError(f"{where}: monitor.rule.value {rule['value']!r} differs from "
                            f"monitor.value {value!r}; set monitor.value")
    if value == "pre" and rule.get("threshold", "auto") == "auto":
        raise ThinksaeError(f"{where}: monitor.rule.threshold auto is calibrated on top-k "
                            "activations; with monitor.value pre give a number")


def resolve(config: str | None = None, preset: str | None = None,
            overrides: dict[str, Any] | None = None) -> PipelineSpec:
    """The spec of a preset and/or a config file (whose own ``preset:`` key names its base),
    with ``overrides`` (CLI options) on top; every key checked."""
    data: dict[str, Any] = {}
    where = f"preset {preset}" if preset else "config"
    if config:
        path = Path(config)
        data = _read(path, "config")
        where = str(path)
        base = data.pop("preset", None)
        if base and preset and base != preset:
            raise ThinksaeError(f"{path} builds on preset {base!r}, but --preset {preset} was given")
        preset = preset or base
    if preset:
        data = merge(read_preset(preset), data)
        data.pop("preset", None)
    if not data:
        raise ThinksaeError(f"give a config file or --preset ({', '.join(preset_names())})")
    data = merge(data, {k: v for k, v in (overrides or {}).items() if v is not None})
    top = {f.name for f in dataclasses.fields(PipelineSpec)} - {"stages"}
    unknown = sorted(set(data) - top - set(STAGES))
    if unknown:
        raise ThinksaeError(f"{where}: unknown key {unknown[0]!r} (keys: "
                            f"{', '.join(sorted(top))}, and one section per stage: "
                            f"{', '.join(STAGES)})")
    for key in ("name", "out", "model"):
        if not data.get(key):
            raise ThinksaeError(f"{where}: `{key}` is required")
    stages = {s: _check_stage(s, data.get(s, {}), where) for s in STAGES}
    if stages["steer"] is not None and not stages["steer"].get("sweep") \
            and not stages["steer"].get("feature"):
        raise ThinksaeError(f"{where}: steer needs `sweep` (values) or `feature` (interventions)")
    for stage, options in (("steer", stages["steer"]),
                           ("monitor.rule", (stages["monitor"] or {}).get("rule"))):
        value = str((options or {}).get("feature", "auto"))
        if value.startswith("top:") and value.removeprefix("top:") not in FEATURE_SCORES:
            raise ThinksaeError(f"{where}: {stage}.feature {value!r}: use top:<score> with one of "
                                f"{', '.join(FEATURE_SCORES)}")
    _check_monitor_value(stages["monitor"] or {}, where)
    return PipelineSpec(stages=stages, **{k: data[k] for k in top if k in data})
