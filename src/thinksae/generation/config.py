"""How the model generates: the options `thinksae corpus`, `steer` and `monitor` share, declared
once (:class:`GenerationConfig`, nested in their configs as ``generation``), and the seeds that
sampling draws from.

The options stay flat for users: ``--max_new_tokens`` on the command line, ``corpus:
{max_new_tokens: …}`` in a pipeline config, and flat keys in saved configs and stage hashes (the
field is a :func:`~thinksae.config.flat_group`), so run directories and corpora written before
the nesting still resume. What only one command has stays in its config: the batch size (traces
per batch in corpus, rows in steer; none in monitor), the engine and ``answer_tokens`` (corpus).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ..config import flat_group
from ..errors import ThinksaeError


@dataclass
class GenerationConfig:
    """Generation: budget, greedy or sampled decoding, and the prompt."""

    max_new_tokens: int = 512
    """Most tokens generated per question (thinking + answer); with `monitor --serve`, the most a
    request may ask for."""
    do_sample: bool = False
    """Sample (temperature, then nucleus top-p) instead of greedy decoding."""
    temperature: float = 0.6
    """Sampling temperature (with --do_sample)."""
    top_p: float = 0.95
    """Nucleus sampling mass (with --do_sample)."""
    seed: int = 0
    """Random seed for sampling."""
    system_prompt: str | None = None
    """System prompt for every question, e.g. asking a non-reasoning model to think inside
    <think> </think> tags."""
    think_prefill: bool = False
    """End each prompt with `<think>` + newline (as the current R1 hub template does) so the model
    starts inside its thinking; useful for models not trained to open it themselves."""

    def check(self) -> None:
        """One-line errors for options no generation can use."""
        if isinstance(self.max_new_tokens, bool) or not isinstance(self.max_new_tokens, int) \
                or self.max_new_tokens < 1:
            raise ThinksaeError(f"--max_new_tokens must be at least 1 (got {self.max_new_tokens})")
        if self.do_sample and not (self.temperature > 0 and 0 < self.top_p <= 1):
            raise ThinksaeError("--temperature must be > 0 and --top_p in (0, 1] when sampling")

    def batch_seed(self, keys: Sequence[str], stage: str = "") -> int:
        """One seed for a whole batch: ``batch_seed(seed, keys [+ stage])``."""
        return batch_seed(self.seed, list(keys) + ([stage] if stage else []))

    def row_seeds(self, keys: Sequence[str], stage: str = "") -> list[int]:
        """One 32-bit seed per sequence (for engines that sample each sequence on its own): a
        row's seed depends only on the run seed, its key (question id) and the stage, not on the
        batch."""
        return [self.batch_seed([k], stage) % 2**32 for k in keys]


def generation_field() -> Any:
    """The ``generation`` field of a command's config: a :class:`GenerationConfig`, flat for
    users (CLI flags, pipeline sections, saved configs)."""
    return flat_group(GenerationConfig)


def batch_seed(seed: int, ids: Sequence[str]) -> int:
    """A seed that depends only on the run seed and ``ids`` (the questions of a batch, or one
    question), so a resumed run samples the remaining batches like an uninterrupted one would:
    the first 8 bytes (little-endian) of sha256(``seed`` NUL id₀ NUL id₁ …) mod 2⁶³."""
    blob = f"{seed}\0" + "\0".join(ids)
    return int.from_bytes(hashlib.sha256(blob.encode()).digest()[:8], "little") % (2**63)
