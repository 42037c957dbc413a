"""Options of `thinksae train`: one dataclass whose field docstrings are the CLI help."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

from ..config import to_dict
from ..errors import ThinksaeError
from ..sae.config import SaeConfig

LR_DECAYS = ("none", "linear", "cosine")
B_DEC_INITS = ("mean", "geometric_median")
COMPUTE_DTYPES = ("auto", "float32", "bfloat16")
AUXK_NORMS = ("x", "residual")
REGION_NAMES = ("prompt", "think", "answer", "special")  # thinksae.corpus.Region, lower-cased

# Fields added after checkpoints were first written, with the value older runs trained with: an
# identity dict without them is read as having these values.
LATER_FIELDS = {"auxk_norm": "x"}
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
    """Adam learning rate; default 2e-4 / sqrt(num_latents / 2**14) (1e-4 at 65536 latents)."""
    lr_warmup_steps: int = 1000
    """Steps of linear learning-rate warmup: step s (counted from 1) of the first
    lr_warmup_steps uses lr * s / lr_warmup_steps, so the first step already moves (at
    lr / lr_warmup_steps) and step lr_warmup_steps runs at the full lr; 0 = no warmup."""
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
    dead_feature_threshold: int = 10_000_000
    """A latent that has not fired for this many tokens counts as dead."""
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


def default_lr(num_latents: int) -> float:
    """sparsify's width rule: 2e-4 at 16384 latents, scaled by 1 / sqrt(width)."""
    return 2e-4 / math.sqrt(num_latents / 2**14)


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
