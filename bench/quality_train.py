"""Training workers of bench/quality.py: one SAE per subprocess, from the same rows in the same order.

Every system gets the same batches: in step s of epoch e = s // (rows // batch), the rows of
``numpy.random.default_rng(seed + e).permutation(rows)`` (the order thinksae's trainer draws from
a store), for ``steps`` steps; ``seed`` also seeds torch before the SAE is built.

Schedules. ``own``: each library's defaults as its trainer sets them (thinksae: TrainConfig's
defaults; sparsify 1.3: signum (sign SGD in a schedule-free wrapper, momentum 0.95) at
lr 5e-3 / sqrt(latents / 2^14), no warmup, b_dec = first batch mean, unit-norm decoder with the
parallel gradient removed, FVU loss, AuxK off; SAELens 6: its SAETrainer: Adam (0.9, 0.999) at
3e-4 constant, no warmup, MSE loss Σ_d / batch, decoder rows initialised at norm 0.1 with W_enc =
W_decᵀ, b_dec = 0, activations scaled by the decoder norms, AuxK coefficient 1 with dead latents
after 1000 steps without firing, gradient norm clipped to 1). ``matched``: Adam (0.9, 0.999,
eps 1e-8) at one lr with thinksae's warmup/decay function (:func:`thinksae.train.trainer.lr_factor`)
for every system; each keeps its other choices (init, loss, AuxK).

thinksae-matryoshka_batchtopk gets the cumulative prefix widths of ``spec["matryoshka_widths"]``
(bench/quality.py: --matryoshka_widths, else :func:`quality_saebench.default_matryoshka_widths`).
A batch-threshold SAE's record carries the card's ``threshold_calibration`` (the trainer's
default calibration of θ after training, :mod:`thinksae.train.calibrate`).

Knobs (ablations, thinksae systems only; ``--set key=value``): any TrainConfig field, plus
``optimizer=signum`` (sparsify's optimiser in thinksae's trainer, constant lr), ``loss=mse``
(Σ‖x − x̂‖² / batch instead of FVU), ``encoder_init_norm=v`` (encoder rows scaled to norm v),
``b_dec_init=zeros``.
"""

from __future__ import annotations

import hashlib
import json
import math
import resource
import time
from functools import partial
from pathlib import Path

import numpy as np
import torch

SAELENS_ARCHS = {"topk": ("sae_lens.saes.topk_sae", "TopKTrainingSAE", "TopKTrainingSAEConfig"),
                 "batchtopk": ("sae_lens.saes.batchtopk_sae", "BatchTopKTrainingSAE",
                               "BatchTopKTrainingSAEConfig")}
BENCH_KNOBS = ("optimizer", "loss", "encoder_init_norm", "b_dec_init")


