"""Options of `thinksae train`: one dataclass whose field docstrings are the CLI help."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import NamedTuple

from ..config import to_dict
from ..errors import ThinksaeError
from ..sae.config import SaeConfig

LR_DECAYS = ("none", "linear", "cosine")
B_DEC_INITS = ("mean", "geometric_median")
COMPUTE_DTYPES = ("auto", "float32", "bfloat16")
AUXK_NORMS = ("x", "residual")
REGION_NAMES = ("prompt", "think", "answer", "special")  # thinksae.corpus.Region, lower-cased

AUTO = "auto"
WARMUP_FRACTION = 0.05
"""lr_warmup_steps auto: this share of the run's steps (bench/quality.py, docs/performance.md)."""
WARMUP_MAX_STEPS = 1000
"""lr_warmup_steps auto: at most this many steps (sparsify's fixed warmup) on long runs."""
DEAD_FRACTION = 0.1
"""dead_feature_threshold auto: this share of the run's tokens (at most DEAD_MAX_TOKENS)."""
DEAD_MAX_TOKENS = 10_000_000

# Fields added after checkpoints were first written, with the value older runs trained with: an
# identity dict without them is read as having these values.
LATER_FIELDS = {"auxk_norm": "x", "drop_sinks": False, "sink_norm_multiple": 10.0,
                "calibrate_threshold": False}
LATER_SAE_FIELDS = {"architecture": "topk", "matryoshka_widths": ""}

# Fields that say how to run or report, not what is trained: a checkpoint made with other values
# of these is still continued.
PROGRESS_FIELDS = ("out", "device", "log_every", "save_every", "wandb", "tensorboard", "resume",
                   "progress")


@dataclass
class TrainConfig:
    """Options of `thinksae train`."""

    store: str | None = None
    """Activation store directory of one hookpoint (from `thinksae harvest`). Or give --model,
    --corpus and --hookpoint to capture activations on the fly, without a store."""
    model: str | None = None
    """On the fly: model (Hugging Face id, local directory, .gguf file or `offline`)."""
    corpus: str | None = None
    """On the fly: trace corpus (JSONL written by `thinksae corpus`)."""
    hookpoint: str | None = None
    """Hookpoint to train on (e.g. layers.10). With --store it defaults to the store's."""
    out: str = "runs/sae"
    """Run directory; the SAE is saved in {out}/{hookpoint}/ (sparsify layout + thinksae.json)."""
    sae: SaeConfig = field(default_factory=SaeConfig)
    """SAE architecture (--architecture topk, batchtopk or matryoshka_batchtopk with
    --matryoshka_widths), expansion factor or number of latents, k, decoder normalisation."""
    batch_size: int = 4096
    """Tokens per optimiser step (the global batch, split across ranks under torchrun)."""
    lr: float | None = None
    """Adam learning rate; default 5e-4 / sqrt(num_latents / 2**14) (1e-3 at 4096 latents,
    2.5e-4 at 65536): sparsify's width rule at 2.5 times its base, the best of bench/quality.py's
    sweep at 1024 and 4096 latents."""
    lr_warmup_steps: int | str = "auto"
    """Steps of linear learning-rate warmup: step s (counted from 1) of the first
    lr_warmup_steps uses lr * s / lr_warmup_steps, so the first step already moves (at
    lr / lr_warmup_steps) and step lr_warmup_steps runs at the full lr; 0 = no warmup; auto =
    0.05 x the run's steps, at most 1000. A number must be below the run's steps."""
    lr_decay: str = "none"
    """Learning-rate decay to 0 over the steps after warmup: none, linear or cosine."""
    auxk_alpha: float = 1 / 32
    """Weight of the AuxK loss that revives dead latents (0 turns it off)."""
    auxk_norm: str = "x"
    """What the AuxK squared error is divided by, with e = x - x_hat the main residual and e_hat
    its reconstruction from the top aux_k dead latents: x = sum||e - e_hat||^2 / sum||x -
    mean(x)||^2 (sparsify's choice; the default, so that runs and checkpoints made before this
    option stay the same), or residual = sum||e - e_hat||^2 / sum||e - mean(e)||^2 (Gao et al.
    2024, openai/sparse_autoencoder; about 1/FVU times stronger at the same auxk_alpha)."""
    aux_k: int | None = None
    """Dead latents the AuxK loss reconstructs the residual with (default d_in // 2)."""
    dead_feature_threshold: int | str = "auto"
    """A latent that has not fired for this many tokens counts as dead (AuxK then trains it);
    auto = 0.1 x the run's tokens, at most 10,000,000 (sparsify's value)."""
    normalize_inputs: bool = False
    """Multiply activations by one constant so that E||x||^2 = d_in (estimated on the first
    batch) while training, so hyperparameters carry across models. The saved SAE has the constant
    folded into its weights and works on raw activations."""
    b_dec_init: str = "mean"
    """Initialise the decoder bias from the first batch: mean or geometric_median."""
    max_tokens: int | None = None
    """Stop after this many training tokens (default: all of the data, --epochs times)."""
    epochs: int = 1
    """Passes over the data (each pass reshuffled)."""
    seed: int = 0
    """Seed for the SAE's initialisation and the data order."""
    dtype: str = "auto"
    """SAE compute dtype: auto (bfloat16 on CUDA and on CPUs with avx512_bf16), float32 or
    bfloat16. Weights and optimiser state stay float32."""
    device: str = "auto"
    """cpu, cuda, cuda:N or auto. Under torchrun each rank uses cuda:LOCAL_RANK."""
    log_every: int = 50
    """Log FVU, L0, dead fraction, AuxK, lr and tokens/s every N steps (console and
    metrics.jsonl)."""
    save_every: int = 1000
    """Write a resumable checkpoint every N steps."""
    wandb: bool = False
    """Also log to Weights & Biases (only if wandb is installed)."""
    tensorboard: bool = False
    """Also log to TensorBoard (only if tensorboard is installed)."""
    resume: bool = True
    """Continue from the checkpoint in the output directory when its config matches; with
    --noresume start afresh and overwrite."""
    progress: bool = True
    """Show a progress bar."""
    regions: str | None = None
    """Train only on tokens of these regions (comma-separated, of prompt, think, answer,
    special; e.g. think,answer), from a store or on the fly."""
    drop_sinks: bool = True
    """Store only: leave attention-sink rows out of training (thinksae.sinks: special tokens, and
    tokens whose norm is above sink_norm_multiple x the median norm of the store's non-special
    tokens, the store's own rule); counted in the report card. --nodrop_sinks trains on every row."""
    sink_norm_multiple: float | None = 10.0
    """The sink rule's norm multiple (dictionary_learning's max_activation_norm_multiple; given
    with no value, or null in a config: special tokens only)."""
    calibrate_threshold: bool = True
    """batchtopk: after training, raise the inference threshold to the one that gives the
    training tokens (sinks left out, up to 65,536 of them) k active latents on average where
    that is higher than the running estimate kept during training (thinksae.train.calibrate);
    --nocalibrate_threshold keeps the running estimate."""
    holdout: float = 0.0
    """Store only: share of the traces left out of training (whole questions, chosen by a hash
    of their ids), for `thinksae eval --split heldout`."""
    model_dtype: str = "auto"
    """On the fly: dtype of the model forward (auto, float32, bfloat16)."""
    max_length: int = 2048
    """On the fly: tokens kept per trace."""
    model_batch_size: int = 8
    """On the fly: traces per model forward."""
    shuffle_tokens: int = 65536
    """On the fly: tokens shuffled together (rounded up to whole batches); more mixes better
    but takes shuffle_tokens x d_in x 4 bytes of memory."""


