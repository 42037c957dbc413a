"""SAE files: sparsify layout (native), SAELens import/export, and the report card.

sparsify layout — one directory per hookpoint:
  cfg.json          {"activation": "topk", "expansion_factor", "normalize_decoder", "num_latents",
                     "k", "multi_topk", "skip_connection", "transcode", "d_in"}
  sae.safetensors   encoder.weight [n, d], encoder.bias [n], W_dec [n, d], b_dec [d]
  Our other architectures use the same layout with their name as ``activation`` and their extra
  tensors beside (batchtopk and matryoshka_batchtopk: ``threshold`` [], jumprelu: ``threshold``
  [n]); matryoshka_batchtopk's cfg.json adds ``matryoshka_widths`` (a list of ints). sparsify
  reads only topk.
SAELens (v6) TopK or JumpReLU — cfg.json {"architecture": "topk" | "jumprelu", "d_in", "d_sae",
  "k" (topk), …} and sae_weights.safetensors with W_enc [d, n], b_enc [n], W_dec [n, d], b_dec [d]
  (+ threshold [n] for jumprelu). BatchTopK and Matryoshka SAEs are exported as JumpReLU with θ on
  every latent, as SAELens itself saves them for inference; a Matryoshka export also records
  SAELens' own ``metadata.training_architecture`` ("matryoshka_batchtopk") and
  ``training_architecture_details`` {k, matryoshka_widths}, and such a file (one θ for all
  latents) reads back as a Matryoshka SAE; any other JumpReLU reads as JumpReLU (no prefixes).
thinksae.json (report card) sits beside cfg.json: hyperparameters, data, metrics.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import Tensor

from .. import atomic
from ..errors import ThinksaeError
from .base import SparseAutoencoder
from .config import SaeConfig
from .registry import ARCHITECTURES, sae_class

SPARSIFY_CFG, SPARSIFY_WEIGHTS = "cfg.json", "sae.safetensors"
SAELENS_WEIGHTS = "sae_weights.safetensors"
REPORT_CARD = "thinksae.json"

# Keys sparsify has written over its versions ("signed" in old files); anything else is refused.
_SPARSIFY_KEYS = {"activation", "expansion_factor", "normalize_decoder", "num_latents", "k",
                  "multi_topk", "skip_connection", "transcode", "d_in", "signed",
                  "matryoshka_widths"}
_SAELENS_KEYS = {"architecture", "d_in", "d_sae", "k", "dtype", "device", "apply_b_dec_to_input",
                 "normalize_activations", "reshape_activations", "rescale_acts_by_decoder_norm",
                 "metadata", "use_sparse_activations"}
SAELENS_ARCHITECTURES = {"topk": "topk", "batchtopk": "jumprelu", "jumprelu": "jumprelu",
                         "matryoshka_batchtopk": "jumprelu"}
"""Our architecture → the SAELens inference architecture it is written as."""
MATRYOSHKA = "matryoshka_batchtopk"


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise ThinksaeError(f"no {path.name} in {path.parent}") from None
    except (OSError, json.JSONDecodeError) as e:
        raise ThinksaeError(f"cannot read {path}: {e}") from None
    if not isinstance(data, dict):
        raise ThinksaeError(f"{path} does not hold a JSON object")
    return data


def _check_keys(path: Path, data: dict, known: set[str], required: tuple[str, ...]) -> None:
    unknown = sorted(set(data) - known)
    if unknown:
        raise ThinksaeError(f"{path}: unknown keys {unknown}")
    missing = [k for k in required if k not in data]
    if missing:
        raise ThinksaeError(f"{path}: missing keys {missing}")


def _read_tensors(path: Path, expected: dict[str, tuple[int, ...]]) -> dict[str, Tensor]:
    """Exactly the ``expected`` tensors with their shapes, or a one-line error."""
    if not path.is_file():
        raise ThinksaeError(f"no {path.name} in {path.parent}")
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            names = set(f.keys())
            if names != set(expected):
                raise ThinksaeError(
                    f"{path} holds tensors {sorted(names)}, expected {sorted(expected)}")
            tensors = {name: f.get_tensor(name) for name in expected}
    except (SafetensorError, OSError, RuntimeError, ValueError) as e:
        raise ThinksaeError(f"cannot read {path} (truncated or corrupt safetensors?): {e}") from None
    for name, shape in expected.items():
        if tuple(tensors[name].shape) != shape:
            raise ThinksaeError(f"{path}: {name} has shape {tuple(tensors[name].shape)}, "
                                f"expected {shape} from cfg.json")
        if not bool(torch.isfinite(tensors[name].float()).all()):
            raise ThinksaeError(f"{path}: {name} holds NaN or inf")
    return tensors


def _int(path: Path, key: str, value: Any, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ThinksaeError(f"{path}: {key} must be an integer >= {minimum} (got {value!r})")
    return value


def _extra_tensors(architecture: str, n: int) -> dict[str, tuple[int, ...]]:
    """Tensors an architecture keeps beside encoder, W_dec and b_dec (its thresholds)."""
    return sae_class(architecture).extra_tensors(n)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _widths_text(path: Path, value: Any) -> str:
    """A cfg.json list of prefix widths as SaeConfig's comma-separated text."""
    if not isinstance(value, list) or not all(_is_int(w) for w in value):
        raise ThinksaeError(f"{path}: matryoshka_widths must be a list of integers (got {value!r})")
    return ",".join(str(w) for w in value)


