"""Batched generation of a prompt set: the baseline and every steered setting in the same batches.

A batch row is one (setting, prompt) pair, steered by its setting's interventions (the baseline
setting: none). Prompts are sorted by length and cut into groups of ``batch_size // settings``
prompts (at least 1); a batch holds whole groups under every setting, up to ``batch_size`` rows
(a group too large for one batch is split). Decoding is bound by reading the weights each step,
so 40 rows cost little more per step than 8. Every row of a prompt is left-padded to the same
width, so a steered row differs from its baseline only through the steering. When the baseline
must come first (Smax values from its generations), it runs alone, packing whole groups, and
the settings then pad each prompt to the width its baseline row had.

Sampling (``do_sample``): temperature, then nucleus ``top_p`` (no top-k), drawn per row from a
random stream seeded by the run seed and the row's question id (``GenerationConfig.batch_seed([id])``): a
row samples the same tokens whatever else shares its batch, so an identity setting reproduces
the baseline and the results do not depend on ``batch_size`` (nor, for greedy decoding, beyond
floating-point effects of the batch shape).

The prompt positions before the first steered one are prefilled once per distinct prompt of a
batch and copied to its rows (:mod:`.prefill`; not when recording activations, which needs every
position). After a batch, one teacher-forced pass with and one without steering over its
finished steered rows give the KL of the next-token distribution at the steered positions:
KL(p_clean ‖ p_steered), both on the steered trace's prefix. A row the steering never changed
while it was generated (``Steerer.changed``: an identity setting, or features that never fired
where they were scaled or ablated) ran as unsteered: its KL is 0 there, without the passes.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from ..corpus.generate import stop_ids
from ..generation import GenerationConfig
from ..interventions.hooks import Markers, SteeredFeatureStats, steering
from ..interventions.spec import Intervention, Window
from ..models import decoder_stack, output_head
from .prefill import (
    SharedPrefill,
    cache_argument,
    cache_for,
    hidden_after,
    positions,
    shared_prefill,
    unsteered_length,
)


@dataclass
class Generated:
    """One batch's output: ``ids [B, W + new]`` (left-padded prompts of width W, then the
    generation), whether each position is real (prompt, generated up to and including the first
    stop token), the steered-position flags and KL per position where steered, per row the SAE's
    view of its setting's features at its steered positions, and (when recorded) the recorded
    features' activations ``acts [B, W + new - 1, F]`` in the order of ``features``."""

    ids: Tensor
    width: int
    real: Tensor
    steered: Tensor | None = None
    kl: Tensor | None = None
    row_stats: list[SteeredFeatureStats | None] = field(default_factory=list)
    acts: Tensor | None = None
    features: list[int] = field(default_factory=list)


class Batch(NamedTuple):
    """Rows ``(setting index, prompt index)`` decoded together, left-padded to ``width``."""

    rows: list[tuple[int, int]]
    width: int


def prompt_lengths(tokenizer, prompts: list[str]) -> list[int]:
    return [len(tokenizer(p, add_special_tokens=False)["input_ids"]) for p in prompts]


def plan_groups(lengths: list[int], per_group: int) -> list[list[int]]:
    """Prompt indices in groups of ``per_group`` similar lengths (less padding), longest first."""
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    return [order[a:a + per_group] for a in range(0, len(order), per_group)]


def plan_rows(groups: list[list[int]], settings: list[int], batch_size: int,
              lengths: list[int], fixed: dict[int, int] | None = None) -> list[Batch]:
    """Batches of whole groups under every one of ``settings``, at most ``batch_size`` rows
    (a group with more rows is split). Width: the longest prompt of the batch, or with
    ``fixed`` each prompt's given width, and then only groups of equal width share a batch."""
    out: list[Batch] = []
    rows: list[tuple[int, int]] = []
    width = 0
    for group in groups:
        w = max((fixed or {}).get(p, lengths[p]) for p in group)
        new = [(s, p) for s in settings for p in group]
        if rows and (len(rows) + len(new) > batch_size or (fixed is not None and w != width)):
            out.append(Batch(rows, width))
            rows, width = [], 0
        rows, width = rows + new, max(width, w)
        while len(rows) > batch_size:
            out.append(Batch(rows[:batch_size], width))
            rows = rows[batch_size:]
    if rows:
        out.append(Batch(rows, width))
    return out


