"""`train(cfg)`: open the data, resume or start, train, and save the SAE with its report card."""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from ..config import save_config
from ..errors import ThinksaeError
from ..sae.formats import save_sparsify, write_report_card
from ..store.reader import ActivationStore
from ..versions import stack_versions
from .calibrate import calibrate, has_batch_threshold
from .checkpoint import find_checkpoint, remove_checkpoints
from .checks import check_config, check_sizes
from .config import (
    TrainConfig,
    differing_fields,
    identity,
    with_later_fields,
)
from .distributed import setup
from .on_the_fly import OnTheFlyActivations
from .trainer import Trainer

TRAIN_CONFIG = "train_config.json"


def open_source(cfg: TrainConfig, device: torch.device):
    """The activation source the config names: a store, or a model run on the corpus."""
    if cfg.store is not None:
        store = ActivationStore(cfg.store)
        store.check_shards()  # a truncated shard is refused before anything is written
        if cfg.hookpoint and cfg.hookpoint != store.hookpoint:
            raise ThinksaeError(
                f"store {cfg.store} holds hookpoint {store.hookpoint}, not {cfg.hookpoint}"
            )
        return store

    return OnTheFlyActivations.from_config(cfg, device)


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, json.JSONDecodeError) as e:
        raise ThinksaeError(f"cannot read {path}: {e}") from None


def _already_trained(sae_dir: Path, cfg: TrainConfig, source) -> bool:
    """True when ``sae_dir`` holds an SAE finished with this config on this data.

    A finished SAE from other options or other data is refused rather than overwritten (unless
    ``--noresume``).
    """
    sae_cfg = _read_json(sae_dir / "cfg.json")
    if sae_cfg is not None and sae_cfg.get("d_in", source.d_in) != source.d_in:
        raise ThinksaeError(
            f"the SAE in {sae_dir} has d_in {sae_cfg['d_in']} but the data has d_in "
            f"{source.d_in}; use another --out (or --noresume to overwrite)"
        )
    old = _read_json(sae_dir / TRAIN_CONFIG)
    if old is None:
        return False
    old_identity = {k: v for k, v in with_later_fields(old).items() if k in identity(cfg)}
    diff = differing_fields(old_identity, identity(cfg))
    if diff:
        raise ThinksaeError(
            f"{sae_dir} already holds an SAE trained with a different config ({'; '.join(diff)});"
            " use another --out, or --noresume to overwrite it"
        )
    card = _read_json(sae_dir / "thinksae.json") or {}
    old_hash = card.get("data", {}).get("hash")
    if old_hash is not None and old_hash != source.hash:
        raise ThinksaeError(
            f"{sae_dir} already holds an SAE trained on other data (hash {old_hash}, now "
            f"{source.hash}); use another --out, or --noresume to overwrite it"
        )
    return True


@torch.no_grad()
def fold_input_scale(sae, scale: float) -> None:
    """Make an SAE trained on ``scale * x`` work on raw ``x``.

    Pre-activations on ``scale * x`` are ``scale`` times those of an SAE with encoder bias and
    b_dec divided by ``scale``, so dividing them leaves the same top-k latents with activations
    in raw units; the decoder directions stay unit norm and the output comes back divided. An
    architecture with a threshold on the activations divides it too
    (:meth:`thinksae.sae.SparseAutoencoder.fold_input_scale`).
    """
    if scale == 1.0:
        return
    sae.fold_input_scale(scale)


def _source_name(cfg: TrainConfig, source) -> str:
    if cfg.store is not None:
        return str(cfg.store)
    if cfg.model is not None:
        return f"on the fly: {cfg.model} on {cfg.corpus}"
    return f"in memory: {type(source).__name__}"


