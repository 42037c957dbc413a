"""`evaluate(cfg)`: check the inputs, stream the eval set through the SAE (and the model), report.

Two modes. ``--store`` alone: reconstruction metrics on the store's activations. ``--model`` with
``--corpus`` (or with ``--store``, whose token ids are then rerun): reconstruction metrics on the
model's hookpoint outputs plus the spliced next-token losses. Every number is given for all tokens,
each region, each behaviour tag and, as the headline, the regions the SAE was trained on together
(see ``headline.py``), over the tokens that are not sinks (``passes.py``); SAEBench's metrics
beside them (``bench.py``). Inputs are checked before anything runs or is written.
"""

from __future__ import annotations

from pathlib import Path

from tqdm.auto import tqdm

from .. import atomic
from ..binding import ModelSource, bind_sae
from ..config import to_dict
from ..corpus.segment import Region, behaviour_names
from ..errors import ThinksaeError
from ..models.tokenizer import load_tokenizer
from ..runs import need, with_run
from ..sae.bound import SaeAtHookpoint
from ..sae.formats import detect_format, update_report_card
from ..store.reader import ActivationStore
from .bench import run_absorption, run_probing, saebench_section
from .bench_options import check_absorption_vocabulary, check_saebench, probe_plan, probing_on
from .checks import check_options, docs_of_split
from .config import EvalConfig
from .headline import headline
from .metrics import ALL, TRAINED, ReconstructionStats, TokenGroups
from .metrics import latent_frequency_histogram as frequency_histogram
from .passes import EvalSums, eval_model, eval_store
from .report import print_table, write_histogram_png
from .result import EvalData, EvalResult
from .sink_tokens import eval_sink_rule


def _label_names(store) -> tuple[list[str], list[str]]:
    manifest = store.manifest if store is not None else {}
    return (list(manifest.get("regions") or [r.name.lower() for r in Region]),
            list(manifest.get("behaviours") or behaviour_names()))


def _merge(a: dict, b: dict) -> dict:
    """Per-group union of two nested result dicts."""
    out = {ALL: {**a[ALL], **b[ALL]},
           **{kind: {name: {**a[kind][name], **b[kind].get(name, {})} for name in a[kind]}
              for kind in ("regions", "behaviours")}}
    if TRAINED in a:
        out[TRAINED] = {**a[TRAINED], **b.get(TRAINED, {})}
    return out


def _run(cfg, model, tokenizer, store, docs, hookpoint, sae, groups, device, sink) -> EvalSums:
    """Stream the eval set (``docs`` of the store or corpus) through the SAE (and the model)."""
    total = None
    if store is not None:
        total = store.num_tokens if docs is None else len(store.token_indices(docs=docs))
    if cfg.max_tokens:
        total = min(cfg.max_tokens, total or cfg.max_tokens)
    with tqdm(total=total, desc="eval", unit="tok", disable=not cfg.progress) as bar:
        if model is not None:
            return eval_model(cfg, model, tokenizer, store, docs, hookpoint, sae, groups, bar, sink)
        return eval_store(cfg, store, docs, sae, groups, device, bar, sink)


def _precheck_absorption(cfg, tokenizer) -> None:
    """The vocabulary has enough letter-only words for the absorption task, checked with the
    tokenizer alone before the model loads."""
    if not cfg.saebench.absorption:
        return
    if tokenizer is None:
        tokenizer = load_tokenizer(cfg.tokenizer or cfg.model)
    check_absorption_vocabulary(cfg, tokenizer)


def _sink_section(cfg, sink, sums: EvalSums, tokenizer) -> dict:
    """eval.json's ``sinks``: the rule, whether sinks were left out, what it found."""
    decode = None if tokenizer is None else (lambda i: tokenizer.decode([i]))
    return {"excluded": cfg.exclude_sinks, "rule": sink.to_dict(), **sums.tally.result(decode)}


