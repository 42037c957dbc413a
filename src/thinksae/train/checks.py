"""`thinksae train`'s option checks: one-line errors before anything is read or written."""

from __future__ import annotations

import math

from ..errors import ThinksaeError
from ..sae.registry import ARCHITECTURES, sae_class
from ..sinks import check_norm_multiple
from .config import (
    AUTO,
    AUXK_NORMS,
    B_DEC_INITS,
    COMPUTE_DTYPES,
    LR_DECAYS,
    REGION_NAMES,
    TrainConfig,
    region_list,
)


def check_config(cfg: TrainConfig, world_size: int = 1, need_data: bool = True) -> None:
    """Refuse bad options with a one-line ThinksaeError before anything is read or written.

    ``need_data=False`` when the caller passes the activations itself (no store or model needed).
    """
    _check_data(cfg, world_size, need_data)
    _check_schedule(cfg)
    _check_sae(cfg, world_size)


def _check_data(cfg: TrainConfig, world_size: int, need_data: bool) -> None:
    """Where the activations come from, and which of their tokens are trained on."""
    on_the_fly = [cfg.model, cfg.corpus]
    if need_data and cfg.store is None and not all(on_the_fly):
        raise ThinksaeError(
            "give --store, or --model, --corpus and --hookpoint to train on the fly"
        )
    if cfg.store is not None and any(on_the_fly):
        raise ThinksaeError("give either --store or --model/--corpus, not both")
    if need_data and cfg.store is None and not cfg.hookpoint:
        raise ThinksaeError("training on the fly needs --hookpoint (e.g. layers.10)")
    if cfg.batch_size % world_size:
        raise ThinksaeError(
            f"batch size {cfg.batch_size} is not divisible by the world size {world_size}"
        )
    if not 0.0 <= cfg.holdout < 1.0:
        raise ThinksaeError(f"holdout must be a share of the traces in [0, 1) (got {cfg.holdout})")
    if cfg.holdout and cfg.store is None and need_data:
        raise ThinksaeError("--holdout needs --store (traces are held out of a store)")
    if cfg.regions is not None:
        regions = region_list(cfg.regions)
        unknown = [r for r in regions if r not in REGION_NAMES]
        if not regions or (cfg.store is None and unknown):
            raise ThinksaeError(f"--regions {cfg.regions!r}: give some of {', '.join(REGION_NAMES)}")
    check_norm_multiple(cfg.sink_norm_multiple)
    if cfg.drop_sinks and "special" in (region_list(cfg.regions) or []):
        raise ThinksaeError("--regions special: special tokens are attention sinks, which "
                            "training leaves out; add --nodrop_sinks to train on them")


def _check_schedule(cfg: TrainConfig) -> None:
    """The optimiser, its schedule, the loss terms and the counts."""
    if cfg.lr is not None and not cfg.lr > 0:
        raise ThinksaeError(f"learning rate must be > 0 (got {cfg.lr})")
    if cfg.lr_decay not in LR_DECAYS:
        raise ThinksaeError(f"unknown lr_decay {cfg.lr_decay!r} (use {', '.join(LR_DECAYS)})")
    if cfg.b_dec_init not in B_DEC_INITS:
        raise ThinksaeError(f"unknown b_dec_init {cfg.b_dec_init!r} (use {', '.join(B_DEC_INITS)})")
    if cfg.dtype not in COMPUTE_DTYPES:
        raise ThinksaeError(f"unknown dtype {cfg.dtype!r} (use {', '.join(COMPUTE_DTYPES)})")
    for name in ("batch_size", "epochs", "log_every", "save_every", "max_length",
                 "model_batch_size", "shuffle_tokens"):
        if getattr(cfg, name) < 1:
            raise ThinksaeError(f"{name} must be >= 1 (got {getattr(cfg, name)})")
    for name in ("lr_warmup_steps", "dead_feature_threshold"):
        value = getattr(cfg, name)
        if value != AUTO and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
            raise ThinksaeError(f"{name} must be auto or a whole number >= 0 (got {value!r})")
    if cfg.max_tokens is not None and cfg.max_tokens < cfg.batch_size:
        raise ThinksaeError(
            f"max_tokens {cfg.max_tokens} is less than one batch ({cfg.batch_size})"
        )
    if not cfg.auxk_alpha >= 0 or math.isinf(cfg.auxk_alpha):
        raise ThinksaeError(f"auxk_alpha must be a finite number >= 0 (got {cfg.auxk_alpha})")
    if cfg.auxk_norm not in AUXK_NORMS:
        raise ThinksaeError(f"unknown auxk_norm {cfg.auxk_norm!r} (use {', '.join(AUXK_NORMS)})")
    if cfg.aux_k is not None and cfg.aux_k < 1:
        raise ThinksaeError(f"aux_k must be >= 1 (got {cfg.aux_k})")


def _check_sae(cfg: TrainConfig, world_size: int) -> None:
    """The SAE's shape and architecture."""
    if cfg.sae.k <= 0:
        raise ThinksaeError(f"k must be >= 1 (got {cfg.sae.k})")
    trainable = sorted(n for n, c in ARCHITECTURES.items() if c.trainable)
    if cfg.sae.architecture not in trainable:
        raise ThinksaeError(f"cannot train architecture {cfg.sae.architecture!r} (use "
                            f"{', '.join(trainable)})")
    sae_cls = ARCHITECTURES[cfg.sae.architecture]
    if sae_cls.needs_whole_batch and world_size > 1:
        raise ThinksaeError(f"{cfg.sae.architecture} trains in one process (its top k x batch and "
                            "threshold are not shared across ranks)")
    if cfg.sae.num_latents < 0 or cfg.sae.expansion_factor < 1:
        raise ThinksaeError("num_latents must be >= 0 and expansion_factor >= 1")
    sae_cls.check_config(cfg.sae, cfg.sae.num_latents or None)  # the rest once d_in is known


def check_sizes(cfg: TrainConfig, d_in: int) -> int:
    """Check the options that depend on the data width; returns the number of latents."""
    num_latents = cfg.sae.num_latents or d_in * cfg.sae.expansion_factor
    if cfg.sae.k > num_latents:
        raise ThinksaeError(f"k = {cfg.sae.k} is more than the {num_latents} latents")
    if cfg.aux_k is not None and cfg.aux_k > num_latents:
        raise ThinksaeError(f"aux_k = {cfg.aux_k} is more than the {num_latents} latents")
    sae_class(cfg.sae.architecture).check_config(cfg.sae, num_latents)
    return num_latents