def peak_rss_mb() -> float:
    """This process's peak resident set in MB: Linux's ``VmHWM`` (the high-water mark of this
    process's own memory map), else ``ru_maxrss``. Not ``ru_maxrss`` on Linux: a worker started by
    fork and exec keeps the parent's peak in it (the kernel carries the old map's high-water mark
    over the exec), so with the model loaded in the measuring process every worker read ~4.4 GB."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def batch_stream(x: torch.Tensor, batch_size: int, steps: int, seed: int):
    """The batches every system trains on (module docstring)."""
    per_epoch = len(x) // batch_size
    perm = None
    for step in range(steps):
        epoch, b = divmod(step, per_epoch)
        if b == 0:
            perm = torch.from_numpy(np.random.default_rng(seed + epoch).permutation(len(x)))
        yield x[perm[b * batch_size : (b + 1) * batch_size]]


class MatrixSource:
    """Rows in memory with an ActivationStore's batch interface (for thinksae's trainer)."""

    def __init__(self, x: torch.Tensor, name: str):
        self.data = x
        self.manifest = {"hookpoint": "bench", "d_in": x.shape[1], "num_tokens": len(x),
                         "data": name}

    d_in = property(lambda self: self.data.shape[1])
    num_tokens = property(lambda self: self.data.shape[0])
    hash = property(lambda self: hashlib.sha256(
        json.dumps(self.manifest, sort_keys=True).encode()).hexdigest()[:16])

    def iter_batches(self, batch_size, seed=0, start_batch=0, rank=0, world_size=1):
        perm = torch.from_numpy(np.random.default_rng(seed).permutation(len(self.data)))
        for b in range(start_batch, len(self.data) // batch_size):
            yield self.data[perm[b * batch_size : (b + 1) * batch_size]]


def _signum(params, lr: float):
    from schedulefree import ScheduleFreeWrapper
    from sparsify.sign_sgd import SignSGD

    opt = ScheduleFreeWrapper(SignSGD([{"params": list(params), "lr": lr}]), momentum=0.95)
    opt.train()
    return opt


class _ConstantLr:
    """Stands in for a scheduler where the optimiser has none (signum)."""

    def step(self):
        pass

    def state_dict(self):
        return {"lr_lambdas": []}


def _install_knobs(knobs: dict) -> None:
    """Patch thinksae's trainer in this worker process for the bench-only knobs."""
    from thinksae.train import trainer as trainer_mod

    if not knobs:
        return
    orig_init, orig_fit = trainer_mod.Trainer.__init__, trainer_mod.Trainer.fit
    orig_loss = trainer_mod.forward_loss

    def init(self, *a, **kw):
        orig_init(self, *a, **kw)
        with torch.no_grad():
            if "encoder_init_norm" in knobs:
                self.sae.encoder.weight.copy_(self.sae.W_dec * float(knobs["encoder_init_norm"]))
        if knobs.get("b_dec_init") == "zeros":
            self.sae.init_b_dec_from_data = lambda *a, **kw: None
        if knobs.get("optimizer") == "signum":
            self.optimizer, self.scheduler = _signum(self.sae.parameters(), self.lr), _ConstantLr()

    def fit(self):
        orig_fit(self)
        if knobs.get("optimizer") == "signum":
            self.optimizer.eval()  # schedule-free: the averaged weights are the model

    def mse_loss(sae, x, *a, **kw):
        losses = orig_loss(sae, x, *a, **kw)
        scale = (x.float() - x.float().mean(0)).pow(2).sum().detach() / len(x)
        return losses._replace(reconstruction=losses.reconstruction * scale,
                               auxk=losses.auxk * scale)

    trainer_mod.Trainer.__init__, trainer_mod.Trainer.fit = init, fit
    if knobs.get("loss") == "mse":
        trainer_mod.forward_loss = mse_loss


def train_thinksae(arch: str, spec: dict, x: torch.Tensor, out: Path) -> tuple[Path, dict]:
    from thinksae.sae import SaeConfig
    from thinksae.train import TrainConfig, train

    knobs = {k: v for k, v in spec["set"].items() if k in BENCH_KNOBS}
    fields = {k: v for k, v in spec["set"].items() if k not in BENCH_KNOBS}
    per_epoch = len(x) // spec["batch_size"]
    widths = spec.get("matryoshka_widths") or ""
    base = dict(out=str(out), sae=SaeConfig(num_latents=spec["latents"], k=spec["k"],
                                            architecture=arch, matryoshka_widths=widths),
                batch_size=spec["batch_size"], epochs=math.ceil(spec["steps"] / per_epoch),
                max_tokens=spec["steps"] * spec["batch_size"], seed=spec["seed"],
                dtype=spec["dtype"], device="cpu", progress=False, log_every=10**9,
                save_every=10**9, resume=False)
    if spec["variant"] == "matched":
        base.update(lr=spec["matched"]["lr"], lr_warmup_steps=spec["matched"]["warmup"],
                    lr_decay=spec["matched"]["decay"])
    _install_knobs(knobs)
    sae_dir = train(TrainConfig(**{**base, **fields}), source=MatrixSource(x, spec["data_hash"]))
    card = json.loads((sae_dir / "thinksae.json").read_text())
    schedule = {k: card["training"].get(k) for k in (
        "lr", "lr_warmup_steps", "lr_decay", "optimizer", "dead_feature_threshold", "auxk_alpha",
        "b_dec_init")} | knobs | ({"matryoshka_widths": widths} if widths else {})
    return sae_dir, {"schedule": schedule,
                     "threshold_calibration": card["training"].get("threshold_calibration")}