def _left_pad(tokenizer, prompts: list[str], width: int, pad_id: int) -> tuple[Tensor, Tensor]:
    """Token ids of the prompts (the template has the special tokens), left-padded to ``width``."""
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for i, p in enumerate(prompts):
        row = tokenizer(p, add_special_tokens=False)["input_ids"]
        if row:
            ids[i, width - len(row):], mask[i, width - len(row):] = torch.as_tensor(row), 1
    return ids, mask


class RowSampler:
    """A logits processor that draws each row's next token from its own random stream
    (temperature, then top-p) and leaves only that token, for greedy ``generate`` to take."""

    def __init__(self, seeds: list[int], temperature: float, top_p: float, device):
        from transformers import TemperatureLogitsWarper, TopPLogitsWarper

        self.streams = [torch.Generator(device=device).manual_seed(s) for s in seeds]
        self.warpers = [TemperatureLogitsWarper(temperature), TopPLogitsWarper(top_p)]

    def __call__(self, input_ids: Tensor, scores: Tensor) -> Tensor:
        for warp in self.warpers:
            scores = warp(input_ids, scores)
        probs = F.softmax(scores.float(), dim=-1)
        picks = torch.cat([torch.multinomial(p, 1, generator=g)
                           for p, g in zip(probs, self.streams, strict=True)])
        return torch.full_like(scores, float("-inf")).scatter_(1, picks[:, None], 0.0)


def _real_positions(ids: Tensor, prompt_mask: Tensor, stop: set[int]) -> Tensor:
    """Prompt mask, then generated tokens up to and including each row's first stop token."""
    gen = ids[:, prompt_mask.shape[1]:]
    is_stop = torch.zeros_like(gen, dtype=torch.bool)
    for s in stop:
        is_stop |= gen == s
    after = (is_stop.long().cumsum(1) - is_stop.long()) > 0  # strictly after the first stop
    return torch.cat([prompt_mask.bool(), ~after], dim=1)


def _hidden(model, ids: Tensor, real: Tensor) -> Tensor:
    """Final hidden states of a left-padded batch, positions numbered as generate numbers them."""
    out = decoder_stack(model)(input_ids=ids, attention_mask=real.long(),
                               position_ids=positions(real), use_cache=False)
    return out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]


def kl_at(model, clean: Tensor, steered: Tensor, chunk_rows: int = 256) -> Tensor:
    """KL(p_clean ‖ p_steered) per row of final hidden states ``[m, d]``, float64 ``[m]``."""
    head = output_head(model)
    out = []
    for a in range(0, len(clean), chunk_rows):
        lp_c = F.log_softmax(head(clean[a:a + chunk_rows]).float(), -1)
        lp_s = F.log_softmax(head(steered[a:a + chunk_rows]).float(), -1)
        out.append((lp_c.exp() * (lp_c - lp_s)).sum(-1).double())
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.float64)


