"""The one decoding API: generate rows with per-row interventions, recorded features and a
per-token callback; report the tokens, the steered positions and the KL there.

`thinksae steer` (a prompt set under every setting), the workbench's steer page (one prompt,
baseline and steered side by side, streamed), `thinksae monitor` and the workbench's monitor page
(one prompt, watched features per token, rules that stop or switch on steering) all call
:func:`generate_rows`.

A batch row is one (setting, prompt) pair (:mod:`.batches`), steered by its setting's
interventions (:mod:`thinksae.interventions`; an empty setting: not steered) in the window.
Every row of a prompt is left-padded to the same width, so a steered row differs from its
baseline only through the steering. Decoding is ``model.generate`` (greedy, or per-row sampling
streams: :mod:`.sampling`), so 40 rows cost little more per step than 8 (decoding reads the
weights each step).

Sampling draws each row from a stream seeded by the run seed and the row's question id
(``GenerationConfig.batch_seed([id])``): a row samples the same tokens whatever else shares its
batch, so an identity setting reproduces the baseline and results do not depend on
``batch_size``.

The prompt positions before the first steered one are prefilled once per distinct prompt of a
batch and copied to its rows (:mod:`.prefill`; not when recording, which needs every position).
After a batch, the steered positions and their KL (:mod:`.kl`).

Per token (``on_step``): after the forward pass of each generated token — its own position, so
recorded features hold its activation — the callback gets a :class:`DecodeStep` and may return
True to end the generation (the token chosen after that one is then left out of ``fed``); a set
``cancel`` event ends it the same way.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import NamedTuple

import torch
from torch import Tensor

from ..chat import ThinkMarkers, pad_id_of, stop_ids
from ..interventions import Intervention, SteeredFeatureStats, Steerer, Window, steering
from .batches import Batch, left_pad, real_positions
from .config import GenerationConfig
from .kl import SteeredRows, score_steered
from .prefill import cache_argument, cache_for, shared_prefill, unsteered_length
from .sampling import RowSampler


@dataclass
class Generated:
    """One batch's output: ``ids [B, W + new]`` (left-padded prompts of width W, then the
    generation), whether each position is real (prompt, generated up to and including the first
    stop token), the steered-position flags and KL per position where steered, per row the SAE's
    view of its setting's features at its steered positions, (when recorded) the recorded
    features' values ``acts [B, W + new - 1, F]`` in the order of ``features``, and ``fed``: how
    many generated tokens went through the model (all but the last, or those before a stop
    asked for by ``on_step``/``cancel``)."""

    ids: Tensor
    width: int
    real: Tensor
    steered: Tensor | None = None
    kl: Tensor | None = None
    row_stats: list[SteeredFeatureStats | None] = field(default_factory=list)
    acts: Tensor | None = None
    features: list[int] = field(default_factory=list)
    fed: int = 0


class DecodeStep(NamedTuple):
    """What ``on_step`` sees after the forward pass of a generated token."""

    step: int
    """Index of the token in the generation (0 = the first generated token)."""
    tokens: list[int]
    """The token of each batch row at this step (pad for rows already finished)."""
    values: Tensor | None
    """``[B, F]`` recorded features' values at this token (None without ``record``)."""
    rows: list[tuple[int, int]]
    """The batch's rows ``(setting, prompt)``."""


class Decoding(NamedTuple):
    """Everything :func:`generate_rows` decodes with (besides the batches and settings)."""

    model: object
    tokenizer: object
    sae: object = None
    hookpoint: str | None = None
    window: Window | None = None
    markers: ThinkMarkers | None = None


class _StepHook:
    """A logits processor (called after every forward of ``generate``, before the next token is
    chosen) that reports each fed generated token to ``on_step``, and a stopping criterion that
    ends the generation when ``on_step`` or ``cancel`` asks."""

    def __init__(self, on_step, cancel, rows, steerer_of: Callable[[], Steerer | None]):
        self.on_step, self.cancel, self.rows, self.steerer_of = on_step, cancel, rows, steerer_of
        self.calls = 0
        self.stop = False
        self.fed = 0

    def __call__(self, input_ids: Tensor, scores: Tensor) -> Tensor:
        self.calls += 1
        if self.calls > 1 and not self.stop:  # the first call follows the prompt's forward
            self.fed = self.calls - 1
            steerer = self.steerer_of()
            values = steerer.recorded[-1][:, -1] if steerer is not None and steerer.record \
                and steerer.recorded else None
            step = DecodeStep(self.fed - 1, input_ids[:, -1].tolist(), values, self.rows)
            if self.on_step is not None and self.on_step(step):
                self.stop = True
        if self.cancel is not None and self.cancel.is_set():
            self.stop = True
        return scores

    def criteria(self):
        """A ``StoppingCriteriaList`` that ends generation once :attr:`stop` is set."""
        from transformers import StoppingCriteria, StoppingCriteriaList

        hook = self

        class Stop(StoppingCriteria):
            def __call__(self, input_ids, scores, **kwargs):
                return torch.full((input_ids.shape[0],), hook.stop, dtype=torch.bool,
                                  device=input_ids.device)

        return StoppingCriteriaList([Stop()])


