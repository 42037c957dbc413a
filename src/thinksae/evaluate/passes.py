"""The passes of `thinksae eval`: stream the eval set through the SAE (store mode) or the model
with the SAE spliced in (model mode), and add every token to the running sums: thinksae's own
per-group metrics, the sink tally and SAEBench's core metrics.

Sinks (:mod:`.sink_tokens`) are found in the same pass, from the hookpoint outputs' norms. With
``--exclude_sinks`` they are left out of every group (each group counts them), kept clean in every
replacement (spliced, zero- and mean-ablated) and left out of the mean that the mean ablation
uses. SAEBench's core metrics are always over the non-sink tokens.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ..models.hookpoints import capture
from ..sinks import SinkRule
from .bench import CoreSums
from .checks import splice_region_names
from .metrics import Grouped, Moments, ReconstructionStats, TokenGroups
from .sink_tokens import EvalSinkRule, SinkTally, sink_mask, special_code, special_mask
from .sources import batches, corpus_docs, pad_right, store_docs, take_chunks, take_tokens
from .spliced import SplicedStats, spliced_batch


@dataclass
class EvalSums:
    """Everything an eval pass adds up."""

    recon: Grouped
    """thinksae's reconstruction metrics per group."""
    spliced: Grouped | None
    """The spliced losses per group (model mode)."""
    tally: SinkTally
    core: CoreSums | None
    """SAEBench's core metrics (None when off)."""


def _sums(cfg, sae, groups: TokenGroups, with_model: bool) -> EvalSums:
    return EvalSums(Grouped(groups, lambda: ReconstructionStats(sae.d_in, sae.num_latents)),
                    Grouped(groups, SplicedStats) if with_model else None, SinkTally(),
                    CoreSums(sae.d_in, sae.num_latents, with_model) if cfg.saebench.core else None)


def eval_store(cfg, store, docs, sae, groups: TokenGroups, device, bar, sink: EvalSinkRule
               ) -> EvalSums:
    """Store mode: the store's activations of the documents ``docs`` through the SAE."""
    sums = _sums(cfg, sae, groups, with_model=False)
    code = special_code(groups.regions)
    with torch.inference_mode():
        for chunk in take_chunks(store.iter_chunks(cfg.chunk_tokens, docs), cfg.max_tokens):
            x = chunk["activations"].to(device)
            special = special_mask(chunk["regions"], code)
            sinks = sink_mask(sink.rule, x, special)
            sums.tally.update(sinks, special, chunk["token_ids"])
            acts, indices = sae.encode(x)
            x_hat = sae.decode(acts, indices)
            sums.recon.update(chunk["regions"], chunk["behaviours"],
                              sinks=sinks if cfg.exclude_sinks else None, x=x, x_hat=x_hat,
                              latent_acts=acts, latent_indices=indices)
            if sums.core is not None:
                kept = ~sinks.to(device)
                sums.core.add_tokens(x[kept], x_hat[kept], acts[kept], indices[kept])
            bar.update(len(x))
    return sums


def replaced_regions(regions: Tensor, codes: Tensor | None) -> Tensor:
    """``[batch, seq]`` True at tokens of the splice regions (``codes``), every position when
    None (padding and sinks are masked apart)."""
    if codes is None:
        return torch.ones_like(regions, dtype=torch.bool)
    return torch.isin(regions, codes)


def region_codes(names: str | None, groups: TokenGroups) -> Tensor | None:
    """The region codes of a comma-separated list of region names."""
    if names is None:
        return None
    return torch.tensor([groups.regions.index(n) for n in splice_region_names(names)],
                        dtype=torch.uint8)