def _saebench(cfg, sums: EvalSums, store, bound, docs, sink, plan) -> dict:
    """eval.json's ``saebench``: the core metrics from the sums, then probing and absorption
    (``plan``: the families to probe and those skipped, from :func:`.bench_options.probe_plan`)."""
    core = sums.core.result(dict(sums.tally.counts)) if sums.core is not None else None
    probing = absorption = None
    if probing_on(cfg):
        probing = run_probing(cfg, store, bound.sae, sink.rule, docs, bound.tokenizer, *plan)
    if cfg.saebench.absorption:
        absorption = run_absorption(cfg, bound.model, bound.tokenizer, bound.sae, bound.hookpoint,
                                    sink.rule)
    return saebench_section(core, probing, absorption)


def run(cfg: EvalConfig, model=None, tokenizer=None) -> EvalResult:
    """Evaluate the SAE ``cfg.sae`` as ``cfg`` says; returns the result that is also written to
    the JSON (``cfg.out``), printed as a table and merged into the report card.

    ``model``/``tokenizer`` optionally replace loading ``cfg.model``.
    """
    cfg = with_run(cfg, "eval", ("sae", "store"))
    need(cfg, "sae", "an SAE directory")
    have_model = model is not None or cfg.model is not None
    check_options(cfg, have_model)
    check_saebench(cfg, have_model)
    store = ActivationStore(cfg.store) if cfg.store is not None else None
    sae_at = SaeAtHookpoint.find(cfg.sae, cfg.hookpoint, store)
    sae_dir, card, hookpoint = sae_at.dir, sae_at.card, sae_at.hookpoint
    docs = docs_of_split(cfg, sae_dir, card, store)  # before any model is loaded: cheap to refuse
    region_names, behaviour_names = _label_names(store)
    head = headline(card, region_names, sae_dir)
    plan = probe_plan(cfg, store, docs) if probing_on(cfg) else ((), {})
    _precheck_absorption(cfg, tokenizer)
    bound = bind_sae(sae_at, ModelSource.of(cfg), model, tokenizer, store=store,
                     need_model=have_model)
    model, tokenizer, sae, device = bound.model, bound.tokenizer, bound.sae, bound.device
    data_hash = bound.data_hash
    groups = TokenGroups(region_names, behaviour_names, trained=head.regions)
    sink = eval_sink_rule(store)

    sums = _run(cfg, model, tokenizer, store, docs, hookpoint, sae, groups, device, sink)
    all_stats: ReconstructionStats = sums.recon.stats[ALL]
    if sums.tally.counts["tokens"] == 0:
        source = cfg.corpus or cfg.store
        raise ThinksaeError(f"empty eval set: {source} yields no tokens")

    metrics = sums.recon.results()
    if sums.spliced is not None:
        metrics = _merge(metrics, sums.spliced.results())
    bench = _saebench(cfg, sums, store, bound, docs, sink, plan)
    out = Path(cfg.out) if cfg.out else sae_dir / "eval.json"
    png = out.with_name(f"{out.stem}.latent_frequency.png")
    histogram = frequency_histogram(all_stats.fire_counts, all_stats.tokens)
    data = EvalData(
        mode="model" if model is not None else "store", store=cfg.store, corpus=cfg.corpus,
        model=cfg.model or getattr(getattr(model, "config", None), "_name_or_path", None),
        tokens=sums.tally.counts["tokens"], split=cfg.split,
        traces=None if docs is None else len(docs),
        tokenizer_hash=data_hash, store_hash=store.hash if store is not None else None,
        corpus_hash=atomic.sha256_file(cfg.corpus)[:16] if cfg.corpus else None)
    result = EvalResult(str(sae_dir), detect_format(sae_dir), hookpoint, sae.d_in, sae.num_latents,
                        sae.cfg.k, data, head.to_dict(), metrics,
                        _sink_section(cfg, sink, sums, tokenizer), bench,
                        {"png": str(png), **histogram}, to_dict(cfg))
    title = f"{sae_dir.parent.name}/{sae_dir.name} ({hookpoint}), {all_stats.tokens} tokens"
    write_histogram_png(png, histogram, title)
    written = result.to_dict()
    atomic.write_json(out, written)
    if cfg.update_card:
        update_report_card(sae_dir, "eval", written)
    print_table(written)
    return result
