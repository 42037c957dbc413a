"""Load a model and its tokenizer from a Hugging Face id, a local directory or a ``.gguf`` file."""

from __future__ import annotations

import contextlib
import functools
import os
import socket
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlparse

import torch

from ..env import env_flag
from ..errors import ThinksaeError
from . import dequant_cache as dq
from .names import DEFAULT_MODEL, OFFLINE_ALIAS
from .offline import fetch_offline, is_gguf
from .packed import pack_linears, packing_wanted

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@functools.cache
def cpu_has_fast_bf16() -> bool:
    """True when this CPU has native bf16 matrix instructions (avx512_bf16 or AMX)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_device(device: str = "auto") -> torch.device:
    """``auto`` → CUDA when available, else CPU."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise ThinksaeError(f"unknown device {device!r} (use cpu, cuda, cuda:N or auto)") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ThinksaeError(f"device {device!r} asked for, but CUDA is not available here")
    return dev


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """``auto`` → bfloat16 where the hardware computes it fast, else float32.

    float16 on CPU and bfloat16 on a GPU without bf16 support are refused with a clear error.
    """
    if dtype == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.bfloat16 if cpu_has_fast_bf16() else torch.float32
    if dtype not in _DTYPES:
        raise ThinksaeError(f"unknown dtype {dtype!r} (use auto, float32, bfloat16 or float16)")
    out = _DTYPES[dtype]
    if device.type == "cpu" and out is torch.float16:
        raise ThinksaeError("dtype float16 is not supported on CPU; use bfloat16 or float32")
    if device.type == "cuda" and out is torch.bfloat16 and not torch.cuda.is_bf16_supported():
        raise ThinksaeError("dtype bfloat16 is not supported on this GPU; use float16 or float32")
    return out


def dtype_name(dtype: torch.dtype) -> str:
    """``torch.bfloat16`` → ``"bfloat16"``."""
    return str(dtype).removeprefix("torch.")


def _looks_like_path(spec: str) -> bool:
    """Hub ids are ``name`` or ``org/name``; anything else is meant as a local path."""
    return spec.startswith((".", "/", "~")) or spec.count("/") > 1 or os.sep != "/" and os.sep in spec


def hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the Hugging Face hub (``$HF_ENDPOINT``) answers a TCP connection, quickly."""
    if env_flag("HF_HUB_OFFLINE", False):
        return False
    url = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        socket.create_connection((url.hostname, port), timeout=timeout).close()
    except OSError:
        return False
    return True


def _is_cached(repo_id: str) -> bool:
    from huggingface_hub import try_to_load_from_cache

    return isinstance(try_to_load_from_cache(repo_id, "config.json"), str)


def pretrained_kwargs(spec: str) -> tuple[str, dict]:
    """Where to load from and which extra kwargs (``gguf_file``, ``local_files_only``) to pass."""
    if spec == OFFLINE_ALIAS:
        spec = str(fetch_offline(progress=True))
    path = Path(spec).expanduser()
    if path.is_file():
        if path.suffix != ".gguf" or not is_gguf(path):
            raise ThinksaeError(f"{spec} is not a GGUF file (no GGUF magic); pass a .gguf or a dir")
        return str(path.parent), {"gguf_file": path.name}
    if path.is_dir():
        if not (path / "config.json").exists():
            raise ThinksaeError(f"{spec} is a directory without config.json: not a model directory")
        return str(path), {"local_files_only": True}
    if spec.endswith(".gguf") or _looks_like_path(spec):
        raise ThinksaeError(f"model not found: {spec} (no such file or directory)")
    if _is_cached(spec):
        return spec, {"local_files_only": True}
    if not hub_reachable():
        raise ThinksaeError(
            f"model {spec!r} is not in the local Hugging Face cache and the hub is unreachable; "
            "pass a local directory or a .gguf file (`thinksae models fetch-offline` builds one)"
        )
    return spec, {}


TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "tokenizer.model")
"""Files one of which a local model directory holds when it carries its tokenizer."""


def check_tokenizer_files(source: str, kwargs: dict) -> None:
    """A local model directory (not a GGUF, whose header holds the tokenizer) without any
    tokenizer file is refused before its weights load, naming the fix."""
    path = Path(source)
    if "gguf_file" in kwargs or not path.is_dir():
        return
    if not any((path / name).exists() for name in TOKENIZER_FILES):
        raise ThinksaeError(f"{source} holds no tokenizer ({', '.join(TOKENIZER_FILES)}): save the "
                            "tokenizer there, or pass --tokenizer with a directory or hub id that "
                            "has it")


@contextlib.contextmanager
def loading_bars(enabled: bool) -> Iterator[None]:
    """transformers' loading bars follow ``enabled``.

    Its weight-loading bar obeys its logging switch; the GGUF de-quantisation bar is a plain tqdm
    in its GGUF module, so it is swapped for a disabled one while loading.
    """
    if enabled:
        yield
        return
    from tqdm.auto import tqdm
    from transformers import modeling_gguf_pytorch_utils as gguf_utils
    from transformers.utils import logging as hf_logging

    was_enabled, gguf_tqdm = hf_logging.is_progress_bar_enabled(), gguf_utils.tqdm
    hf_logging.disable_progress_bar()
    gguf_utils.tqdm = functools.partial(tqdm, disable=True)
    try:
        yield
    finally:
        gguf_utils.tqdm = gguf_tqdm
        if was_enabled:
            hf_logging.enable_progress_bar()


def _from_pretrained(source: str, kwargs: dict, tok_source: str, tok_kwargs: dict, torch_dtype,
                     progress: bool, spec: str):
    """``(model, tokenizer)`` as transformers loads them; its errors as one `ThinksaeError` line."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        with loading_bars(progress):
            tok = AutoTokenizer.from_pretrained(tok_source, **tok_kwargs)
            model = AutoModelForCausalLM.from_pretrained(source, dtype=torch_dtype, **kwargs)
    except (OSError, ValueError) as e:
        raise ThinksaeError(f"cannot load model {spec}: {str(e).splitlines()[0]}") from None
    return model, tok