def ablation_mean(model, hookpoint, docs, batch_size, pad_id, codes, d_in,
                  rule: SinkRule | None = None, special: int | None = None) -> Tensor | None:
    """Mean hookpoint output over exactly the tokens the mean ablation replaces (real tokens of
    the splice regions; not the sinks by ``rule``, ``special`` the special region's code),
    float32 ``[d_in]``; None when there are none."""
    device = next(model.parameters()).device
    moments = Moments(d_in)
    for batch in batches(docs, batch_size):
        ids, mask, regions, _ = pad_right(batch, pad_id)
        out = capture(model, hookpoint, ids.to(device), mask.to(device))[hookpoint]
        use = mask.bool() & replaced_regions(regions, codes)
        if rule is not None:
            use &= ~sink_mask(rule, out, special_mask(regions, special), mask.bool())
        moments.update(out[use.to(device)].float())
    return moments.mean.float() if moments.count else None


def eval_model(cfg, model, tokenizer, store, doc_subset, hookpoint, sae, groups: TokenGroups,
               bar, sink: EvalSinkRule) -> EvalSums:
    """Model mode: the documents (of the store or the corpus) through the model, the SAE spliced
    in at the splice regions' tokens (not the sinks with ``--exclude_sinks``)."""
    device = next(model.parameters()).device
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0

    def docs():
        source = (store_docs(store, cfg.chunk_tokens, doc_subset) if store is not None
                  else corpus_docs(cfg.corpus, tokenizer, cfg.max_length, doc_subset))
        return take_tokens(source, cfg.max_tokens)

    codes = region_codes(cfg.splice_regions, groups)
    code = special_code(groups.regions)
    rule = sink.rule if cfg.exclude_sinks else None
    mean = None
    if cfg.mean_ablation:
        mean = ablation_mean(model, hookpoint, docs(), cfg.batch_size, pad_id, codes, sae.d_in,
                             rule, code)
    sums = _sums(cfg, sae, groups, with_model=True)
    for batch in batches(docs(), cfg.batch_size):
        ids, mask, regions, behaviours = pad_right(batch, pad_id)
        special = special_mask(regions, code)
        keep_clean = None if codes is None else ~replaced_regions(regions, codes)
        out = spliced_batch(model, hookpoint, sae, ids.to(device), mask.to(device), mean,
                            keep_clean=keep_clean, sink_rule=rule, special=special)
        _add_batch(cfg, sums, out, regions, behaviours, special, ids, sink.rule)
        bar.update(len(out.x))
    return sums


def _add_batch(cfg, sums: EvalSums, out, regions, behaviours, special, ids, rule: SinkRule
               ) -> None:
    """Add one spliced batch to the sums: tokens (real ones) and scored positions."""
    token_mask, loss_mask = out.token_mask.cpu(), out.loss_mask.cpu()
    if out.sinks is not None:
        sinks = out.sinks.cpu()
    else:  # counted, not excluded
        sinks = torch.zeros_like(token_mask)
        sinks[token_mask] = sink_mask(rule, out.x, special[token_mask])
    sums.tally.update(sinks[token_mask], special[token_mask], ids[token_mask])
    sums.recon.update(regions[token_mask], behaviours[token_mask],
                      sinks=sinks[token_mask] if cfg.exclude_sinks else None, x=out.x,
                      x_hat=out.x_hat, latent_acts=out.latent_acts,
                      latent_indices=out.latent_indices)
    scored = loss_mask & ~sinks if cfg.exclude_sinks else loss_mask
    rows = scored[loss_mask].to(out.x.device)
    if bool(scored.any()):
        sums.spliced.update(regions[scored], behaviours[scored],
                            **{k: v[rows] for k, v in out.losses.items()})
    if sums.core is not None:
        replaced = out.replaced.cpu()
        kept = replaced[token_mask].to(out.x.device)
        sums.core.add_tokens(out.x[kept], out.x_hat[kept], out.latent_acts[kept],
                             out.latent_indices[kept])
        positions = (replaced & loss_mask)[loss_mask].to(out.x.device)
        sums.core.add_positions({k: v[positions] for k, v in out.losses.items()})
