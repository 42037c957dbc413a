"""`thinksae convert`: SAE directories between sparsify layout (ours) and SAELens."""

from __future__ import annotations

from pathlib import Path

from ..errors import ThinksaeError
from .config import FORMATS, ConvertConfig
from .formats import detect_format, load_sae, resolve_sae_dir, save_saelens, save_sparsify


def convert(cfg: ConvertConfig) -> Path:
    """Read ``cfg.src``, write it in format ``cfg.to`` to ``cfg.out``; returns the output dir."""
    if cfg.to not in FORMATS:
        raise ThinksaeError(f"unknown format {cfg.to!r} (use {' or '.join(FORMATS)})")
    src = resolve_sae_dir(cfg.src, cfg.hookpoint)
    out = Path(cfg.out)
    if detect_format(out):
        raise ThinksaeError(f"{out} already holds an SAE; choose another --out")
    sae = load_sae(src)
    if cfg.to == "saelens":
        save_saelens(sae, out, hook_name=cfg.hookpoint or src.name, model_name=cfg.model_name)
    else:
        save_sparsify(sae, out)
    return out