@torch.inference_mode()
def generate_rows(model, tokenizer, prompts: list[str], ids: list[str], batches: list[Batch],
                  generation: GenerationConfig, specs: list[list[Intervention]], sae=None,
                  hookpoint: str | None = None, window: Window | None = None,
                  markers: Markers | None = None, kl: bool = True, record: list[int] = (),
                  progress=None) -> list[dict[int, tuple[Generated, int]]]:
    """Decode ``batches``; row ``(s, p)`` generates prompt p steered by ``specs[s]`` (empty: not
    steered) in ``window``. With ``record``, those features' activations are kept at every
    position (``Generated.acts``; the model runs bit for bit unchanged for unsteered rows).
    Returns per setting: prompt index → (its batch's :class:`Generated`, its row in it)."""
    from transformers import LogitsProcessorList

    stop = stop_ids(model, tokenizer)
    pad_id = next((i for i in (tokenizer.pad_token_id, tokenizer.eos_token_id) if i is not None),
                  stop[0])
    device = next(model.parameters()).device
    result: list[dict[int, tuple[Generated, int]]] = [{} for _ in specs]
    for batch in batches:
        row_specs = [specs[s] for s, _ in batch.rows]
        input_ids, mask = _left_pad(tokenizer, [prompts[p] for _, p in batch.rows], batch.width,
                                    pad_id)
        input_ids, mask = input_ids.to(device), mask.to(device)
        processors = LogitsProcessorList()
        if generation.do_sample:
            processors.append(RowSampler([generation.batch_seed([ids[p]]) for _, p in batch.rows],
                                         generation.temperature, generation.top_p, device))
        prefill = None if record else shared_prefill(
            model, input_ids, mask, [p for _, p in batch.rows],
            unsteered_length(input_ids, batch.width, window, markers))
        cached = {cache_argument(model): cache_for(prefill)} if prefill is not None else {}
        steer = steering(model, sae, hookpoint, row_specs, window, markers, record) \
            if any(row_specs) or record else contextlib.nullcontext()
        with steer as steerer:
            if steerer is not None and prefill is not None:
                steerer.prime(input_ids[:, :prefill.length], batch.width)
            out = model.generate(input_ids=input_ids, attention_mask=mask,
                                 max_new_tokens=generation.max_new_tokens, do_sample=False,
                                 eos_token_id=stop, pad_token_id=pad_id,
                                 logits_processor=processors, **cached)
        gen = Generated(out, batch.width, _real_positions(out, mask, set(stop)))
        if steerer is not None:
            gen.row_stats = [steerer.stats_for([r], [i.feature for i in spec]) if spec else None
                             for r, spec in enumerate(row_specs)]
            gen.acts, gen.features = steerer.acts, steerer.feature_list
        if any(row_specs):
            moved = [steerer.changed(r) for r in range(len(batch.rows))]
            _score(model, sae, hookpoint, row_specs, window, markers, gen, kl, prefill, moved)
        for row, (s, p) in enumerate(batch.rows):
            result[s][p] = (gen, row)
        if progress is not None:
            progress.update(len(batch.rows))
    return result


def _score(model, sae, hookpoint, row_specs, window, markers, gen: Generated, kl: bool,
           prefill: SharedPrefill | None = None, moved: list[bool] | None = None) -> None:
    """Steered positions of the finished steered rows and, with ``kl``, the KL at each: 0 for a
    row the steering never changed while it was generated (``moved``, from
    :meth:`Steerer.changed`; None: every row may have changed), else from a teacher-forced pass
    with and one without steering (both from the batch's shared prefill when it has one)."""
    keep = [r for r, spec in enumerate(row_specs) if spec]
    ids, real = gen.ids[keep], gen.real[keep]
    with steering(model, sae, hookpoint, [row_specs[r] for r in keep], window,
                  markers) as steerer:
        steerer.prompt_len = gen.width
        steerer.before_forward(ids, 0)
        flags = steerer.last_mask
    flags = (torch.ones_like(real) if flags is None else flags.bool()) & real
    gen.steered = torch.zeros_like(gen.real)
    gen.steered[keep] = flags
    if not kl:
        return
    sub = torch.full(ids.shape, float("nan"), dtype=torch.float64, device=ids.device)
    sub[flags] = 0.0
    pick = [j for j, r in enumerate(keep) if moved is None or moved[r]]
    if pick:
        sub[pick] = _kl_rows(model, sae, hookpoint, [row_specs[keep[j]] for j in pick], window,
                             markers, ids[pick], real[pick], flags[pick], gen.width, prefill,
                             torch.tensor([keep[j] for j in pick], device=ids.device))
    gen.kl = torch.full(gen.ids.shape, float("nan"), dtype=torch.float64, device=ids.device)
    gen.kl[keep] = sub


def _kl_rows(model, sae, hookpoint, specs, window, markers, ids: Tensor, real: Tensor,
             flags: Tensor, width: int, prefill: SharedPrefill | None, rows: Tensor) -> Tensor:
    """KL per position (NaN where not steered) of finished rows ``ids`` (batch ``rows``):
    teacher-forced passes with and without their steering."""
    start = prefill.length if prefill is not None else 0

    def hidden() -> Tensor:
        if prefill is None:
            return _hidden(model, ids, real)
        return hidden_after(model, prefill, rows, ids, real)

    with steering(model, sae, hookpoint, specs, window, markers) as steerer:
        steerer.prompt_len = width
        if prefill is not None:
            steerer.prime(ids[:, :start], width)
        h_steered = hidden()
    h_clean = hidden()
    after = flags[:, start:]  # none of the prefill's positions is steered
    values = kl_at(model, h_clean[after], h_steered[after])
    out = torch.full(ids.shape, float("nan"), dtype=torch.float64, device=values.device)
    out[flags] = values
    return out