def _load_gguf_cached(source: str, kwargs: dict, tokenizer: str | None, torch_dtype, progress: bool,
                      spec: str):
    """Load a GGUF model through its de-quantised copy (`dequant_cache`): from the copy when it
    checks out, else from the GGUF, keeping a copy for next time. Returns ``(model, tokenizer)``."""
    sha, dtype = dq.gguf_sha256(Path(source) / kwargs["gguf_file"]), dtype_name(torch_dtype)
    entry = dq.entry_dir(sha, dtype)
    local = {"local_files_only": True}
    why = dq.problem(entry, sha, dtype)
    if why is None:
        tok_source, tok_kwargs = pretrained_kwargs(tokenizer) if tokenizer else (str(entry), local)
        try:
            return _from_pretrained(str(entry), local, tok_source, tok_kwargs, torch_dtype, progress,
                                    spec)
        except Exception as e:  # a broken copy must never stop a load the GGUF can do
            why = f"it does not load: {str(e).splitlines()[0] if str(e) else type(e).__name__}"
    if why != "missing":
        dq.warn(f"the de-quantised copy {entry} is unusable ({why}); loading the GGUF instead")
    tok_source, tok_kwargs = pretrained_kwargs(tokenizer) if tokenizer else (source, kwargs)
    model, tok = _from_pretrained(source, kwargs, tok_source, tok_kwargs, torch_dtype, progress, spec)
    if tokenizer:  # the copy holds the GGUF's own tokenizer
        from transformers import AutoTokenizer

        tok_of_gguf = AutoTokenizer.from_pretrained(source, **kwargs)
    dq.write_entry(entry, model, tok_of_gguf if tokenizer else tok, sha, dtype)
    return model, tok


def load_model(
    spec: str = DEFAULT_MODEL,
    device: str = "auto",
    dtype: str = "auto",
    tokenizer: str | None = None,
    progress: bool = True,
    dequant_cache: bool | None = None,
):
    """Load ``(model, tokenizer)`` from a hub id, a local directory, a ``.gguf`` file or ``offline``.

    ``tokenizer`` optionally loads the tokenizer from another spec (e.g. a directory holding the
    R1-Distill tokenizer). The model is put in eval mode; the tokenizer pads on the left (for
    batched generation) and has a pad token. ``trust_remote_code`` stays off. ``progress=False``
    hides transformers' loading bars (weights, GGUF de-quantisation). A GGUF is de-quantised once
    and then loaded from a verified copy in the cache (`dequant_cache`); ``dequant_cache=False``
    (or ``THINKSAE_DEQUANT_CACHE=0``) loads the GGUF itself every time. A float32 model on CPU
    gets pre-packed block linears (:mod:`.packed`; ``THINKSAE_PACKED=0``: plain ones).
    """
    dev = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, dev)
    source, kwargs = pretrained_kwargs(spec)
    if tokenizer is None:
        check_tokenizer_files(source, kwargs)
    if "gguf_file" in kwargs and dq.enabled(dequant_cache):
        model, tok = _load_gguf_cached(source, kwargs, tokenizer, torch_dtype, progress, spec)
    else:
        tok_source, tok_kwargs = pretrained_kwargs(tokenizer) if tokenizer else (source, kwargs)
        model, tok = _from_pretrained(source, kwargs, tok_source, tok_kwargs, torch_dtype, progress,
                                      spec)
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    tok.padding_side = "left"
    model.to(dev).eval()
    if packing_wanted(dev, torch_dtype):
        pack_linears(model)
    return model, tok
