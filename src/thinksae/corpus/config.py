"""Options of `thinksae corpus` (the field docstrings are the CLI help)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..generation.config import GenerationConfig, generation_field
from ..models.names import DEFAULT_MODEL


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


RECIPE = ("model", "prompts", "traces", "split", "max_new_tokens", "do_sample", "temperature",
           "top_p", "seed", "system_prompt", "think_prefill", "samples", "answer_tokens")
"""Options that change what the traces in `out` are; a resumed run must keep them. Compared in
the flat form `<out>.config.json` holds (:func:`~thinksae.config.to_dict`), so a config saved
before the generation options were nested compares the same."""


def config_path(out: str | Path) -> Path:
    """Where the config of a corpus written to ``out`` is saved."""
    out = Path(out)
    return out.with_name(out.name + ".config.json")
