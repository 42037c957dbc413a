"""`evaluate(cfg)`: check the inputs, stream the eval set through the SAE (and the model), report.

Two modes. ``--store`` alone: reconstruction metrics on the store's activations. ``--model`` with
``--corpus`` (or with ``--store``, whose token ids are then rerun): reconstruction metrics on the
model's hookpoint outputs plus the spliced next-token losses. Every number is given for all tokens,
each region, each behaviour tag and, as the headline, the regions the SAE was trained on together
(see ``headline.py``). Inputs are checked before anything runs or is written.
"""

from __future__ import annotations

from pathlib import Path

import torch
from tqdm.auto import tqdm

from .. import atomic
from ..binding import ModelSource, bind_sae
from ..config import to_dict
from ..corpus.segment import Region, behaviour_names
from ..errors import ThinksaeError
from ..models.hookpoints import capture
from ..runs import need, with_run
from ..sae.bound import SaeAtHookpoint
from ..sae.formats import detect_format, update_report_card
from ..store.reader import ActivationStore
from .checks import check_options, docs_of_split, splice_region_names
from .config import EvalConfig
from .headline import headline
from .metrics import ALL, TRAINED, Grouped, Moments, ReconstructionStats, TokenGroups
from .metrics import latent_frequency_histogram as frequency_histogram
from .report import print_table, write_histogram_png
from .result import EvalData, EvalResult
from .sources import batches, corpus_docs, pad_right, store_docs, take_chunks, take_tokens
from .spliced import SplicedStats, spliced_batch


def _label_names(store) -> tuple[list[str], list[str]]:
    manifest = store.manifest if store is not None else {}
    return (list(manifest.get("regions") or [r.name.lower() for r in Region]),
            list(manifest.get("behaviours") or behaviour_names()))


def _eval_store(cfg, store, docs, sae, groups, device, bar) -> Grouped:
    recon = Grouped(groups, lambda: ReconstructionStats(sae.d_in, sae.num_latents))
    with torch.inference_mode():
        for chunk in take_chunks(store.iter_chunks(cfg.chunk_tokens, docs), cfg.max_tokens):
            x = chunk["activations"].to(device)
            acts, indices = sae.encode(x)
            recon.update(chunk["regions"], chunk["behaviours"], x=x, x_hat=sae.decode(acts, indices),
                         latent_acts=acts, latent_indices=indices)
            bar.update(len(x))
    return recon


def _replaced(regions: torch.Tensor, codes: torch.Tensor | None) -> torch.Tensor:
    """``[batch, seq]`` True where splicing and ablating replace the hookpoint output: tokens of
    the splice regions (``codes``), every position when None (padding is masked apart)."""
    if codes is None:
        return torch.ones_like(regions, dtype=torch.bool)
    return torch.isin(regions, codes)


def _ablation_mean(model, hookpoint, docs, batch_size, pad_id, codes, d_in) -> torch.Tensor | None:
    """Mean hookpoint output over exactly the tokens the mean ablation replaces (real tokens of
    the splice regions), float32 ``[d_in]``; None when there are none."""
    device = next(model.parameters()).device
    moments = Moments(d_in)
    for batch in batches(docs, batch_size):
        ids, mask, regions, _ = pad_right(batch, pad_id)
        out = capture(model, hookpoint, ids.to(device), mask.to(device))[hookpoint]
        moments.update(out[(mask.bool() & _replaced(regions, codes)).to(device)].float())
    return moments.mean.float() if moments.count else None


def _eval_model(cfg, model, tokenizer, store, doc_subset, hookpoint, sae, groups, bar):
    device = next(model.parameters()).device
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0

    def docs():
        source = (store_docs(store, cfg.chunk_tokens, doc_subset) if store is not None
                  else corpus_docs(cfg.corpus, tokenizer, cfg.max_length, doc_subset))
        return take_tokens(source, cfg.max_tokens)

    spliced_codes = _region_codes(cfg.splice_regions, groups)
    mean = None
    if cfg.mean_ablation:
        mean = _ablation_mean(model, hookpoint, docs(), cfg.batch_size, pad_id, spliced_codes,
                              sae.d_in)
    recon = Grouped(groups, lambda: ReconstructionStats(sae.d_in, sae.num_latents))
    spliced = Grouped(groups, SplicedStats)
    for batch in batches(docs(), cfg.batch_size):
        ids, mask, regions, behaviours = pad_right(batch, pad_id)
        keep_clean = None if spliced_codes is None else ~_replaced(regions, spliced_codes)
        out = spliced_batch(model, hookpoint, sae, ids.to(device), mask.to(device), mean,
                            keep_clean=keep_clean)
        token_mask, loss_mask = out.token_mask.cpu(), out.loss_mask.cpu()
        recon.update(regions[token_mask], behaviours[token_mask], x=out.x, x_hat=out.x_hat,
                     latent_acts=out.latent_acts, latent_indices=out.latent_indices)
        if bool(loss_mask.any()):
            spliced.update(regions[loss_mask], behaviours[loss_mask], **out.losses)
        bar.update(len(out.x))
    return recon, spliced