def _check_architecture(path: Path, cfg: SaeConfig, n: int) -> None:
    """The architecture's own checks of ``cfg``, the file named in the error."""
    try:
        sae_class(cfg.architecture).check_config(cfg, n)
    except ThinksaeError as e:
        raise ThinksaeError(f"{path}: {e}") from None


def _build(d_in: int, cfg: SaeConfig, tensors: dict[str, Tensor], device,
           dtype) -> SparseAutoencoder:
    dtype = dtype or tensors["encoder.weight"].dtype
    with torch.device("meta"):
        sae = sae_class(cfg.architecture)(d_in, cfg, dtype=dtype)
    sae.load_state_dict({k: v.to(dtype) for k, v in tensors.items()}, assign=True)
    return sae.to(device)


# ---------------------------------------------------------------------- sparsify (native)

def _architecture(cfg_path: Path, name: Any, key: str) -> str:
    if name not in ARCHITECTURES:
        raise ThinksaeError(f"{cfg_path}: {key} {name!r} is not supported (known: "
                            f"{', '.join(sorted(ARCHITECTURES))})")
    return name


def load_sparsify(path: str | Path, device: str | torch.device = "cpu",
                  dtype: torch.dtype | None = None) -> SparseAutoencoder:
    """An SAE from a sparsify-layout directory; dtype defaults to that of the file."""
    path = Path(path)
    cfg_path = path / SPARSIFY_CFG
    data = _read_json(cfg_path)
    arch = _architecture(cfg_path, data.get("activation", "topk"), "activation")
    _check_keys(cfg_path, data, _SPARSIFY_KEYS, ("d_in",) if arch == "jumprelu" else ("d_in", "k"))
    for flag in ("skip_connection", "transcode"):
        if data.get(flag):
            raise ThinksaeError(f"{cfg_path}: {flag} SAEs are not supported")
    d_in = _int(cfg_path, "d_in", data["d_in"])
    k = _int(cfg_path, "k", data.get("k", 0), 0 if arch == "jumprelu" else 1)
    cfg = SaeConfig(expansion_factor=_int(cfg_path, "expansion_factor",
                                          data.get("expansion_factor", 32)),
                    num_latents=_int(cfg_path, "num_latents", data.get("num_latents", 0), 0),
                    k=k, normalize_decoder=bool(data.get("normalize_decoder", True)),
                    architecture=arch,
                    matryoshka_widths=_widths_text(cfg_path, data.get("matryoshka_widths", [])))
    n = cfg.latents_for(d_in)
    if k > n:
        raise ThinksaeError(f"{cfg_path}: k = {k} is more than the {n} latents")
    _check_architecture(cfg_path, cfg, n)
    tensors = _read_tensors(path / SPARSIFY_WEIGHTS, {
        "encoder.weight": (n, d_in), "encoder.bias": (n,), "W_dec": (n, d_in), "b_dec": (d_in,),
        **_extra_tensors(arch, n)})
    return _build(d_in, cfg, tensors, device, dtype)