def _matched_adam(params, spec: dict):
    from thinksae.train.trainer import lr_factor

    m = spec["matched"]
    opt = torch.optim.Adam(params, lr=m["lr"], betas=(0.9, 0.999), eps=1e-8)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, partial(
        lr_factor, warmup=m["warmup"], total=spec["steps"], decay=m["decay"]))
    return opt, sched


def train_sparsify(spec: dict, x: torch.Tensor, out: Path) -> tuple[Path, dict]:
    from sparsify import SparseCoder, SparseCoderConfig

    n = spec["latents"]
    sae = SparseCoder(x.shape[1], SparseCoderConfig(num_latents=n, k=spec["k"]), device="cpu",
                      dtype=torch.float32)
    if spec["variant"] == "own":
        lr = 5e-3 / math.sqrt(n / 2**14)
        opt, sched = _signum(sae.parameters(), lr), None
        schedule = {"optimizer": "signum (schedule-free, momentum 0.95)", "lr": lr, "warmup": 0}
    else:
        opt, sched = _matched_adam(sae.parameters(), spec)
        schedule = {"optimizer": "adam", **spec["matched"]}
    for step, batch in enumerate(batch_stream(x, spec["batch_size"], spec["steps"], spec["seed"])):
        if step == 0:
            sae.b_dec.data = batch.mean(0)
        sae.set_decoder_norm_to_unit_norm()
        sae(batch).fvu.backward()
        sae.remove_gradient_parallel_to_decoder_directions()
        opt.step()
        opt.zero_grad()
        if sched is not None:
            sched.step()
    if sched is None:
        opt.eval()
    sae.save_to_disk(out)
    return out, {"schedule": schedule}


def train_saelens(arch: str, spec: dict, x: torch.Tensor, out: Path) -> tuple[Path, dict]:
    import importlib

    from sae_lens.config import LoggingConfig, SAETrainerConfig
    from sae_lens.training.sae_trainer import SAETrainer

    module, sae_cls, cfg_cls = SAELENS_ARCHS[arch]
    mod = importlib.import_module(module)
    sae = getattr(mod, sae_cls)(getattr(mod, cfg_cls)(
        d_in=x.shape[1], d_sae=spec["latents"], k=spec["k"], device="cpu", dtype="float32"))
    lr = 3e-4 if spec["variant"] == "own" else spec["matched"]["lr"]
    cfg = SAETrainerConfig(total_training_samples=spec["steps"] * spec["batch_size"],
                           train_batch_size_samples=spec["batch_size"], lr=lr, lr_end=lr / 10,
                           device="cpu", logger=LoggingConfig(log_to_wandb=False))
    trainer = SAETrainer(cfg=cfg, sae=sae, data_provider=batch_stream(
        x, spec["batch_size"], spec["steps"], spec["seed"]))
    schedule = {"optimizer": "adam", "lr": lr, "warmup": 0, "decay": "none",
                "dead_feature_window_steps": cfg.dead_feature_window}
    if spec["variant"] == "matched":
        trainer.optimizer, trainer.lr_scheduler = _matched_adam(sae.parameters(), spec)
        schedule.update(spec["matched"])
    trainer.fit()
    sae.save_inference_model(out)
    return out, {"schedule": schedule}


def run_worker(spec: dict) -> dict:
    """Train the SAE ``spec`` asks for; returns its directory, seconds, peak RSS and schedule."""
    from safetensors.torch import load_file

    torch.set_num_threads(spec["threads"])
    x = load_file(spec["data_file"])["train_x"]
    torch.manual_seed(spec["seed"])
    lib, arch = spec["system"].split("-", 1)
    out = Path(spec["out_dir"])
    start = time.perf_counter()
    if lib == "thinksae":
        sae_dir, info = train_thinksae(arch, spec, x, out)
    elif lib == "sparsify":
        sae_dir, info = train_sparsify(spec, x, out)
    else:
        sae_dir, info = train_saelens(arch, spec, x, out)
    seconds = time.perf_counter() - start
    return {"sae_dir": str(sae_dir), "train_s": seconds, "peak_rss_mb": peak_rss_mb(),
            "tokens": spec["steps"] * spec["batch_size"], **info}
