"""Options of `thinksae eval` (the field docstrings are the CLI help)."""

from __future__ import annotations

from dataclasses import dataclass

from simple_parsing import field


@dataclass
class EvalConfig:
    """Options of `thinksae eval`."""

    run: str | None = None
    """Run directory written by `thinksae run`: the SAE and store come from it
    unless given, and the output goes to <run>/cli/eval unless --out is given."""
    sae: str | None = None
    """SAE directory (sparsify or SAELens layout), or a training run directory with --hookpoint."""
    hookpoint: str | None = None
    """Hookpoint the SAE must read (default: the SAE's own, from thinksae.json or its directory
    name, e.g. layers.10 or layers.10.mlp)."""
    store: str | None = None
    """Activation store of that hookpoint: reconstruction metrics on its tokens. With --model, the
    model is rerun on the store's token ids for the spliced losses too."""
    model: str | None = None
    """Model (hub id, local directory, .gguf or `offline`) for the spliced losses; needs --corpus
    or --store."""
    corpus: str | None = None
    """Trace corpus (JSONL from `thinksae corpus`), tokenised with the model's tokenizer."""
    tokenizer: str | None = None
    """Load the model's tokenizer from another spec (default: the model's own)."""
    out: str | None = field(default=None, metadata={"out_name": "eval.json"})
    """Result JSON (default: eval.json in the SAE directory). The latent-frequency histogram is
    written beside it as <name>.latent_frequency.png."""
    split: str = "all"
    """Traces to evaluate on: all, heldout (those the SAE's training left out with --holdout) or
    train (the others). heldout/train need the data the SAE was trained on."""
    splice_regions: str | None = None
    """With --model: splice (and ablate) only at tokens of these regions, comma-separated, e.g.
    prompt,think,answer to leave the special tokens (which an SAE trained with --regions never
    saw) as they are; default every token."""
    max_tokens: int | None = None
    """Evaluate on at most this many tokens (default: all)."""
    max_length: int = 2048
    """Corpus: tokens kept per trace."""
    batch_size: int = 4
    """Documents per model forward."""
    chunk_tokens: int = 8192
    """Tokens per SAE batch when reading a store without a model."""
    mean_ablation: bool = True
    """Also report the mean-ablated CE: the hookpoint output replaced by its mean over exactly
    the tokens replaced (those of --splice_regions; costs a first pass that stops there)."""
    device: str = "auto"
    """cpu, cuda, cuda:N or auto."""
    dtype: str = "auto"
    """Model dtype: auto (bf16 where fast), float32, bfloat16 or float16. The SAE runs in float32."""
    update_card: bool = True
    """Merge the results into the SAE's report card (thinksae.json, section `eval`)."""
    progress: bool = True
    """Show a progress bar."""