DEFAULT_LR_AT_16K = 5e-4
"""The default lr at 16384 latents (sparsify's rule has 2e-4; bench/quality.py on the demo store,
k 32, 352 steps: best at 2e-3 for 1024 latents and 1e-3 for 4096, both this rule)."""


def default_lr(num_latents: int) -> float:
    """sparsify's width rule, 1 / sqrt(width), from DEFAULT_LR_AT_16K at 16384 latents."""
    return DEFAULT_LR_AT_16K / math.sqrt(num_latents / 2**14)


class Schedule(NamedTuple):
    """The step counts a run uses, with ``auto`` resolved against its length."""

    warmup_steps: int
    dead_feature_threshold: int
    """In tokens."""


def resolve_schedule(cfg: TrainConfig, total_steps: int) -> Schedule:
    """``auto`` warmup = round(WARMUP_FRACTION · total_steps), at most WARMUP_MAX_STEPS; ``auto``
    dead threshold = DEAD_FRACTION · total_steps · batch_size tokens, at most DEAD_MAX_TOKENS
    (at least one batch). A warmup given as a number must be below ``total_steps``."""
    if cfg.lr_warmup_steps == AUTO:
        warmup = min(round(WARMUP_FRACTION * total_steps), WARMUP_MAX_STEPS)
    else:
        warmup = int(cfg.lr_warmup_steps)
        if warmup and warmup >= total_steps:
            raise ThinksaeError(
                f"lr_warmup_steps {warmup} does not fit this run of {total_steps} steps (the lr "
                "would never reach its value); use --lr_warmup_steps auto or fewer steps")
    if cfg.dead_feature_threshold == AUTO:
        dead = max(min(int(DEAD_FRACTION * total_steps * cfg.batch_size), DEAD_MAX_TOKENS),
                   cfg.batch_size)
    else:
        dead = int(cfg.dead_feature_threshold)
    return Schedule(warmup, dead)


def region_list(regions: str | None) -> list[str] | None:
    """``"think, answer"`` → ``["think", "answer"]``; None when no regions are asked for."""
    if regions is None:
        return None
    return [r.strip() for r in regions.split(",") if r.strip()]


def identity(cfg: TrainConfig) -> dict:
    """The fields that define what is trained (everything but how it is run and reported)."""
    return {k: v for k, v in to_dict(cfg).items() if k not in PROGRESS_FIELDS}


def with_later_fields(old: dict) -> dict:
    """An identity dict saved before the LATER_FIELDS existed, with their old values filled in."""
    out = {**LATER_FIELDS, **old}
    if isinstance(out.get("sae"), dict):
        out["sae"] = {**LATER_SAE_FIELDS, **out["sae"]}
    return out


def differing_fields(old: dict, new: dict) -> list[str]:
    """Dotted names of the fields whose values differ between two identity dicts."""
    out = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out += [f"{key}.{sub}" for sub in differing_fields(a, b)]
        elif a != b:
            out.append(f"{key}: {a!r} -> {b!r}")
    return out


def config_from_dict(data: dict) -> TrainConfig:
    """Rebuild a TrainConfig from :func:`to_dict` output (nested ``sae`` included)."""
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ThinksaeError(f"unknown train config keys {unknown}")
    data = dict(data)
    if isinstance(data.get("sae"), dict):
        data["sae"] = SaeConfig(**data["sae"])
    return TrainConfig(**data)