def sparsify_cfg(sae: SparseAutoencoder) -> dict[str, Any]:
    """cfg.json as sparsify writes it (``activation`` = the architecture; Matryoshka adds its
    ``matryoshka_widths`` list)."""
    cfg = {"activation": sae.architecture, "expansion_factor": sae.cfg.expansion_factor,
           "normalize_decoder": sae.cfg.normalize_decoder, "num_latents": sae.num_latents,
           "k": sae.cfg.k, "multi_topk": False, "skip_connection": False, "transcode": False,
           "d_in": sae.d_in}
    if sae.cfg.matryoshka_widths:
        cfg["matryoshka_widths"] = list(sae.cfg.prefix_widths())
    return cfg


def save_sparsify(sae: SparseAutoencoder, path: str | Path) -> None:
    """Write cfg.json and sae.safetensors into ``path`` (each file atomically)."""
    path = Path(path)
    state = {k: v.detach().contiguous().cpu() for k, v in sae.state_dict().items()}
    with atomic.atomic_path(path / SPARSIFY_WEIGHTS) as tmp:
        save_file(state, str(tmp))
    atomic.write_json(path / SPARSIFY_CFG, sparsify_cfg(sae))


# ---------------------------------------------------------------------- SAELens

def _saelens_matryoshka(data: dict[str, Any], threshold: Tensor, n: int) -> tuple[int, str] | None:
    """``(k, widths)`` when a SAELens JumpReLU file is a Matryoshka BatchTopK SAE saved for
    inference: SAELens' ``metadata.training_architecture`` says so, its
    ``training_architecture_details`` hold an integral k and widths ending at ``n``, and one θ
    serves every latent. None otherwise (it then loads as the JumpReLU it is)."""
    meta = data.get("metadata")
    if not isinstance(meta, dict) or meta.get("training_architecture") != MATRYOSHKA:
        return None
    details = meta.get("training_architecture_details")
    if not isinstance(details, dict):
        return None
    k, widths = details.get("k"), details.get("matryoshka_widths")
    if isinstance(k, float) and k.is_integer():  # SAELens' BatchTopK k is a float
        k = int(k)
    if not (_is_int(k) and isinstance(widths, list) and all(_is_int(w) for w in widths)):
        return None
    text = ",".join(str(w) for w in widths)
    try:
        sae_class(MATRYOSHKA).check_config(
            SaeConfig(num_latents=n, k=k, matryoshka_widths=text, architecture=MATRYOSHKA), n)
    except ThinksaeError:
        return None
    if not bool((threshold == threshold[0]).all()):
        return None
    return k, text


