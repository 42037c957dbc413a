"""Check the options a model's config decides before any weights load.

Loading the offline GGUF takes minutes on a CPU; a hookpoint it does not have should be refused
before that. `precheck_model` reads the model's config alone (a hub id's or a local directory's
``config.json``, a GGUF's key/value header), builds the model on the ``meta`` device (no memory, no
weights) and resolves each hookpoint on it with the same rules and messages as after loading; with
``d_in`` it also compares the hookpoint's output width with an SAE's.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from ..errors import ThinksaeError
from .gguf_header import gguf_config
from .hookpoints import parse_hookpoints, resolve_hookpoint
from .loading import OFFLINE_ALIAS, pretrained_kwargs
from .offline import offline_gguf_path

_RESIDUAL_WIDTH = ("embed_tokens", "norm", "layers.N", "layers.N.mlp", "layers.N.self_attn")
"""Hookpoint forms whose output has the model's hidden size."""


def model_config(spec: str):
    """The transformers config of ``spec`` without its weights, or None where that would cost a
    download of the weights (``offline`` before `thinksae models fetch-offline`), the GGUF's
    architecture is not one transformers maps, or ``spec`` cannot be loaded at all (then
    `load_model` reports why, as it always has)."""

    if spec == OFFLINE_ALIAS:
        gguf = offline_gguf_path()
        return gguf_config(gguf) if gguf.is_file() else None
    try:
        source, kwargs = pretrained_kwargs(spec)
    except ThinksaeError:
        return None
    if "gguf_file" in kwargs:
        return gguf_config(Path(source) / kwargs["gguf_file"])
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(source, **kwargs)
    except (OSError, ValueError):
        return None


def meta_model(config) -> nn.Module | None:
    """The model ``config`` describes, on the meta device; None if transformers cannot build it."""
    from transformers import AutoModelForCausalLM

    try:
        with torch.device("meta"):
            return AutoModelForCausalLM.from_config(config)
    except (ValueError, KeyError, ImportError, RuntimeError, TypeError):
        return None


def output_width(name: str, module: nn.Module, config) -> int | None:
    """Width of a hookpoint's output where the config or the module tells it, else None."""
    form = ".".join("N" if part.isdigit() else part for part in name.split("."))
    if form in _RESIDUAL_WIDTH:
        return int(config.get_text_config().hidden_size)
    if isinstance(module, nn.Linear):
        return module.out_features
    if isinstance(module, nn.Embedding):
        return module.embedding_dim
    return None


def precheck_model(
    spec: str | None,
    hookpoints: str | Sequence[str] | None,
    d_in: int | None = None,
    loaded: nn.Module | None = None,
) -> None:
    """Refuse, before loading ``spec``, hookpoints its model lacks and an SAE width ``d_in`` that
    does not match the hookpoint's output.

    Does nothing when the model is already ``loaded`` (the callers check it then), when ``spec`` is
    None or when its config cannot be had cheaply (`model_config`): the checks after loading
    still run.
    """
    if loaded is not None or not spec:
        return
    names = parse_hookpoints(hookpoints) if hookpoints else []
    config = model_config(spec)
    model = meta_model(config) if config is not None else None
    if model is None:
        return
    for name in names:
        width = output_width(name, resolve_hookpoint(model, name), config)
        if d_in is not None and width is not None and width != d_in:
            raise ThinksaeError(f"SAE/model mismatch: the SAE has d_in {d_in}, but the model's {name} "
                                f"output has width {width} ({spec})")
