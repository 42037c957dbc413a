"""An SAE bound to the hookpoint it reads: "load the SAE for this run" for every stage.

`SaeAtHookpoint.find` resolves an SAE directory (a run directory with ``hookpoint``, or with
``fetch`` a Hugging Face hub id), reads its report card and settles its hookpoint: the report
card's, else the directory's name, else SAELens' ``metadata.hook_name`` (the first that is a
hookpoint by :func:`thinksae.models.hookpoints.is_hookpoint`), else the store's; ``--hookpoint``
and the store must agree with it. `load` reads the weights; the ``check_*`` methods compare the
SAE with a store, a model and a tokenizer, each mismatch refused with one line.

The model code is imported inside the methods: ``thinksae.sae`` does not load ``thinksae.models``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from ..errors import ThinksaeError
from ..models.hookpoints import capture, is_hookpoint, resolve_hookpoint
from ..models.precheck import precheck_model
from ..models.tokenizer import tokenizer_hash
from .formats import SPARSIFY_CFG, detect_format, load_sae, read_report_card, resolve_sae_dir
from .hub import fetch_sae

MISMATCH = "SAE/model mismatch"
"""How every error about an SAE that does not fit the data or the model begins."""


def own_hookpoint(sae_dir: Path, card: dict[str, Any]) -> str | None:
    """The hookpoint an SAE says it reads: its report card's, else its directory name, else its
    SAELens ``metadata.hook_name``, the first that is a hookpoint name; None when none is."""
    candidates = [card.get("hookpoint"), sae_dir.name]
    if detect_format(sae_dir) == "saelens":
        candidates.append((_json_or_empty(sae_dir / SPARSIFY_CFG).get("metadata") or {})
                          .get("hook_name"))
    return next((c for c in candidates if is_hookpoint(c)), None)


def _json_or_empty(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


class SaeAtHookpoint:
    """One SAE directory, its report card and its hookpoint; its weights once `load`-ed."""

    def __init__(self, sae_dir: Path, hookpoint: str, card: dict[str, Any]):
        self.dir, self.hookpoint, self.card = Path(sae_dir), hookpoint, card
        self._sae = None

    @classmethod
    def find(cls, spec: str | Path, hookpoint: str | None = None, store=None,
             fetch: bool = False) -> SaeAtHookpoint:
        """The SAE ``spec`` names (see the module docstring); weights are not read yet."""
        if fetch:
            sae_dir = fetch_sae(str(spec), hookpoint)
        else:
            sae_dir = resolve_sae_dir(spec, hookpoint)
        card = read_report_card(sae_dir)
        own = own_hookpoint(sae_dir, card)
        if hookpoint and own and hookpoint != own:
            raise ThinksaeError(f"the SAE in {sae_dir} reads hookpoint {own}, not {hookpoint}")
        hookpoint = hookpoint or own
        if store is not None:
            if hookpoint and store.hookpoint != hookpoint:
                raise ThinksaeError(f"{MISMATCH}: store {store.path} holds hookpoint "
                                    f"{store.hookpoint}, but the SAE in {sae_dir} reads {hookpoint}")
            hookpoint = hookpoint or store.hookpoint
        if not hookpoint:
            raise ThinksaeError(f"cannot tell which hookpoint the SAE in {sae_dir} reads; pass "
                                "--hookpoint")
        return cls(sae_dir, hookpoint, card)

    def load(self, device: str | torch.device = "cpu",
             dtype: torch.dtype | None = torch.float32):
        """Read the weights (``dtype`` None: the file's) and keep them; returns the SAE."""
        self._sae = load_sae(self.dir, device=device, dtype=dtype)
        return self._sae

    @property
    def loaded(self):
        """The SAE module when :meth:`load` (or :meth:`use`) has run, else None."""
        return self._sae

    def use(self, sae) -> None:
        """Take an SAE loaded elsewhere as this directory's weights (trusted as given)."""
        self._sae = sae

    @property
    def sae(self):
        """The loaded SAE module."""
        if self._sae is None:
            raise RuntimeError(f"the SAE in {self.dir} is not loaded yet: call load() first")
        return self._sae

    @property
    def d_in(self) -> int:
        return self.sae.d_in

    def check_store(self, store) -> None:
        """The store holds activations of this SAE's hookpoint and width."""
        if store.hookpoint != self.hookpoint:
            raise ThinksaeError(f"{MISMATCH}: store {store.path} holds hookpoint {store.hookpoint}, "
                                f"but the SAE in {self.dir} reads {self.hookpoint}")
        if store.d_in != self.d_in:
            raise ThinksaeError(f"{MISMATCH}: the SAE in {self.dir} has d_in {self.d_in}, but "
                                f"store {store.path} holds activations of width {store.d_in}")

    def precheck(self, spec: str | None, loaded=None) -> None:
        """Before loading model ``spec``: its config has this hookpoint, of this SAE's width."""
        precheck_model(spec, self.hookpoint, d_in=self.d_in, loaded=loaded)

    def check_model(self, model) -> None:
        """A loaded model has this hookpoint, and its output there is as wide as the SAE's input
        (measured on a one-token forward that stops at the hookpoint)."""
        resolve_hookpoint(model, self.hookpoint)
        probe = torch.zeros((1, 1), dtype=torch.long, device=next(model.parameters()).device)
        width = int(capture(model, self.hookpoint, probe)[self.hookpoint].shape[-1])
        if width != self.d_in:
            raise ThinksaeError(f"{MISMATCH}: the SAE in {self.dir} has d_in {self.d_in}, but the "
                                f"model's {self.hookpoint} output has width {width}")

    def check_tokenizers(self, tokenizer=None, store=None) -> str | None:
        """The data's tokenizer hash (the store's, else ``tokenizer``'s), after checking that the
        store was tokenised with ``tokenizer`` and that the SAE was trained on that tokenizer's
        tokens (where its report card says which)."""
        model_hash = tokenizer_hash(tokenizer) if tokenizer is not None else None
        data_hash = store.manifest.get("tokenizer_hash") if store is not None else model_hash
        if store is not None and model_hash and data_hash and data_hash != model_hash:
            raise ThinksaeError(f"{MISMATCH}: store {store.path} was tokenised with another "
                                f"tokenizer (hash {data_hash}) than the model's (hash {model_hash})")
        trained = (self.card.get("data") or {}).get("tokenizer_hash")
        if trained and data_hash and trained != data_hash:
            raise ThinksaeError(f"{MISMATCH}: the SAE in {self.dir} was trained on tokens of another "
                                f"tokenizer (hash {trained}) than the data's (hash {data_hash})")
        return data_hash
