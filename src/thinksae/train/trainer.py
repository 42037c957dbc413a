"""The training loop: Adam + warmup/decay, AuxK, dead latents, checkpoints, NaN guard, DDP."""

from __future__ import annotations

import contextlib
import math
import signal
import threading
import time
from functools import partial
from pathlib import Path

import torch
from torch import Tensor
from torch.optim.lr_scheduler import LambdaLR
from tqdm.auto import tqdm

from ..config import config_hash
from ..errors import ThinksaeError
from ..sae.registry import make_sae
from .checkpoint import find_checkpoint, load_checkpoint, save_checkpoint, set_rng_state
from .checks import check_sizes
from .config import (
    PROGRESS_FIELDS,
    TrainConfig,
    default_lr,
    differing_fields,
    identity,
    region_list,
    resolve_schedule,
    with_later_fields,
)
from .distributed import Ranks
from .metrics import METRICS, MetricsLog, open_loggers, truncate_metrics
from .sae_step import compute_dtype, forward_loss
from .sink_rows import sink_keep_mask


def lr_factor(step: int, warmup: int, total: int, decay: str) -> float:
    """Learning-rate multiplier for the step about to be taken (0-based).

    Linear warmup: step s (0-based) of the first ``warmup`` runs at (s + 1) / warmup, so the
    first step at 1/warmup (not 0: no step is wasted) and step ``warmup - 1`` at the full rate;
    then constant, or decaying to 0 at ``total`` linearly or along a half cosine.
    """
    if step < warmup:
        return (step + 1) / warmup
    if decay == "none":
        return 1.0
    progress = min((step - warmup) / max(total - warmup, 1), 1.0)
    if decay == "linear":
        return 1.0 - progress
    return 0.5 * (1.0 + math.cos(math.pi * progress))


class _StopFlag:
    """Turns the first SIGINT/SIGTERM into a flag checked between steps (the second one kills)."""

    def __init__(self):
        self.raised = False
        self._old: dict[int, object] = {}

    def _handle(self, signum, _frame):
        self.raised = True
        signal.signal(signum, self._old.get(signum, signal.SIG_DFL))

    @contextlib.contextmanager
    def installed(self):
        if threading.current_thread() is not threading.main_thread():
            yield self
            return
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._old[sig] = signal.signal(sig, self._handle)
        try:
            yield self
        finally:
            for sig, old in self._old.items():
                signal.signal(sig, old)