def load_saelens(path: str | Path, device: str | torch.device = "cpu",
                 dtype: torch.dtype | None = None) -> SparseAutoencoder:
    """A TopK or JumpReLU SAE from a SAELens directory, converted to our parametrisation.

    ``apply_b_dec_to_input = false`` is folded into the encoder bias (b_enc + W_enc b_dec), and
    ``rescale_acts_by_decoder_norm`` (TopK only) into the weights (encoder rows times, decoder
    rows over, the decoder norms), so encodes and decodes are unchanged. A JumpReLU that SAELens
    (or :func:`save_saelens`) saved from a Matryoshka BatchTopK SAE with one θ comes back as that
    Matryoshka SAE (see :func:`_saelens_matryoshka`); the encodes are the same either way.
    """
    path = Path(path)
    cfg_path = path / SPARSIFY_CFG
    data = _read_json(cfg_path)
    arch = data.get("architecture")
    if arch not in ("topk", "jumprelu"):
        raise ThinksaeError(
            f"{cfg_path}: architecture {arch!r} is not supported (only topk and jumprelu; a "
            "SAELens training checkpoint of batchtopk or matryoshka_batchtopk loads once saved "
            "for inference with SAE.save_inference_model, which writes jumprelu)")
    _check_keys(cfg_path, data, _SAELENS_KEYS, ("architecture", "d_in", "d_sae"))
    for key, ok in (("normalize_activations", "none"), ("reshape_activations", "none")):
        if data.get(key, ok) != ok:
            raise ThinksaeError(f"{cfg_path}: {key} = {data[key]!r} is not supported (only 'none')")
    d_in, n = (_int(cfg_path, key, data[key]) for key in ("d_in", "d_sae"))
    k = _int(cfg_path, "k", data.get("k"), 1) if arch == "topk" else 0
    if k > n:
        raise ThinksaeError(f"{cfg_path}: k = {k} is more than the {n} latents")
    rescale = data.get("rescale_acts_by_decoder_norm", False)
    if rescale and arch != "topk":
        raise ThinksaeError(f"{cfg_path}: rescale_acts_by_decoder_norm is supported for topk only")
    t = _read_tensors(path / SAELENS_WEIGHTS, {
        "W_enc": (d_in, n), "b_enc": (n,), "W_dec": (n, d_in), "b_dec": (d_in,),
        **_extra_tensors(arch, n)})
    w_enc, b_enc, w_dec = t["W_enc"].T.float(), t["b_enc"].float(), t["W_dec"].float()
    if not data.get("apply_b_dec_to_input", True):
        b_enc = b_enc + w_enc @ t["b_dec"].float()
    if rescale:
        norms = w_dec.norm(dim=1)
        w_enc, b_enc, w_dec = w_enc * norms[:, None], b_enc * norms, w_dec / norms[:, None]
    unit = bool(torch.allclose(w_dec.norm(dim=1), torch.ones(n), atol=1e-3))
    cfg = SaeConfig(expansion_factor=max(n // d_in, 1), num_latents=n, k=k, normalize_decoder=unit,
                    architecture=arch)
    tensors = {"encoder.weight": w_enc.contiguous(), "encoder.bias": b_enc, "W_dec": w_dec,
               "b_dec": t["b_dec"].float()}
    if arch == "jumprelu":
        tensors["threshold"] = t["threshold"].float()
        nested = _saelens_matryoshka(data, tensors["threshold"], n)
        if nested is not None:
            cfg = replace(cfg, architecture=MATRYOSHKA, k=nested[0], matryoshka_widths=nested[1])
            tensors["threshold"] = tensors["threshold"][0].clone()
    return _build(d_in, cfg, tensors, device, dtype or t["W_enc"].dtype)


def save_saelens(sae: SparseAutoencoder, path: str | Path, hook_name: str = "",
                 model_name: str = "") -> None:
    """Write ``sae`` as a SAELens SAE (cfg.json + sae_weights.safetensors): TopK as topk,
    JumpReLU, BatchTopK and Matryoshka BatchTopK as jumprelu (the batch architectures' θ on every
    latent; Matryoshka's k and widths in SAELens' ``training_architecture_details``). An
    architecture SAELens has no inference form for is refused."""
    path = Path(path)
    arch = SAELENS_ARCHITECTURES.get(sae.architecture)
    if arch is None:
        raise ThinksaeError(f"the SAELens format cannot hold a {sae.architecture} SAE (it holds "
                            f"{', '.join(SAELENS_ARCHITECTURES)}); convert --to sparsify instead")
    state = {"W_enc": sae.encoder.weight.detach().T.contiguous().cpu(),
             "b_enc": sae.encoder.bias.detach().cpu(), "W_dec": sae.W_dec.detach().cpu(),
             "b_dec": sae.b_dec.detach().cpu()}
    cfg: dict[str, Any] = {"architecture": arch, "d_in": sae.d_in, "d_sae": sae.num_latents}
    if arch == "topk":
        cfg["k"] = sae.cfg.k
    else:
        theta = sae.threshold.detach().float().clamp_min(0).cpu()
        state["threshold"] = theta.expand(sae.num_latents).to(sae.dtype).contiguous()
    cfg.update({"dtype": str(sae.dtype).removeprefix("torch."), "device": "cpu",
                "apply_b_dec_to_input": True, "normalize_activations": "none",
                "reshape_activations": "none", "rescale_acts_by_decoder_norm": False,
                "metadata": {"model_name": model_name, "hook_name": hook_name,
                             "sae_lens_training_version": None}})
    if sae.architecture == MATRYOSHKA:
        cfg["metadata"].update(training_architecture=MATRYOSHKA, training_architecture_details={
            "k": sae.cfg.k, "matryoshka_widths": list(sae.cfg.prefix_widths())})
    with atomic.atomic_path(path / SAELENS_WEIGHTS) as tmp:
        save_file(state, str(tmp))
    atomic.write_json(path / SPARSIFY_CFG, cfg)


# ---------------------------------------------------------------------- any format

def detect_format(path: Path) -> str | None:
    """``sparsify`` or ``saelens`` for an SAE directory, None if it holds neither."""
    if not (path / SPARSIFY_CFG).is_file():
        return None
    if (path / SPARSIFY_WEIGHTS).is_file():
        return "sparsify"
    if (path / SAELENS_WEIGHTS).is_file():
        return "saelens"
    return None


def resolve_sae_dir(path: str | Path, hookpoint: str | None = None) -> Path:
    """The SAE directory meant by ``path``: itself, ``path/hookpoint``, or its only SAE child."""
    path = Path(path)
    if hookpoint and detect_format(path / hookpoint):
        return path / hookpoint
    if detect_format(path):
        return path
    if not path.is_dir():
        raise ThinksaeError(f"no SAE at {path}")
    children = sorted(p for p in path.iterdir() if p.is_dir() and detect_format(p))
    if len(children) == 1 and not hookpoint:
        return children[0]
    names = ", ".join(p.name for p in children) or "none"
    want = f" for hookpoint {hookpoint}" if hookpoint else ""
    raise ThinksaeError(f"no single SAE directory{want} in {path} (SAE directories: {names})")


def load_sae(path: str | Path, hookpoint: str | None = None, device: str | torch.device = "cpu",
             dtype: torch.dtype | None = None) -> SparseAutoencoder:
    """Load an SAE in sparsify or SAELens layout (a run directory + ``hookpoint`` works too)."""
    sae_dir = resolve_sae_dir(path, hookpoint)
    if detect_format(sae_dir) == "saelens":
        return load_saelens(sae_dir, device, dtype)
    return load_sparsify(sae_dir, device, dtype)


# ---------------------------------------------------------------------- report card

def read_report_card(sae_dir: str | Path) -> dict[str, Any]:
    """thinksae.json beside an SAE ({} when there is none, e.g. an SAE from elsewhere)."""
    path = Path(sae_dir) / REPORT_CARD
    return _read_json(path) if path.exists() else {}


def write_report_card(sae_dir: str | Path, card: dict[str, Any]) -> None:
    """Write thinksae.json atomically."""
    atomic.write_json(Path(sae_dir) / REPORT_CARD, card)


def update_report_card(sae_dir: str | Path, section: str, values: dict[str, Any]) -> None:
    """Replace one top-level section of the report card (e.g. ``eval``), keeping the rest."""
    card = read_report_card(sae_dir)
    card[section] = values
    write_report_card(sae_dir, card)
