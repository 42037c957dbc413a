"""Where a run directory's stages write (:class:`Paths`), the models a run loads once
(:class:`Models`), and each stage's config built from the pipeline spec (:func:`build_config`)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..config import config_fields, nest
from ..errors import ThinksaeError
from ..models.loading import load_model
from . import table
from .spec import SHARED, PipelineSpec
from .stage import Stage, nested_configs


@dataclass
class Paths:
    """Where each stage of a run directory writes."""

    root: Path
    hookpoint: str

    def stage_dir(self, stage: str | Stage) -> Path:
        return self.root / (stage if isinstance(stage, Stage) else table.stage(stage)).folder

    @property
    def traces(self) -> Path:
        return self.root / "corpus" / "traces.jsonl"

    @property
    def store(self) -> Path:
        return self.root / "store" / self.hookpoint

    @property
    def trained_sae(self) -> Path:
        return self.root / "sae" / self.hookpoint


class Models:
    """Loads each (model, device, dtype, tokenizer) once per `thinksae run`."""

    def __init__(self, progress: bool):
        self.progress, self.cache = progress, {}

    def get(self, cfg) -> tuple[Any, Any]:
        key = (cfg.model, cfg.device, cfg.dtype, getattr(cfg, "tokenizer", None))
        if key not in self.cache:
            print(f"[run] loading model {cfg.model}", flush=True)
            self.cache[key] = load_model(cfg.model, cfg.device, cfg.dtype, tokenizer=key[3],
                                         progress=self.progress)
        return self.cache[key]


def build_config(stage: str | Stage, spec: PipelineSpec, progress: bool,
                 extra: dict[str, Any] | None = None):
    """The stage's config dataclass: shared keys, then the stage's section, then ``extra`` (the
    paths between stages)."""
    st = stage if isinstance(stage, Stage) else table.stage(stage)
    cls = st.config_class
    names = set(config_fields(cls))
    options: dict[str, Any] = {k: getattr(spec, k) for k in SHARED if k in names
                               and k not in st.managed and getattr(spec, k) is not None}
    options.update({k: v for k, v in (spec.stages[st.name] or {}).items() if k in names})
    options.update(extra or {})
    if "progress" in names:
        options["progress"] = progress
    for key, sub in nested_configs(cls).items():  # train.sae: a mapping in the spec
        if not isinstance(options.get(key), sub):
            options[key] = sub(**(options.get(key) or {}))
    try:
        return cls(**nest(cls, options))  # corpus.max_new_tokens → cfg.generation
    except TypeError as e:
        raise ThinksaeError(f"{st.name}: {e}") from None