class Trainer:
    """Trains one SAE on one activation source; see :func:`thinksae.train.train`."""

    def __init__(self, cfg: TrainConfig, source, sae_dir: Path, ranks: Ranks,
                 device: torch.device):
        self.cfg, self.source, self.sae_dir = cfg, source, sae_dir
        self.ranks, self.device = ranks, device
        self.d_in = int(source.d_in)
        num_latents = check_sizes(cfg, self.d_in)
        self.dtype = compute_dtype(cfg.dtype, device)
        torch.manual_seed(cfg.seed)
        self.sae = make_sae(self.d_in, cfg.sae, device=device, dtype=torch.float32)
        for p in self.sae.parameters():
            ranks.broadcast(p.data)
        self.lr = cfg.lr if cfg.lr is not None else default_lr(num_latents)
        self.optimizer = torch.optim.Adam(
            self.sae.parameters(), lr=self.lr, betas=(0.9, 0.999), eps=1e-8,
            fused=device.type in ("cuda", "cpu"),
        )
        self.data_filter = self._data_filter()
        self.steps_per_epoch = self._steps_per_epoch()
        if self.steps_per_epoch == 0:
            raise ThinksaeError(
                f"the data holds fewer tokens than one batch of {cfg.batch_size}; "
                "lower --batch_size or harvest more"
            )
        self.total_steps = cfg.epochs * self.steps_per_epoch
        if cfg.max_tokens is not None:
            self.total_steps = min(self.total_steps, cfg.max_tokens // cfg.batch_size)
        self.schedule = resolve_schedule(cfg, self.total_steps)
        self.scheduler = LambdaLR(self.optimizer, partial(
            lr_factor, warmup=self.schedule.warmup_steps, total=self.total_steps,
            decay=cfg.lr_decay))
        self.since_fired = torch.zeros(num_latents, dtype=torch.int64, device=device)
        self.step = self.tokens_seen = self.epoch = self.batch_in_epoch = 0
        self.scale = 1.0
        self.wall_time = 0.0
        self.checkpoint_step: int | None = None
        self.calibration: dict | None = None
        self.metrics = MetricsLog(sae_dir / METRICS, write=ranks.is_main)

    def _data_filter(self) -> dict:
        """Keyword arguments that keep the training tokens of the source: ``regions`` and, with
        a holdout, ``docs`` (the traces not held out)."""
        out = {}
        self.heldout_ids: list[str] = []
        regions = region_list(self.cfg.regions)
        built_with = (getattr(self.source, "manifest", None) or {}).get("region_filter")
        if regions and built_with != regions:  # on the fly, the source was built with them
            if not hasattr(self.source, "num_batches"):
                raise ThinksaeError("--regions needs a store or --model/--corpus; this source "
                                    "cannot pick tokens by region")
            out["regions"] = regions
        if self.cfg.holdout:
            if not hasattr(self.source, "split_docs"):
                raise ThinksaeError("--holdout needs an activation store (--store)")
            out["docs"] = self.source.split_docs(self.cfg.holdout, "train")
            ids = self.source.trace_ids
            self.heldout_ids = [ids[i] for i in self.source.split_docs(self.cfg.holdout, "heldout")]
        self.sinks: dict = {"dropped": False}
        if self.cfg.drop_sinks and hasattr(self.source, "labels"):
            pool = self.source.token_indices(out.get("regions"), out.get("docs"))
            out["keep"], record = sink_keep_mask(
                self.source, self.cfg.sink_norm_multiple, pool)
            self.sinks = {"dropped": True, **record}
        elif self.cfg.drop_sinks:
            self.sinks["why"] = "the source is not an activation store (no per-token labels)"
        return out

    def _steps_per_epoch(self) -> int:
        if self.data_filter and hasattr(self.source, "num_batches"):
            return int(self.source.num_batches(self.cfg.batch_size, **self.data_filter))
        return int(self.source.num_tokens) // self.cfg.batch_size

    # ---------------------------------------------------------------- resume

    def resume(self) -> bool:
        """Load the checkpoint in the SAE directory if there is one; True when it did."""
        path = find_checkpoint(self.sae_dir)
        if path is None:
            return False
        ck = load_checkpoint(path)
        st = ck.state
        diff = differing_fields(with_later_fields(st["config"]), identity(self.cfg))
        if diff:
            raise ThinksaeError(
                f"checkpoint in {path} was made with a different config ({'; '.join(diff)}); "
                "use the same options, another --out, or --noresume to start afresh"
            )
        if st["d_in"] != self.d_in:
            raise ThinksaeError(
                f"checkpoint in {path} has d_in {st['d_in']} but the data has d_in {self.d_in}"
            )
        if st["data_hash"] != self.source.hash:
            raise ThinksaeError(
                f"checkpoint in {path} was made on other data (hash {st['data_hash']}, now "
                f"{self.source.hash}); use another --out or --noresume"
            )
        self.sae.load_state_dict(ck.sae)
        self.optimizer.load_state_dict(ck.optimizer)
        self.scheduler.load_state_dict(st["scheduler"])
        self.since_fired.copy_(ck.tensors["since_fired"])
        for key in ("step", "tokens_seen", "epoch", "batch_in_epoch", "scale", "wall_time"):
            setattr(self, key, st[key])
        self.checkpoint_step = self.step
        self.metrics.load_state(st["metrics"])
        set_rng_state(st["rng"], {k: v for k, v in ck.tensors.items() if k.startswith("rng.")})
        return True

    def save(self) -> Path | None:
        """Write a checkpoint (main rank); refuses to if the weights are no longer finite."""
        if not all(bool(torch.isfinite(p).all()) for p in self.sae.parameters()):
            raise ThinksaeError(
                f"non-finite weights after step {self.step}; {self._last_good()}"
            )
        self.checkpoint_step = self.step
        if not self.ranks.is_main:
            return None
        state = {
            "step": self.step, "tokens_seen": self.tokens_seen, "epoch": self.epoch,
            "batch_in_epoch": self.batch_in_epoch, "scale": self.scale,
            "wall_time": self.wall_time, "d_in": self.d_in, "data_hash": self.source.hash,
            "config": identity(self.cfg),
            "config_hash": config_hash(self.cfg, exclude=PROGRESS_FIELDS),
            "scheduler": self._scheduler_state(),
            "metrics": self.metrics.state(),
        }
        return save_checkpoint(self.sae_dir, self.sae.state_dict(), self.optimizer.state_dict(),
                               state, {"since_fired": self.since_fired})

    def _scheduler_state(self) -> dict:
        state = self.scheduler.state_dict()
        state["lr_lambdas"] = [None] * len(state["lr_lambdas"])  # rebuilt from the config
        return state

    def _last_good(self) -> str:
        if self.checkpoint_step is None:
            return "no checkpoint had been written yet"
        where = self.sae_dir / "checkpoint"
        return f"last good checkpoint at step {self.checkpoint_step} kept in {where}"

    # ---------------------------------------------------------------- training

    def _init_from_first_batch(self, x: Tensor) -> None:
        """Input scale (normalize_inputs) and b_dec from the first global batch."""
        full = self.ranks.all_gather(x).float()
        if not bool(torch.isfinite(full).all()):
            raise ThinksaeError("non-finite values in the input batch at step 1; nothing written")
        if self.cfg.normalize_inputs:
            mean_sq = full.pow(2).sum(-1).mean().item()
            if not mean_sq > 0:
                raise ThinksaeError("normalize_inputs: the first batch is all zeros")
            self.scale = math.sqrt(self.d_in / mean_sq)
        full = full * self.scale
        self.sae.init_b_dec_from_data(full, self.cfg.b_dec_init)

    def train_step(self, x: Tensor) -> None:
        """One optimiser step on this rank's slice ``x`` of the global batch."""
        cfg, ranks, sae = self.cfg, self.ranks, self.sae
        x = x.to(self.device, torch.float32)
        if self.scale != 1.0:
            x = x * self.scale
        dead_mask = None
        if cfg.auxk_alpha > 0:
            dead_mask = self.since_fired > self.schedule.dead_feature_threshold
        out, fvu, recon, auxk, prefix = forward_loss(sae, x, dead_mask, cfg.aux_k, self.dtype,
                                                     ranks, cfg.auxk_norm)
        loss = recon + cfg.auxk_alpha * auxk if cfg.auxk_alpha > 0 else recon
        loss.backward()
        self._all_reduce_grads()
        fired = out.latent_indices[out.latent_acts > 0]
        stats = torch.stack([
            fvu.detach().float(), auxk.detach().float(),
            (out.latent_acts > 0).sum().float(),
            (~torch.isfinite(x)).any().float(),
            torch.tensor(float(self._stop.raised), device=self.device),
        ])
        if prefix is not None:  # Matryoshka: the inner prefixes' FVUs (the last one is fvu)
            stats = torch.cat([stats, prefix[:-1].detach().float()])
        ranks.all_reduce(stats)
        fvu_v, auxk_v, nonzero, bad_input, stop, *inner_v = stats.tolist()
        step_no = self.step + 1
        if bad_input:
            raise ThinksaeError(f"non-finite values in the input batch at step {step_no}; "
                                f"{self._last_good()}")
        if not (math.isfinite(fvu_v) and math.isfinite(auxk_v)):
            raise ThinksaeError(f"non-finite loss at step {step_no}; {self._last_good()}")
        if cfg.sae.normalize_decoder:
            sae.remove_gradient_parallel_to_decoder_directions()
        self.step_lr = self.optimizer.param_groups[0]["lr"]
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        if cfg.sae.normalize_decoder:
            sae.set_decoder_norm_to_unit_norm()
        with torch.no_grad():
            did_fire = torch.zeros_like(self.since_fired, dtype=torch.int32)
            did_fire[fired] = 1
            ranks.all_reduce(did_fire)
            self.since_fired += cfg.batch_size
            self.since_fired[did_fire > 0] = 0
        self.step = step_no
        self.tokens_seen += cfg.batch_size
        self.batch_in_epoch += 1
        if self.batch_in_epoch >= self.steps_per_epoch:
            self.epoch, self.batch_in_epoch = self.epoch + 1, 0
        widths = getattr(sae, "prefix_widths", ())
        self.metrics.record(cfg.batch_size, fvu_v, auxk_v, nonzero / cfg.batch_size,
                            {f"fvu_prefix_{m}": v for m, v in zip(widths, inner_v)})
        self.stop_requested = bool(stop)

    def _all_reduce_grads(self) -> None:
        """Sum the SAE's gradients over the ranks (one flat all-reduce; nothing in one process)."""
        if self.ranks.world_size == 1:
            return
        grads = [p.grad for p in self.sae.parameters() if p.grad is not None]
        flat = torch.cat([g.reshape(-1) for g in grads])
        self.ranks.all_reduce(flat)
        offset = 0
        for g in grads:
            g.copy_(flat[offset : offset + g.numel()].view_as(g))
            offset += g.numel()

    def dead_pct(self) -> float:
        """Percentage of latents that have not fired for dead_feature_threshold tokens."""
        dead = self.since_fired > self.schedule.dead_feature_threshold
        return 100.0 * dead.float().mean().item()

    def fit(self) -> None:
        """Train until total_steps; checkpoints every save_every steps and at the end."""
        cfg = self.cfg
        self._stop, self.stop_requested = _StopFlag(), False
        if self.ranks.is_main:
            self.metrics.wandb_run, self.metrics.tb_writer = open_loggers(
                cfg.wandb, cfg.tensorboard, self.sae_dir, self.sae_dir.name, identity(cfg))
        bar = tqdm(total=self.total_steps, initial=self.step, desc=f"train {self.sae_dir.name}",
                   unit="step", disable=not (cfg.progress and self.ranks.is_main))
        kwargs = self.data_filter
        started = time.perf_counter()
        try:
            with self._stop.installed():
                while self.step < self.total_steps:
                    batches = self.source.iter_batches(
                        cfg.batch_size, seed=cfg.seed + self.epoch,
                        start_batch=self.batch_in_epoch, rank=self.ranks.rank,
                        world_size=self.ranks.world_size, **kwargs)
                    epoch, got = self.epoch, 0
                    for x in batches:
                        got += 1
                        if self.step == 0:
                            self._init_from_first_batch(x)
                        self.train_step(x)
                        bar.update(1)
                        self.wall_time += time.perf_counter() - started
                        started = time.perf_counter()
                        done = self.step >= self.total_steps
                        if self.step % cfg.log_every == 0 or done:
                            self.metrics.emit(self.step, self.tokens_seen, self.step_lr,
                                              self.dead_pct())
                        if self.step % cfg.save_every == 0 or done or self.stop_requested:
                            self.save()
                        if self.stop_requested:
                            raise KeyboardInterrupt
                        if done or self.epoch != epoch:
                            break
                    if got == 0:
                        raise ThinksaeError(
                            f"the data yielded no batch in epoch {self.epoch + 1} "
                            f"(expected {self.steps_per_epoch})"
                        )
                    if self.epoch == epoch and self.step < self.total_steps:
                        raise ThinksaeError(
                            f"the data ran out after {self.batch_in_epoch} batches of epoch "
                            f"{self.epoch + 1} (expected {self.steps_per_epoch})"
                        )
        finally:
            bar.close()
            self.metrics.close()

    def prepare_dir(self, resumed: bool) -> None:
        """Main rank: drop metrics logged after the checkpoint, or all of them on a fresh start."""
        if not self.ranks.is_main:
            return
        self.sae_dir.mkdir(parents=True, exist_ok=True)
        path = self.sae_dir / METRICS
        if resumed:
            truncate_metrics(path, self.step)
        else:
            path.unlink(missing_ok=True)
