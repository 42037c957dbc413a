"""Generation engines for the corpus: Hugging Face (default), llama.cpp (GGUF on CPU), vLLM (GPU).

Only a trace's text is kept (``harvest`` re-tokenizes ``prompt + completion`` with the model's
Hugging Face tokenizer), so any engine that continues the same prompt will do. Every engine
takes the chat-templated prompts as the HF tokenizer's ids (no special tokens added: the
template has them) and returns the new ids in that same vocabulary, which the caller decodes with
that tokenizer: prompts, stop tokens and decoding are the same whatever the engine.

An engine is any object with ``name``, ``model_name``, ``generate(prompts, keys, budget,
stage="") -> list[Row]`` and ``auto_batch_size(max_len) -> int``. ``keys`` (the question ids)
and ``stage`` seed the sampling (see :meth:`GenerationConfig.row_seeds
<thinksae.generation.GenerationConfig.row_seeds>`), so that a resumed run samples like an
uninterrupted one. An engine reads the sampling options of the
:class:`~thinksae.generation.GenerationConfig` it is opened with; the token budget comes per call.
"""

from __future__ import annotations

from pathlib import Path

from ...errors import ThinksaeError
from ...generation import GenerationConfig
from ...models.loading import OFFLINE_ALIAS, resolve_device, resolve_dtype
from ...models.offline import fetch_offline, is_gguf
from .base import Row, installed
from .hf import AUTO_BATCH_CAP, HFEngine
from .llamacpp import LlamaCppEngine
from .vllm_engine import VLLMEngine

ENGINES = ("hf", "llama.cpp", "vllm")
"""Engine names a trace records (``--engine`` also takes ``auto``: see :func:`resolve_engine`)."""


def resolve_engine(engine: str, model: str, device: str = "auto", dtype: str = "auto") -> str:
    """``auto`` → ``llama.cpp`` for a GGUF model (or ``offline``) when llama-cpp-python is
    installed and transformers would decode in float32 on the CPU (no fast bfloat16 here, so
    the quantised weights are the fewer bytes to read), else ``hf``. Measured on the demo's 32
    traces (2-core EPYC with avx512_bf16): transformers in bfloat16 4:48, llama.cpp 5:03 — no
    gain where bfloat16 is fast; against float32 transformers (batch 16, plain linears)
    llama.cpp wrote the demo corpus 3.13x faster on a 2-core AVX2-only EPYC (one farm-bench
    pair), 4.48x on one with avx512_bf16 (two pairs) and 4.01x on that one held to AVX2 (one
    pair), whole commands: README, Engines.
    Any other name is returned as it is."""
    if engine != "auto":
        return engine
    import torch


    path = Path(model).expanduser()
    gguf = model == OFFLINE_ALIAS or (path.is_file() and is_gguf(path))
    dev = resolve_device(device)
    fp32_cpu = dev.type == "cpu" and resolve_dtype(dtype, dev) == torch.float32
    return "llama.cpp" if gguf and fp32_cpu and installed("llama_cpp") else "hf"


def check_batch_size(batch_size: int | str) -> None:
    """``batch_size`` must be a positive int or ``"auto"``."""
    if batch_size == "auto":
        return
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ThinksaeError(f"batch_size must be a positive number or auto, got {batch_size!r}")


def check_engine(engine: str, model: str) -> None:
    """Refuse, in one line and before anything loads, an unknown engine, an engine whose package
    is missing, llama.cpp with a model that is not a GGUF file, and vLLM without CUDA."""
    if engine not in ENGINES:
        raise ThinksaeError(f"unknown engine {engine!r} (use {', '.join(ENGINES)} or auto)")
    if engine == "llama.cpp":
        if not installed("llama_cpp"):
            raise ThinksaeError("--engine llama.cpp needs llama-cpp-python: "
                                "pip install 'thinksae[llamacpp]' (compiles llama.cpp, ~10 min)")
        gguf_file(model, fetch=False)
    elif engine == "vllm":
        if not installed("vllm"):
            raise ThinksaeError("--engine vllm needs vLLM: pip install 'thinksae[vllm]' (CUDA only)")
        import torch

        if not torch.cuda.is_available():
            raise ThinksaeError("--engine vllm needs a CUDA GPU; none is available here "
                                "(on CPU use --engine llama.cpp with a GGUF model)")


def gguf_file(model: str, fetch: bool = True) -> Path | None:
    """The GGUF file of a model spec (``offline`` → the assembled GGUF, fetched when ``fetch``);
    anything else than a GGUF file is refused."""

    if model == OFFLINE_ALIAS:
        return fetch_offline(progress=True) if fetch else None
    path = Path(model).expanduser()
    if not (path.is_file() and is_gguf(path)):
        raise ThinksaeError(f"--engine llama.cpp runs GGUF models only; {model} is not a GGUF file "
                            "(pass a .gguf or `offline`)")
    return path


def auto_batch_size(engine, tokenizer, prompts: list[str], new_tokens: int) -> int:
    """``batch_size: auto``: the engine's choice for sequences of the longest prompt plus
    ``new_tokens`` tokens, never more than the number of prompts."""
    longest = max((len(tokenizer(p, add_special_tokens=False)["input_ids"]) for p in prompts),
                  default=0)
    return max(1, min(engine.auto_batch_size(longest + new_tokens), len(prompts) or 1))


def open_engine(name: str, model: str, tokenizer, sampling: GenerationConfig, hf_model=None,
                device: str = "auto", dtype: str = "auto"):
    """The engine ``name`` for ``model``; ``hf`` uses the already loaded ``hf_model``."""
    check_engine(name, model)
    if name == "hf":
        return HFEngine(hf_model, tokenizer, sampling)
    if name == "llama.cpp":
        return LlamaCppEngine(gguf_file(model), tokenizer, sampling)

    return VLLMEngine.load(model, tokenizer, sampling, dtype=dtype)


__all__ = ["AUTO_BATCH_CAP", "ENGINES", "HFEngine", "Row", "auto_batch_size",
           "check_batch_size", "check_engine", "gguf_file", "installed", "open_engine",
           "resolve_engine"]