def report_card(trainer: Trainer) -> dict:
    """Hyperparameters, data and final metrics of a finished run (thinksae.json)."""
    cfg, source, sae = trainer.cfg, trainer.source, trainer.sae
    manifest = dict(getattr(source, "manifest", {}) or {})
    keep = ("model", "hookpoint", "d_in", "dtype", "num_tokens", "tokenizer_hash", "corpus_hash")
    return {
        "versions": stack_versions(),
        "hookpoint": trainer.sae_dir.name,
        "d_in": trainer.d_in,
        "num_latents": int(sae.num_latents),
        "expansion_factor": round(int(sae.num_latents) / trainer.d_in, 4),
        "k": cfg.sae.k,
        "training": {
            "lr": trainer.lr, "lr_warmup_steps": trainer.schedule.warmup_steps,
            "lr_warmup_steps_option": cfg.lr_warmup_steps, "lr_decay": cfg.lr_decay,
            "optimizer": "adam", "betas": [0.9, 0.999], "eps": 1e-8,
            "auxk_alpha": cfg.auxk_alpha, "auxk_norm": cfg.auxk_norm,
            "aux_k": cfg.aux_k or trainer.d_in // 2,
            "dead_feature_threshold": trainer.schedule.dead_feature_threshold,
            "dead_feature_threshold_option": cfg.dead_feature_threshold,
            "normalize_inputs": cfg.normalize_inputs, "input_scale": trainer.scale,
            "input_scale_folded": True, "b_dec_init": cfg.b_dec_init,
            "batch_size": cfg.batch_size, "epochs": cfg.epochs, "max_tokens": cfg.max_tokens,
            "seed": cfg.seed, "dtype": str(trainer.dtype).removeprefix("torch."),
            "world_size": trainer.ranks.world_size, "tokens_seen": trainer.tokens_seen,
            "steps": trainer.step, "wall_time_s": round(trainer.wall_time, 3),
            "regions": cfg.regions, "holdout": cfg.holdout, "sinks": trainer.sinks,
            **({"threshold_calibration": trainer.calibration} if trainer.calibration else {}),
        },
        "data": {
            "source": _source_name(cfg, source),
            "hash": source.hash,
            **{k: manifest[k] for k in keep if k in manifest},
            **({"heldout_traces": trainer.heldout_ids} if trainer.heldout_ids else {}),
        },
        "metrics": {"window": "last log window of training", **trainer.metrics.last},
    }


CALIBRATION_TOKENS = 65536
"""Training tokens the inference threshold of a batchtopk SAE is calibrated on (at most)."""


def calibrate_threshold(trainer: Trainer) -> dict | None:
    """batchtopk (a scalar inference threshold) with calibrate_threshold: θ = max(the θ that
    gives the first training batches of the seeded pass (sinks left out; up to
    CALIBRATION_TOKENS tokens) k active latents on average, the running estimate)
    (:mod:`thinksae.train.calibrate`); the record for the card."""
    cfg, sae = trainer.cfg, trainer.sae
    if not (cfg.calibrate_threshold and has_batch_threshold(sae)):
        return None
    batches = max(1, min(trainer.steps_per_epoch, CALIBRATION_TOKENS // cfg.batch_size))
    stream = trainer.source.iter_batches(cfg.batch_size, seed=cfg.seed, **trainer.data_filter)
    rows = (x.to(trainer.device, torch.float32) for _, x in zip(range(batches), stream))
    return calibrate(sae, rows, cfg.sae.k, batches * cfg.batch_size)


def _finish(trainer: Trainer) -> None:
    """Save the final SAE (raw-activation units), report card and config; drop the checkpoint."""
    sae_dir = trainer.sae_dir
    fold_input_scale(trainer.sae, trainer.scale)
    trainer.calibration = calibrate_threshold(trainer)
    save_sparsify(trainer.sae, sae_dir)
    write_report_card(sae_dir, report_card(trainer))
    save_config(trainer.cfg, sae_dir / TRAIN_CONFIG)
    remove_checkpoints(sae_dir)


def run(cfg: TrainConfig, source=None) -> Path:
    """Train a TopK SAE as ``cfg`` says and return its directory ``{out}/{hookpoint}``.

    ``source`` optionally replaces the store / on-the-fly data with any object offering
    ``d_in``, ``num_tokens``, ``hash``, ``manifest`` and ``iter_batches`` (like
    :class:`thinksae.store.ActivationStore`). Under torchrun every rank trains on its slice of
    each batch and only rank 0 writes. Killed at any point and run again with the same options,
    training continues from the last checkpoint and ends with the same weights bit for bit.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    check_config(cfg, world_size, need_data=source is None)
    ranks, device = setup(cfg.device)
    try:
        if source is None:
            source = open_source(cfg, device)
        hookpoint = cfg.hookpoint or source.manifest.get("hookpoint")
        if not hookpoint:
            raise ThinksaeError("no --hookpoint given and the data does not name one")
        check_sizes(cfg, int(source.d_in))
        sae_dir = Path(cfg.out) / hookpoint
        if cfg.resume and _already_trained(sae_dir, cfg, source):
            if ranks.is_main:
                print(f"thinksae: {sae_dir} is already trained with this config; nothing to do")
            return sae_dir
        trainer = Trainer(cfg, source, sae_dir, ranks, device)
        if ranks.is_main:
            if cfg.resume:
                find_checkpoint(sae_dir)  # finishes a checkpoint swap cut short by a kill
            else:
                remove_checkpoints(sae_dir)
        ranks.barrier()
        resumed = cfg.resume and trainer.resume()
        if resumed and ranks.is_main:
            print(f"thinksae: resuming {sae_dir} from its checkpoint at step {trainer.step} "
                  f"({trainer.tokens_seen:,} tokens seen)", flush=True)
        trainer.prepare_dir(resumed)
        trainer.fit()
        if ranks.is_main:
            _finish(trainer)
        ranks.barrier()
        return sae_dir
    finally:
        ranks.close()
