"""Options of `thinksae eval` (the field docstrings are the CLI help)."""

from __future__ import annotations

from dataclasses import dataclass

from simple_parsing import field

from ..config import flat_group


@dataclass
class SaebenchConfig:
    """SAEBench's metrics (Karvonen et al. 2025) in `thinksae eval`: `saebench` in the JSON, each
    over the non-sink tokens (special tokens and norm sinks, :mod:`thinksae.sinks`)."""

    core: bool = True
    """SAEBench's core metrics over the non-sink tokens (explained variance, L0, L1, cosine, l2
    ratio, relative reconstruction bias, feature density); with --model also the CE-loss and KL
    scores against zero ablation, from the spliced passes (the sinks kept clean: needs
    --exclude_sinks)."""
    probing: bool | None = None
    """k-sparse probing of the store's region and behaviour labels (mean-pooled units, top-k
    latents by mean difference, logistic regression; the residual as baseline): true, false, or
    unset: on whenever a store is given, a label family its traces cannot support skipped with a
    note (true: an error instead)."""
    probe_families: str = "regions,behaviours"
    """Label families to probe, comma-separated: regions (prompt/think/answer windows),
    behaviours (think sentences; sentence ends need the tokenizer: --model or --tokenizer, else
    think windows)."""
    probe_ks: str = "1,2,5"
    """Numbers of SAE latents (and residual dimensions) a probe may use, comma-separated."""
    probe_max_traces: int | None = 100
    """Probe on at most this many traces of the split (a seeded sample; the flag without a value
    or null: all)."""
    probe_window_tokens: int | None = 32
    """Tokens per region unit (a window of one contiguous region of one trace; the flag without a
    value or null: the whole run)."""
    absorption: bool = False
    """Feature absorption on the first-letter task (needs --model; minutes on a CPU): letter
    probes on the residual, k-sparse probes on the latents, absorption per letter."""
    absorption_words_per_letter: int | None = 40
    """Letter-only vocabulary tokens used per first letter (the flag without a value or null: all,
    as SAEBench)."""
    absorption_min_words_per_letter: int = 5
    """Refuse a vocabulary with fewer letter-only tokens for some first letter (at least 2)."""
    absorption_min_letters: int = 20
    """Report absorption means only when at least this many letters' probes pass F1 0.6
    (SAEBench: 20)."""


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
    exclude_sinks: bool = True
    """Leave the sink tokens (the special region and tokens whose norm is above the store's
    sink-rule multiple of its median norm; without a store, of each batch's median) out of every
    metric, and keep them clean when splicing and ablating; each group counts them (`sinks`)."""
    saebench: SaebenchConfig = flat_group(SaebenchConfig)
    """SAEBench's metrics (options given flat: --core, --probing, --absorption, ...)."""
    update_card: bool = True
    """Merge the results into the SAE's report card (thinksae.json, section `eval`)."""
    progress: bool = True
    """Show a progress bar."""
