"""Corpus: reasoning traces (generate or import), region segmentation and behaviour tagging."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

from ..config import save_config, to_dict
from ..errors import ThinksaeError
from ..generation import GenerationConfig, generation_field
from ..models.loading import DEFAULT_MODEL
from ..models.tokenizer import load_tokenizer
from .engines import ENGINES, check_batch_size, check_engine, open_engine, resolve_engine
from .generate import (
    SAMPLE_SEP,
    THINK_SYSTEM_PROMPT,
    all_done,
    build_prompt,
    generate_traces,
    question_id,
    question_of,
)
from .problems import (
    Problem,
    answers_match,
    builtin_problems,
    extract_numeric_answer,
    load_prompts,
    safe_arithmetic,
)
from .segment import (
    BEHAVIOUR_VOCAB,
    Region,
    TokenizedTrace,
    behaviour_names,
    control_token_ids,
    find_behaviours,
    tokenize_trace,
)
from .traces import (
    Trace,
    append_trace,
    append_traces,
    iter_traces,
    load_traces,
    read_traces,
    traces_from_records,
    write_traces,
)


@dataclass
class CorpusConfig:
    """Options of `thinksae corpus`: generate reasoning traces, or import existing ones."""

    model: str = DEFAULT_MODEL
    """Model (hub id, local dir, .gguf or `offline`) that generates; its tokenizer templates."""
    prompts: str = "builtin"
    """Questions: `builtin` (math word problems), `gsm8k[:split]`, or a JSONL/text file."""
    traces: str | None = None
    """Import these traces instead of generating: a JSONL file, datasets dir or hub dataset id."""
    split: str = "train"
    """Split of the dataset named by --traces."""
    out: str = "runs/corpus/traces.jsonl"
    """Where to write the traces (JSONL); the config goes to `<out>.config.json`."""
    limit: int | None = None
    """Use only the first N questions (or imported traces)."""
    samples: int = 1
    """Traces per question (sampled: needs --do_sample when above 1); trace ids become
    `<question id>#<n>`, so held-out splits keep all samples of a question together."""
    batch_size: int | str = "auto"
    """Questions generated together, or `auto`: on hf as many as fit half the free memory (KV
    cache + prefill from the model config), at most 64 (CPU decoding is bound by reading the
    weights, so big batches are nearly free); 32 on llama.cpp; 64 on vllm."""
    engine: str = "hf"
    """Generation engine: `hf` (transformers), `llama.cpp` (a GGUF run quantised on CPU; needs
    `pip install 'thinksae[llamacpp]'`), `vllm` (CUDA), or `auto` (llama.cpp for a GGUF when it
    is installed and transformers would run in float32 on this CPU, else hf); traces record the
    engine used in `meta.engine`."""
    generation: GenerationConfig = generation_field()
    """How to generate (flat options: --max_new_tokens, --do_sample, ...)."""
    answer_tokens: int = 0
    """When a trace stops (end of text or --max_new_tokens) still inside its thinking, close it
    with `</think>` and generate up to N more tokens of answer (budget forcing, as in s1);
    0 leaves such traces as they are."""
    device: str = "auto"
    """cpu, cuda, cuda:N or auto."""
    dtype: str = "auto"
    """Model dtype: auto, float32, bfloat16 or float16."""
    progress: bool = True
    """Show a progress bar."""


_RECIPE = ("model", "prompts", "traces", "split", "max_new_tokens", "do_sample", "temperature",
           "top_p", "seed", "system_prompt", "think_prefill", "samples", "answer_tokens")
"""Options that change what the traces in `out` are; a resumed run must keep them. Compared in
the flat form `<out>.config.json` holds (:func:`~thinksae.config.to_dict`), so a config saved
before the generation options were nested compares the same."""


def config_path(out: str | Path) -> Path:
    """Where the config of a corpus written to ``out`` is saved."""
    out = Path(out)
    return out.with_name(out.name + ".config.json")


def _check_resumable(cfg: CorpusConfig) -> None:
    path = config_path(cfg.out)
    if not (Path(cfg.out).exists() and path.exists()):
        return
    try:
        old = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return
    new = to_dict(cfg)
    changed = [k for k in _RECIPE if k in old and old[k] != new[k]]
    if changed:
        raise ThinksaeError(
            f"{cfg.out} holds traces made with other {', '.join(changed)} "
            f"({', '.join(f'{old[k]!r}' for k in changed)}); use another --out or the same settings"
        )


def repeat_problems(problems: list[Problem], samples: int, do_sample: bool) -> list[Problem]:
    """Each problem ``samples`` times, as ``<id>#0``, ``<id>#1``, ... (question-major order);
    the problems as they are for one sample."""
    if samples < 1:
        raise ThinksaeError(f"samples must be at least 1, got {samples}")
    if samples == 1:
        return problems
    if not do_sample:
        raise ThinksaeError(f"samples {samples} needs --do_sample: greedy decoding would write "
                            "the same trace each time")
    return [dataclasses.replace(p, id=f"{p.id}{SAMPLE_SEP}{n}") for p in problems
            for n in range(samples)]


def build_corpus(cfg: CorpusConfig, model=None, tokenizer=None) -> Path:
    """Generate traces for ``cfg.prompts`` with ``cfg.model`` (resuming into ``cfg.out``) or
    import ``cfg.traces``; writes ``cfg.out`` and ``<out>.config.json``, returns ``cfg.out``."""
    out = Path(cfg.out)
    if cfg.traces:
        try:
            traces = load_traces(cfg.traces, tokenizer, split=cfg.split, limit=cfg.limit)
        except ThinksaeError as e:
            if tokenizer is not None or "chat template" not in str(e):
                raise
            tokenizer = load_tokenizer(cfg.model)  # the records need templating after all
            traces = load_traces(cfg.traces, tokenizer, split=cfg.split, limit=cfg.limit)
        if not traces:
            raise ThinksaeError(f"{cfg.traces} holds no traces")
        write_traces(traces, out)
        save_config(cfg, config_path(out))
        return out

    if cfg.answer_tokens < 0:
        raise ThinksaeError(f"answer_tokens must be >= 0, got {cfg.answer_tokens}")
    gen = cfg.generation
    gen.check()
    check_batch_size(cfg.batch_size)
    _check_resumable(cfg)
    problems = repeat_problems(load_prompts(cfg.prompts, cfg.limit), cfg.samples, gen.do_sample)
    if all_done(out, [p.id for p in problems]):  # e.g. kept traces copied in: no engine needed
        print(f"thinksae: all {len(problems)} traces are already in {out}; nothing to generate",
              flush=True)
        save_config(cfg, config_path(out))
        return out
    engine_name = resolve_engine(cfg.engine, cfg.model, cfg.device, cfg.dtype)
    check_engine(engine_name, cfg.model)
    if engine_name != "hf":
        tokenizer = tokenizer or load_tokenizer(cfg.model)
    elif model is None or tokenizer is None:
        from ..models import load_model

        model, tokenizer = load_model(cfg.model, device=cfg.device, dtype=cfg.dtype,
                                      progress=cfg.progress)
    if engine_name != cfg.engine:
        print(f"thinksae: corpus engine auto: {engine_name}", flush=True)
    engine = open_engine(engine_name, cfg.model, tokenizer, gen, model, dtype=cfg.dtype)
    save_config(cfg, config_path(out))
    try:
        generate_traces(model, tokenizer, problems, out, gen, batch_size=cfg.batch_size,
                        progress=cfg.progress, answer_tokens=cfg.answer_tokens, engine=engine)
    finally:
        getattr(engine, "close", lambda: None)()
    return out


__all__ = [
    "BEHAVIOUR_VOCAB",
    "SAMPLE_SEP",
    "THINK_SYSTEM_PROMPT",
    "CorpusConfig",
    "ENGINES",
    "GenerationConfig",
    "Problem",
    "Region",
    "TokenizedTrace",
    "Trace",
    "answers_match",
    "append_trace",
    "append_traces",
    "behaviour_names",
    "build_corpus",
    "build_prompt",
    "builtin_problems",
    "config_path",
    "control_token_ids",
    "extract_numeric_answer",
    "find_behaviours",
    "generate_traces",
    "iter_traces",
    "load_prompts",
    "load_traces",
    "question_id",
    "question_of",
    "read_traces",
    "repeat_problems",
    "safe_arithmetic",
    "tokenize_trace",
    "traces_from_records",
    "write_traces",
]
