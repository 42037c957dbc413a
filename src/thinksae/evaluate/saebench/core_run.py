"""The core-metrics driver: run the model clean, with the SAE spliced in and zero-ablated at the
hookpoint, over token batches, and return :class:`~.core.CoreMetrics`; or the reconstruction
metrics alone over an activation store.

Which tokens (:mod:`thinksae.sinks`): a token is kept unless it is padding, one of the special
ids, or a norm sink (‖x‖ above the rule's multiple of the median norm). Every metric is over kept
tokens (losses over kept positions). The SAE's x̂ replaces the hookpoint output at kept tokens
only; the zero ablation zeroes the same tokens (``ablate_sinks``: every real token, as SAELens
does), so CE_zero and KL_zero measure removing exactly what the SAE replaces.

Against SAELens' ``run_evals`` (which SAEBench's core eval copies): the same formulas (checked on
a tiny model in the tests), but SAELens drops only the structural special ids (BOS, EOS, PAD),
not chat-role or think markers nor norm sinks, splices the SAE in at every other token and
zero-ablates every token; it averages the relative reconstruction bias over batches.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ...models.hookpoints import resolve_hookpoint
from ...models.splice import output_head
from ...sinks import SinkRule, sink_summary, special_flags
from ..sources import take_chunks
from ..spliced import clean_pass, hidden_with
from .core import CoreMetrics, CoreStats, LossSums, core_metrics, position_losses

SINK_COUNTS = ("tokens", "sinks", "special", "by_norm")


@dataclass
class CoreOptions:
    """Options of the core metrics (SAEBench's ``core`` eval)."""

    ablate_sinks: bool = False
    """Zero-ablate the sink tokens too, as SAELens and SAEBench do (they zero every position, BOS
    included, so their CE_zero is higher and the CE-loss score with it). Default: the ablation
    zeroes exactly the tokens the SAE replaces and leaves the sinks as they are."""
    chunk_rows: int = 256
    """Positions whose logits are held at once (memory: chunk_rows x vocabulary floats)."""


def _add_counts(total: dict[str, int], summary: dict) -> None:
    for key in SINK_COUNTS:
        total[key] = total.get(key, 0) + int(summary[key])


@torch.inference_mode()
def core_batch(model: nn.Module, sae, hookpoint: str, input_ids: Tensor, attention_mask: Tensor,
               special_ids: Iterable[int], sink_rule: SinkRule, stats: CoreStats,
               losses: LossSums, options: CoreOptions) -> dict:
    """Add one padded batch to ``stats`` and ``losses``; returns the sink rule's summary."""
    module = resolve_hookpoint(model, hookpoint)
    hidden_clean, clean = clean_pass(model, module, input_ids, attention_mask)
    hidden = {"clean": hidden_clean}
    token_mask = attention_mask.bool()
    special = special_flags(input_ids, special_ids) & token_mask
    norms = clean.float().norm(dim=-1)
    sinks = torch.zeros_like(token_mask)
    sinks[token_mask] = sink_rule.mask(norms[token_mask], special[token_mask])
    keep = token_mask & ~sinks
    summary = sink_summary(sinks[token_mask], special[token_mask])
    if not bool(keep.any()):
        return summary
    x = clean[keep].float()
    acts, indices = sae.encode(x.to(sae.dtype))
    x_hat = sae.decode(acts, indices).float()
    with_sae = clean.clone()
    with_sae[keep] = x_hat.to(clean.dtype)
    zeroed = token_mask if options.ablate_sinks else keep
    ablated = torch.where(zeroed[..., None], torch.zeros((), dtype=clean.dtype), clean)
    for name, value in (("sae", with_sae), ("zero", ablated)):
        hidden[name] = hidden_with(model, hookpoint, module, value, input_ids, attention_mask,
                                   clean)
    batch_losses, has_target = position_losses(output_head(model), hidden, input_ids, keep,
                                               token_mask, options.chunk_rows)
    stats.update(x, x_hat, acts, indices)
    losses.update(batch_losses, has_target)
    return summary


def core_eval(model: nn.Module, sae, hookpoint: str, batches: Iterable[tuple[Tensor, Tensor]],
              special_ids: Iterable[int], sink_rule: SinkRule | None = None,
              options: CoreOptions | None = None) -> CoreMetrics:
    """SAEBench's core metrics of ``sae`` at ``hookpoint`` of ``model`` over ``batches`` of
    ``(input_ids, attention_mask)`` ``[batch, seq]`` (padded; e.g. from
    :func:`thinksae.evaluate.sources.pad_right`). ``special_ids``: the tokenizer's special and
    control ids (e.g. :func:`thinksae.corpus.segment.control_token_ids`); ``sink_rule``: the
    store's rule with its reference median where known (default: the default rule, median per
    batch)."""
    rule = sink_rule or SinkRule()
    opts = options or CoreOptions()
    special_ids = sorted({int(i) for i in special_ids})
    device = next(model.parameters()).device
    stats, losses, counts = CoreStats(sae.d_in, sae.num_latents), LossSums(), {}
    for input_ids, attention_mask in batches:
        summary = core_batch(model, sae, hookpoint, input_ids.to(device),
                             attention_mask.to(device), special_ids, rule, stats, losses, opts)
        _add_counts(counts, summary)
    return core_metrics(stats, losses, counts)


@torch.inference_mode()
def core_eval_store(store, sae, sink_rule: SinkRule | None = None, docs=None,
                    max_tokens: int | None = None, chunk_tokens: int = 8192) -> CoreMetrics:
    """The reconstruction half of the core metrics (no CE or KL) on an activation store's
    tokens (those of documents ``docs`` when given, at most ``max_tokens``): specials are the
    store's ``special`` region, sinks by ``sink_rule`` (default rule, median per chunk unless
    the rule carries the store's)."""
    rule = sink_rule or SinkRule()
    regions = list(store.manifest.get("regions") or [])
    special_code = regions.index("special") if "special" in regions else None
    device = sae.device
    stats, counts = CoreStats(sae.d_in, sae.num_latents), {}
    for chunk in take_chunks(store.iter_chunks(chunk_tokens, docs), max_tokens):
        x = chunk["activations"].to(device)
        special = (chunk["regions"] == special_code) if special_code is not None else \
            torch.zeros(len(x), dtype=torch.bool)
        sinks = rule.mask(x.norm(dim=-1).cpu(), special)
        _add_counts(counts, sink_summary(sinks, special))
        kept = x[~sinks.to(device)]
        acts, indices = sae.encode(kept.to(sae.dtype))
        stats.update(kept, sae.decode(acts, indices).float(), acts, indices)
    return core_metrics(stats, None, counts)
