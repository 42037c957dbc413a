"""The SAE meets the model, once: find, check, load and bind an SAE to its hookpoint in a model.

Every stage that runs a model with an SAE (eval, analyze, validate, steer, monitor, the
workbench) gets its ``(model, tokenizer, SAE, hookpoint)`` from :func:`bind_sae`, in this order,
each mismatch refused with one line before the next, costlier step:

1. the SAE directory and its hookpoint (:class:`~thinksae.sae.bound.SaeAtHookpoint`, found by
   the caller so it can refuse cheap mistakes first), its weights read (float32);
2. the store, when given, holds that hookpoint at that width;
3. the model's config, when it can be read without loading, has the hookpoint at that width
   (:func:`~thinksae.models.precheck_model`);
4. the model loaded (or the one passed in, which must come with its tokenizer), and its output
   at the hookpoint as wide as the SAE's input;
5. the tokenizer is the store's, and the one the SAE was trained on (where its report card says);
6. the SAE moved to the model's device.

The result, :class:`Bound`, owns attaching hooks at the hookpoint (:meth:`Bound.steering`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import torch

from .chat import ThinkMarkers, stop_ids
from .errors import ThinksaeError
from .interventions import steering
from .models.loading import load_model, resolve_device
from .models.tokenizer import load_tokenizer
from .sae.bound import SaeAtHookpoint


class ModelSource(NamedTuple):
    """Where a model comes from: the options every model-running command has."""

    spec: str | None
    """Hub id, local directory, .gguf file or ``offline`` (None: no model)."""
    tokenizer: str | None = None
    """Load the tokenizer from another spec (default: the model's)."""
    device: str = "auto"
    dtype: str = "auto"
    progress: bool = True

    @classmethod
    def of(cls, cfg: Any, spec: str | None = None) -> ModelSource:
        """The source a stage config names (``spec`` replaces its ``model``)."""
        return cls(spec if spec is not None else getattr(cfg, "model", None),
                   getattr(cfg, "tokenizer", None), getattr(cfg, "device", "auto"),
                   getattr(cfg, "dtype", "auto"), getattr(cfg, "progress", True))


@dataclass
class Bound:
    """A checked SAE bound to its hookpoint in a model (module docstring); ``model`` is None for
    a store-only binding (``need_model=False`` and no model given)."""

    sae_at: SaeAtHookpoint
    sae: Any
    model: Any
    tokenizer: Any
    device: torch.device
    data_hash: str | None = None
    """The tokenizer hash of the data (the store's, else the model's tokenizer's)."""

    @property
    def hookpoint(self) -> str:
        return self.sae_at.hookpoint

    @property
    def sae_dir(self) -> Path:
        return self.sae_at.dir

    @property
    def card(self) -> dict:
        return self.sae_at.card

    def markers(self, sentences: bool = False) -> ThinkMarkers:
        """The think markers and stop ids of this model's tokenizer."""
        return ThinkMarkers.from_tokenizer(self.tokenizer, stop_ids(self.model, self.tokenizer),
                                           sentences=sentences)

    def steering(self, interventions, window=None, markers=None, record=(), record_value="topk"):
        """:func:`thinksae.interventions.steering` at this hookpoint with this SAE."""
        return steering(self.model, self.sae, self.hookpoint, interventions, window, markers,
                        record, record_value)


def bind_sae(sae_at: SaeAtHookpoint, source: ModelSource, model=None, tokenizer=None, *,
             store=None, need_model: bool = True, sae=None,
             sae_dtype: torch.dtype | None = torch.float32) -> Bound:
    """Load and check everything in the module docstring's order; ``model``/``tokenizer``
    replace loading ``source``; ``need_model=False`` loads no model when none is given (the
    tokenizer is then loaded from ``source`` when it names one); ``sae`` replaces reading the
    weights (then it is trusted as given, not checked against the model); ``sae_dtype`` None
    keeps the dtype of the SAE's file."""
    if model is not None and tokenizer is None:
        raise ThinksaeError("a model was passed without its tokenizer")
    own = sae is None
    if own:
        sae = sae_at.loaded or sae_at.load(dtype=sae_dtype)
    else:
        sae_at.use(sae)
    if store is not None:
        sae_at.check_store(store)
    if model is None and need_model:
        if not source.spec:
            raise ThinksaeError("no model given: pass --model")
        sae_at.precheck(source.spec)
        model, tokenizer = load_model(source.spec, source.device, source.dtype,
                                      tokenizer=source.tokenizer, progress=source.progress)
    if model is not None:
        if own:
            sae_at.check_model(model)
        device = next(model.parameters()).device
    else:
        device = resolve_device(source.device)
        if tokenizer is None and (source.tokenizer or source.spec):
            tokenizer = load_tokenizer(source.tokenizer or source.spec)
    data_hash = sae_at.check_tokenizers(tokenizer, store) if own or store is not None else None
    return Bound(sae_at, sae.to(device), model, tokenizer, device, data_hash)