def _processors(generation: GenerationConfig, keys: list[str], device, hook: _StepHook | None):
    from transformers import LogitsProcessorList

    processors = LogitsProcessorList()
    if hook is not None:
        processors.append(hook)
    if generation.do_sample:
        processors.append(RowSampler([generation.batch_seed([k]) for k in keys],
                                     generation.temperature, generation.top_p, device))
    return processors


@torch.inference_mode()
def generate_rows(dec: Decoding, prompts: list[str], ids: list[str], batches: list[Batch],
                  generation: GenerationConfig, specs: list[list[Intervention]], *,
                  kl: bool = True, record: list[int] = (), record_value: str = "topk",
                  on_step: Callable[[DecodeStep], bool | None] | None = None, cancel=None,
                  max_new_tokens: int | None = None, progress=None
                  ) -> list[dict[int, tuple[Generated, int]]]:
    """Decode ``batches`` (module docstring); row ``(s, p)`` generates prompt p steered by
    ``specs[s]`` in ``dec.window``. With ``record``, those features' values (``record_value``:
    ``topk`` or ``pre``) are kept at every position (``Generated.acts``; the model runs bit for
    bit unchanged for unsteered rows). ``ids``: the prompts' question ids (sampling seeds).
    Returns per setting: prompt index → (its batch's :class:`Generated`, its row in it)."""
    stop = stop_ids(dec.model, dec.tokenizer)
    limit = max_new_tokens or generation.max_new_tokens
    result: list[dict[int, tuple[Generated, int]]] = [{} for _ in specs]
    for batch in batches:
        gen = _generate_batch(dec, [prompts[p] for _, p in batch.rows],
                              [ids[p] for _, p in batch.rows], batch, generation,
                              [specs[s] for s, _ in batch.rows], stop, limit,
                              kl, record, record_value, on_step, cancel)
        for row, (s, p) in enumerate(batch.rows):
            result[s][p] = (gen, row)
        if progress is not None:
            progress.update(len(batch.rows))
    return result


def _generate_batch(dec: Decoding, prompts, keys, batch: Batch, generation, row_specs, stop,
                    limit, kl, record, record_value, on_step, cancel) -> Generated:
    model, tokenizer = dec.model, dec.tokenizer
    pad_id = pad_id_of(tokenizer, stop)
    device = next(model.parameters()).device
    input_ids, mask = left_pad(tokenizer, prompts, pad_id, batch.width)
    input_ids, mask = input_ids.to(device), mask.to(device)
    prefill = None if record else shared_prefill(
        model, input_ids, mask, [p for _, p in batch.rows],
        unsteered_length(input_ids, batch.width, dec.window, dec.markers))
    cached = {cache_argument(model): cache_for(prefill)} if prefill is not None else {}
    steer = steering(model, dec.sae, dec.hookpoint, row_specs, dec.window, dec.markers, record,
                     record_value) if any(row_specs) or record else contextlib.nullcontext()
    with steer as steerer:
        hook = _StepHook(on_step, cancel, batch.rows, lambda: steerer) \
            if on_step is not None or cancel is not None else None
        if steerer is not None and prefill is not None:
            steerer.prime(input_ids[:, :prefill.length], batch.width)
        extra = {"stopping_criteria": hook.criteria()} if hook is not None else {}
        out = model.generate(input_ids=input_ids, attention_mask=mask, max_new_tokens=limit,
                             do_sample=False, eos_token_id=stop, pad_token_id=pad_id,
                             logits_processor=_processors(generation, keys, device, hook),
                             **cached, **extra)
    gen = Generated(out, batch.width, real_positions(out, mask, set(stop)))
    gen.fed = hook.fed if hook is not None else max(out.shape[1] - batch.width - 1, 0)
    if steerer is not None:
        gen.row_stats = [steerer.stats_for([r], [i.feature for i in spec]) if spec else None
                         for r, spec in enumerate(row_specs)]
        gen.acts, gen.features = steerer.acts, steerer.feature_list
    if any(row_specs):
        rows = SteeredRows(model, dec.sae, dec.hookpoint, row_specs, dec.window, dec.markers,
                           batch.width, prefill)
        gen.steered, gen.kl = score_steered(rows, gen.ids, gen.real, kl,
                                            [steerer.changed(r) for r in range(len(row_specs))])
    return gen
