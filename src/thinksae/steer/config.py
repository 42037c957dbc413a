"""Options of `thinksae steer` (the field docstrings are the CLI help)."""

from __future__ import annotations

import argparse
from dataclasses import dataclass

from simple_parsing import field

from ..generation.config import GenerationConfig, generation_field


class _Extend(argparse.Action):
    """A repeatable list option: ``--feature 1=0 --feature 2=x4`` (and ``--feature 1=0 2=x4``)."""

    def __call__(self, parser, namespace, values, option_string=None):
        old = getattr(namespace, self.dest, None)
        old = [] if old is None or old is self.default else list(old)
        setattr(namespace, self.dest, old + list(values))


@dataclass
class SteerConfig:
    """Options of `thinksae steer`."""

    run: str | None = None
    """Run directory written by `thinksae run`: the SAE and model come from it
    unless given, and the output goes to <run>/cli/steer unless --out is given."""
    sae: str | None = None
    """SAE directory (sparsify or SAELens layout), or a training run directory with --hookpoint."""
    feature: list[str] = field(default_factory=list, action=_Extend)
    """Interventions FEATURE=VALUE, repeated or comma-separated: 123=2.5 clamps to 2.5, 123=x4
    scales by 4, 123=+2 adds 2 x the decoder row (-2 subtracts), 123=off zero-ablates, 123=2max
    clamps to 2 x the feature's max activation (AIRI's recipe; where from: --max_from).
    With --sweep: bare feature indices."""
    sweep: list[str] = field(default_factory=list, action=_Extend)
    """Sweep mode: VALUEs (same grammar, comma-separated) applied in turn to every --feature;
    writes a table and steer.png."""
    max_from: str = "baseline"
    """Where Smax values take the feature's max activation: `baseline` (over the unsteered
    generations of this prompt set, at the positions of the steering window in the regions the
    SAE was trained on, from its thinksae.json; all non-special tokens when it does not say) or a
    `thinksae analyze` output directory of this SAE (over the analysed tokens; for features that
    seldom fire in short generations)."""
    hookpoint: str | None = None
    """Hookpoint to steer (default: the SAE's own, from thinksae.json or its directory name)."""
    model: str | None = None
    """Model (hub id, local directory, .gguf or `offline`; default: the run's, else
    deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B)."""
    tokenizer: str | None = None
    """Load the tokenizer from another spec (default: the model's)."""
    prompt: list[str] = field(default_factory=list, action=_Extend)
    """Question(s) to generate from (repeatable)."""
    prompts_file: str | None = field(default=None, alias=["--prompts-file"])
    """Questions instead of --prompt: `builtin` (math problems with answers), `gsm8k` or a
    JSONL/text file (default: builtin)."""
    limit: int | None = 16
    """Use only the first N questions of --prompts_file."""
    start: str | None = None
    """Steer from: prompt (every generated token), think (after <think>), sentence (after the
    first sentence of thinking, i.e. R1's "Okay, so the user..." opening) or N (after N thinking
    tokens). Default: sentence where the tokenizer has single <think>/</think> tokens (R1), else
    prompt (the markers are plain text there, so a thinking window could never open)."""
    end: str | None = None
    """Steer up to: think_end (</think>; the answer is not steered), none, or M thinking tokens.
    Default: think_end with single <think>/</think> tokens, else none."""
    batch_size: int = 48
    """Most rows decoded together: each batch holds its questions under the baseline and every
    setting (rows = questions x settings, left-padded), so decoding reads the weights once per
    step for all of them. (With Smax from the baseline, the baseline runs first.)"""
    generation: GenerationConfig = generation_field()
    """How to generate, the same for the baseline and every setting (flat options:
    --max_new_tokens, --do_sample, ...). Sampled rows draw from a stream seeded by --seed and
    their question, so the baseline and every setting use the same seeds."""
    kl: bool = True
    """Measure KL(clean || steered) of the next-token distribution at the steered positions
    (two extra forward passes per batch)."""
    show: int = 2
    """Print the baseline and steered generations of this many questions side by side."""
    out: str | None = None
    """Output directory: steer.json (and steer.png with --sweep); default runs/steer, or
    <run>/cli/steer with --run."""
    device: str = "auto"
    """cpu, cuda, cuda:N or auto."""
    dtype: str = "auto"
    """Model dtype: auto (bf16 where fast), float32, bfloat16 or float16. The SAE runs in float32."""
    progress: bool = True
    """Show a progress bar."""
