"""What `thinksae run` runs: a pipeline spec (a preset or a YAML/JSON file, optionally on top of a
preset), checked against each stage's config dataclass before anything runs."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..config import config_fields
from ..errors import ThinksaeError
from . import table
from .stage import Stage, nested_configs

PRESETS_DIR = Path(__file__).with_name("presets")

SHARED = ("model", "hookpoint", "device", "dtype", "tokenizer")
"""Top-level keys handed to every stage whose config has a field of that name (a stage's own
section may override them)."""

STAGES = table.names()
"""Stage names in running order (the records are `table.TABLE`)."""


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


def _check_stage(st: Stage, options: Any, where: str) -> dict[str, Any] | None:
    """A stage's section: None when turned off, else its options, every key checked."""
    if options is not None and not isinstance(options, dict):
        raise ThinksaeError(f"{where}: {st.name!r} must be a mapping of `thinksae "
                            f"{st.command or st.name}` options")
    if options is None or options.get("enabled", True) is False:
        if not st.optional:
            raise ThinksaeError(f"{where}: stage {st.name!r} cannot be turned off")
        return None
    cls = st.config_class
    names = set(config_fields(cls))  # flat groups (`generation`) by their options
    for key in options:
        if key in st.managed:
            raise ThinksaeError(f"{where}: {st.name}.{key} is set by `thinksae run` itself")
        if key not in names and key not in st.extra and not (st.optional and key == "enabled"):
            raise ThinksaeError(f"{where}: unknown option {st.name}.{key} (see `{st.help}`)")
    for key, sub in nested_configs(cls).items():
        sub_names = {f.name for f in dataclasses.fields(sub)}
        bad = sorted(set(options.get(key) or {}) - sub_names)
        if bad:
            raise ThinksaeError(f"{where}: unknown option {st.name}.{key}.{bad[0]} "
                                f"(options: {', '.join(sorted(sub_names))})")
    return {k: v for k, v in options.items() if k != "enabled"}


def _check_upstream(stages: dict[str, dict[str, Any] | None], where: str) -> None:
    """A stage that runs needs every stage it reads from to run too."""
    for st in table.TABLE:
        off = [u for u in st.upstream if stages.get(u, {}) is None]
        if stages.get(st.name) is not None and off:
            raise ThinksaeError(f"{where}: stage {st.name!r} reads from {off[0]!r}, which is "
                                f"turned off")


def _check_pretrained_splits(stages: dict[str, dict[str, Any] | None], where: str) -> None:
    """A pretrained SAE (``sae:``) was not trained on this run's store, so no trace of it is held
    out: a stage asking for the held-out (or training) split would fail only once it runs, after
    the corpus and the store were made."""
    for name, options in stages.items():
        split = (options or {}).get("split")
        if split in ("heldout", "train"):
            raise ThinksaeError(f"{where}: {name}.split {split!r} needs traces held out of this "
                                "run's training, but `sae:` names a pretrained SAE; use split: all")


VERSIONS_KEY = "versions"
"""The key of run_config.json that records the software stack a run was made with."""


def resolve(config: str | None = None, preset: str | None = None,
            overrides: dict[str, Any] | None = None) -> PipelineSpec:
    """The spec of a preset and/or a config file (whose own ``preset:`` key names its base),
    with ``overrides`` (CLI options) on top; every key checked."""
    data: dict[str, Any] = {}
    where = f"preset {preset}" if preset else "config"
    if config:
        path = Path(config)
        data = _read(path, "config")
        data.pop(VERSIONS_KEY, None)  # a run_config.json's record of the stack, not a setting
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
    names = table.names()
    unknown = sorted(set(data) - top - set(names))
    if unknown:
        raise ThinksaeError(f"{where}: unknown key {unknown[0]!r} (keys: "
                            f"{', '.join(sorted(top))}, and one section per stage: "
                            f"{', '.join(names)})")
    for key in ("name", "out", "model"):
        if not data.get(key):
            raise ThinksaeError(f"{where}: `{key}` is required")
    stages = {st.name: _check_stage(st, data.get(st.name, {} if st.default_on else None), where)
              for st in table.TABLE}
    _check_upstream(stages, where)
    for st in table.TABLE:
        if st.check is not None and stages[st.name] is not None:
            st.check(stages[st.name], where)
    if data.get("sae"):
        _check_pretrained_splits(stages, where)
    return PipelineSpec(stages=stages, **{k: data[k] for k in top if k in data})
