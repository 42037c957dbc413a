"""Batched generation of a prompt set, unsteered or steered, with the same batches and seeds.

Prompts are sorted by length and cut into batches once; every condition (the baseline, each
steered setting) generates the same batches with the same per-batch seed, so with greedy decoding
or sampling a steered trace differs from its baseline only through the steering. After a steered
batch, one teacher-forced pass with and one without steering over the finished sequences give the
KL of the next-token distribution at the steered positions: KL(p_clean ‖ p_steered), both on the
steered trace's prefix.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from ..corpus.generate import batch_seed, left_pad, stop_ids
from ..evaluate.spliced import output_head
from ..models import decoder_stack
from .hooks import FeatureStats, Markers, steering
from .spec import Intervention, Window


@dataclass
class Settings:
    """How to generate: the same for every condition of a run."""

    max_new_tokens: int = 512
    batch_size: int = 8
    do_sample: bool = False
    temperature: float = 0.6
    top_p: float = 0.95
    seed: int = 0


@dataclass
class Generated:
    """One batch's output: ``ids [B, W + new]`` (left-padded prompts of width W, then the
    generation), whether each position is real (prompt, generated up to and including the first
    stop token), and the steered-position flags and KL per position where steered."""

    ids: Tensor
    width: int
    real: Tensor
    steered: Tensor | None = None
    kl: Tensor | None = None
    feature_stats: FeatureStats | None = None


def plan_batches(tokenizer, prompts: list[str], batch_size: int) -> list[list[int]]:
    """Prompt indices in batches of similar length (less padding), longest first."""
    lengths = [len(tokenizer(p, add_special_tokens=False)["input_ids"]) for p in prompts]
    order = sorted(range(len(prompts)), key=lambda i: (-lengths[i], i))
    return [order[a:a + batch_size] for a in range(0, len(order), batch_size)]


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
    pos = (real.long().cumsum(1) - 1).clamp_min(0)
    out = decoder_stack(model)(input_ids=ids, attention_mask=real.long(), position_ids=pos,
                               use_cache=False)
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
def generate_condition(model, tokenizer, prompts: list[str], ids: list[str],
                       batches: list[list[int]], settings: Settings, sae=None,
                       hookpoint: str | None = None, interventions: list[Intervention] | None = None,
                       window: Window | None = None, markers: Markers | None = None,
                       kl: bool = True, record: list[int] | None = None, progress=None
                       ) -> dict[int, tuple[Generated, int]]:
    """Generate every batch under one condition (no ``interventions``: the baseline; then
    ``record`` features' activations are recorded at every position by an identity
    intervention, which leaves the model bit for bit unchanged); returns prompt index → (its
    batch's :class:`Generated`, its row in it)."""
    stop = stop_ids(model, tokenizer)
    pad_id = next((i for i in (tokenizer.pad_token_id, tokenizer.eos_token_id) if i is not None),
                  stop[0])
    device = next(model.parameters()).device
    sampling = dict(temperature=settings.temperature, top_p=settings.top_p) \
        if settings.do_sample else {}
    result: dict[int, tuple[Generated, int]] = {}
    for batch in batches:
        input_ids, mask = left_pad(tokenizer, [prompts[i] for i in batch], pad_id)
        input_ids, mask = input_ids.to(device), mask.to(device)
        torch.manual_seed(batch_seed(settings.seed, [ids[i] for i in batch]))
        if interventions:
            steer = steering(model, sae, hookpoint, interventions, window, markers)
        elif record:
            identity = [Intervention(f, "scale", 1.0) for f in record]
            steer = steering(model, sae, hookpoint, identity)
        else:
            steer = contextlib.nullcontext()
        with steer as steerer:
            out = model.generate(input_ids=input_ids, attention_mask=mask,
                                 max_new_tokens=settings.max_new_tokens,
                                 do_sample=settings.do_sample, eos_token_id=stop,
                                 pad_token_id=pad_id, **sampling)
        gen = Generated(out, input_ids.shape[1], _real_positions(out, mask, set(stop)))
        if steerer is not None:
            gen.feature_stats = steerer.stats
        if interventions:
            _score(model, sae, hookpoint, interventions, window, markers, gen, kl)
        for row, i in enumerate(batch):
            result[i] = (gen, row)
        if progress is not None:
            progress.update(len(batch))
    return result


def _score(model, sae, hookpoint, interventions, window, markers, gen: Generated,
           kl: bool) -> None:
    """Steered positions of the finished sequences and, with ``kl``, the KL at each."""
    with steering(model, sae, hookpoint, interventions, window, markers) as steerer:
        steerer.prompt_len = gen.width
        h_steered = _hidden(model, gen.ids, gen.real) if kl else None
        if not kl:
            steerer.before_forward(gen.ids, 0)
        flags = steerer.last_mask
    if flags is None:  # no window: every position
        flags = torch.ones_like(gen.real)
    gen.steered = flags.bool() & gen.real
    if kl:
        h_clean = _hidden(model, gen.ids, gen.real)
        values = kl_at(model, h_clean[gen.steered], h_steered[gen.steered])
        gen.kl = torch.full(gen.ids.shape, float("nan"), dtype=torch.float64,
                            device=values.device)
        gen.kl[gen.steered] = values
