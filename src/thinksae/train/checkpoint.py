"""Resumable training checkpoints, written so that a kill at any moment leaves a usable one.

A checkpoint is a directory ``{sae_dir}/checkpoint/`` holding safetensors files (SAE weights,
optimiser moments, dead-latent counters, torch RNG states) and ``manifest.json`` (step, data
position, scheduler and numpy/python RNG states, config), written last. A new checkpoint is
built in ``.checkpoint.tmp/``; then the old one is renamed to ``.checkpoint.old/``, the new one
into place, and the old one deleted. At every moment one of ``checkpoint/`` or
``.checkpoint.old/`` holds a complete checkpoint; :func:`find_checkpoint` picks it up. Nothing
is pickled: tensors go to safetensors and the rest to JSON.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor

from .. import atomic
from ..errors import ThinksaeError

FORMAT = "thinksae-train-checkpoint/1"
MANIFEST = "manifest.json"
CHECKPOINT = "checkpoint"
_TMP = ".checkpoint.tmp"
_OLD = ".checkpoint.old"


@dataclass
class Checkpoint:
    """A checkpoint read back from disk."""

    path: Path
    state: dict[str, Any]
    """manifest.json: step, tokens, data position, scheduler, RNG, config identity, …"""
    sae: dict[str, Tensor]
    optimizer: dict[str, Any]
    """An optimiser ``state_dict`` ready for ``load_state_dict``."""
    tensors: dict[str, Tensor]
    """Trainer tensors: dead-latent counters and torch RNG states."""


def _complete(path: Path) -> bool:
    return (path / MANIFEST).is_file()


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _recover(sae_dir: Path) -> None:
    """Undo a swap cut short by a kill: put the complete old checkpoint back in place."""
    final, old = sae_dir / CHECKPOINT, sae_dir / _OLD
    if not _complete(final) and _complete(old):
        if final.exists():
            shutil.rmtree(final)
        os.replace(old, final)


def find_checkpoint(sae_dir: str | Path) -> Path | None:
    """The directory of the last complete checkpoint under ``sae_dir``, or None."""
    sae_dir = Path(sae_dir)
    if not sae_dir.is_dir():
        return None
    _recover(sae_dir)
    final = sae_dir / CHECKPOINT
    return final if _complete(final) else None


def remove_checkpoints(sae_dir: str | Path) -> None:
    """Delete every checkpoint directory (complete or not) under ``sae_dir``."""
    for name in (CHECKPOINT, _TMP, _OLD):
        shutil.rmtree(Path(sae_dir) / name, ignore_errors=True)


def _save_tensors(path: Path, tensors: dict[str, Tensor]) -> None:
    with atomic.atomic_path(path) as tmp:
        save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(tmp))


def _split_optimizer(sd: dict) -> tuple[dict[str, Tensor], dict]:
    """An optimiser state_dict as flat tensors plus a JSON-ready remainder."""
    tensors, layout = {}, {}
    for idx, entry in sd["state"].items():
        layout[str(idx)] = {}
        for name, value in entry.items():
            if isinstance(value, Tensor):
                tensors[f"{idx}.{name}"] = value
                layout[str(idx)][name] = "tensor"
            else:
                layout[str(idx)][name] = value
    return tensors, {"param_groups": sd["param_groups"], "state": layout}


def _join_optimizer(tensors: dict[str, Tensor], meta: dict) -> dict:
    state = {}
    for idx, entry in meta["state"].items():
        state[int(idx)] = {
            name: tensors[f"{idx}.{name}"] if value == "tensor" else value
            for name, value in entry.items()
        }
    groups = [{k: tuple(v) if k == "betas" else v for k, v in g.items()}
              for g in meta["param_groups"]]
    return {"state": state, "param_groups": groups}


def rng_state() -> tuple[dict[str, Any], dict[str, Tensor]]:
    """Python, numpy and torch (CPU and CUDA) RNG states as JSON-ready values and tensors."""
    version, internal, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    js = {
        "python": [version, list(internal), gauss],
        "numpy": [kind, keys.tolist(), int(pos), int(has_gauss), float(cached)],
    }
    tensors = {"rng.torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda.{i}"] = s
    return js, tensors


def set_rng_state(js: dict[str, Any], tensors: dict[str, Tensor]) -> None:
    """Restore what :func:`rng_state` captured."""
    version, internal, gauss = js["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = js["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(tensors["rng.torch"])
    cuda = [tensors[k] for k in sorted(tensors) if k.startswith("rng.cuda.")]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda[: torch.cuda.device_count()])


def save_checkpoint(
    sae_dir: str | Path,
    sae_state: dict[str, Tensor],
    optimizer_state: dict,
    state: dict[str, Any],
    tensors: dict[str, Tensor],
) -> Path:
    """Write a checkpoint atomically (see the module docstring); returns its directory.

    ``state`` must be JSON-ready; it is stored in the manifest, which is written last.
    """
    sae_dir = Path(sae_dir)
    sae_dir.mkdir(parents=True, exist_ok=True)
    _recover(sae_dir)
    tmp, final, old = sae_dir / _TMP, sae_dir / CHECKPOINT, sae_dir / _OLD
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    rng_js, rng_tensors = rng_state()
    opt_tensors, opt_meta = _split_optimizer(optimizer_state)
    _save_tensors(tmp / "sae.safetensors", sae_state)
    _save_tensors(tmp / "optimizer.safetensors", opt_tensors)
    _save_tensors(tmp / "trainer.safetensors", {**tensors, **rng_tensors})
    manifest = {"format": FORMAT, **state, "optimizer": opt_meta, "rng": rng_js}
    atomic.write_json(tmp / MANIFEST, manifest)
    _fsync_dir(tmp)
    if old.exists():
        shutil.rmtree(old)
    if final.exists():
        os.replace(final, old)
    os.replace(tmp, final)
    _fsync_dir(sae_dir)
    shutil.rmtree(old, ignore_errors=True)
    return final


def load_checkpoint(path: str | Path) -> Checkpoint:
    """Read a checkpoint directory written by :func:`save_checkpoint`."""
    path = Path(path)
    try:
        state = json.loads((path / MANIFEST).read_text())
        if state.get("format") != FORMAT:
            raise ThinksaeError(f"{path} is not a thinksae training checkpoint")
        sae = load_file(str(path / "sae.safetensors"))
        opt = _join_optimizer(load_file(str(path / "optimizer.safetensors")), state["optimizer"])
        tensors = load_file(str(path / "trainer.safetensors"))
    except (OSError, json.JSONDecodeError, KeyError, ValueError, SafetensorError) as e:
        raise ThinksaeError(f"cannot read checkpoint {path}: {e}") from None
    return Checkpoint(path, state, sae, opt, tensors)