def _region_codes(names: str | None, groups: TokenGroups) -> torch.Tensor | None:
    """The region codes of a comma-separated list of region names."""
    if names is None:
        return None
    return torch.tensor([groups.regions.index(n) for n in splice_region_names(names)],
                        dtype=torch.uint8)


def _merge(a: dict, b: dict) -> dict:
    """Per-group union of two nested result dicts."""
    out = {ALL: {**a[ALL], **b[ALL]},
           **{kind: {name: {**a[kind][name], **b[kind].get(name, {})} for name in a[kind]}
              for kind in ("regions", "behaviours")}}
    if TRAINED in a:
        out[TRAINED] = {**a[TRAINED], **b.get(TRAINED, {})}
    return out


def _run(cfg, model, tokenizer, store, docs, hookpoint, sae, groups, device):
    """Stream the eval set (``docs`` of the store or corpus) through the SAE (and the model)."""
    total = None
    if store is not None:
        total = store.num_tokens if docs is None else len(store.token_indices(docs=docs))
    if cfg.max_tokens:
        total = min(cfg.max_tokens, total or cfg.max_tokens)
    with tqdm(total=total, desc="eval", unit="tok", disable=not cfg.progress) as bar:
        if model is not None:
            recon, spliced = _eval_model(cfg, model, tokenizer, store, docs, hookpoint, sae,
                                         groups, bar)
        else:
            recon, spliced = _eval_store(cfg, store, docs, sae, groups, device, bar), None
    return recon, spliced


def run(cfg: EvalConfig, model=None, tokenizer=None) -> EvalResult:
    """Evaluate the SAE ``cfg.sae`` as ``cfg`` says; returns the result that is also written to
    the JSON (``cfg.out``), printed as a table and merged into the report card.

    ``model``/``tokenizer`` optionally replace loading ``cfg.model``.
    """
    cfg = with_run(cfg, "eval", ("sae", "store"))
    need(cfg, "sae", "an SAE directory")
    have_model = model is not None or cfg.model is not None
    check_options(cfg, have_model)
    store = ActivationStore(cfg.store) if cfg.store is not None else None
    sae_at = SaeAtHookpoint.find(cfg.sae, cfg.hookpoint, store)
    sae_dir, card, hookpoint = sae_at.dir, sae_at.card, sae_at.hookpoint
    docs = docs_of_split(cfg, sae_dir, card, store)  # before any model is loaded: cheap to refuse
    region_names, behaviour_names = _label_names(store)
    head = headline(card, region_names, sae_dir)
    bound = bind_sae(sae_at, ModelSource.of(cfg), model, tokenizer, store=store,
                     need_model=have_model)
    model, tokenizer, sae, device = bound.model, bound.tokenizer, bound.sae, bound.device
    data_hash = bound.data_hash
    groups = TokenGroups(region_names, behaviour_names, trained=head.regions)

    recon, spliced = _run(cfg, model, tokenizer, store, docs, hookpoint, sae, groups, device)
    all_stats: ReconstructionStats = recon.stats[ALL]
    if all_stats.tokens == 0:
        source = cfg.corpus or cfg.store
        raise ThinksaeError(f"empty eval set: {source} yields no tokens")

    metrics = recon.results()
    if spliced is not None:
        metrics = _merge(metrics, spliced.results())
    out = Path(cfg.out) if cfg.out else sae_dir / "eval.json"
    png = out.with_name(f"{out.stem}.latent_frequency.png")
    histogram = frequency_histogram(all_stats.fire_counts, all_stats.tokens)
    data = EvalData(
        mode="model" if model is not None else "store", store=cfg.store, corpus=cfg.corpus,
        model=cfg.model or getattr(getattr(model, "config", None), "_name_or_path", None),
        tokens=all_stats.tokens, split=cfg.split, traces=None if docs is None else len(docs),
        tokenizer_hash=data_hash, store_hash=store.hash if store is not None else None,
        corpus_hash=atomic.sha256_file(cfg.corpus)[:16] if cfg.corpus else None)
    result = EvalResult(str(sae_dir), detect_format(sae_dir), hookpoint, sae.d_in, sae.num_latents,
                        sae.cfg.k, data, head.to_dict(), metrics, {"png": str(png), **histogram},
                        to_dict(cfg))
    title = f"{sae_dir.parent.name}/{sae_dir.name} ({hookpoint}), {all_stats.tokens} tokens"
    write_histogram_png(png, histogram, title)
    written = result.to_dict()
    atomic.write_json(out, written)
    if cfg.update_card:
        update_report_card(sae_dir, "eval", written)
    print_table(written)
    return result
