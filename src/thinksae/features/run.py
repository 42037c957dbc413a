"""`thinksae analyze`: one pass of an SAE over a store (or a model over a corpus), then scores,
logit lens, ``features.jsonl``, ``stats.safetensors`` and the HTML dashboard."""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

from .. import atomic
from ..binding import ModelSource, bind_sae
from ..config import to_dict
from ..corpus.segment import Region, behaviour_names
from ..corpus.traces import read_traces
from ..errors import ThinksaeError
from ..runs import need, with_defaults, with_run
from ..sae.bound import SaeAtHookpoint
from ..sae.formats import read_report_card
from ..store.reader import ActivationStore
from .collect import FeatureCollector
from .config import AnalyzeConfig
from .dashboard import write_dashboard
from .logit_lens import lens_modules, logit_lens
from .reason_score import ReasonMatcher, read_vocab
from .report import ANALYSIS_FILE, FEATURES_FILE, STATS_FILE, VOCAB_FILE, rows
from .scores import score_columns, think_test_summary
from .sources import corpus_chunks, store_chunks
from .stats import FeatureStats
from .tokens import TokenInfo

FORMAT = "thinksae-features/1"


def _check_cfg(cfg: AnalyzeConfig) -> None:
    if (cfg.store is None) == (cfg.corpus is None):
        raise ThinksaeError("give exactly one of --store (an activation store) or --corpus "
                            "(traces to run --model over)")
    for name in ("top_n", "token_slots", "min_fires", "lens_k", "chunk_tokens", "batch_size",
                 "max_length"):
        if getattr(cfg, name) < 1:
            raise ThinksaeError(f"--{name} must be >= 1 (got {getattr(cfg, name)})")
    if cfg.window < 0 or cfg.max_pages < 0 or cfg.alpha < 0:
        raise ThinksaeError("--window, --max_pages and --alpha must be >= 0")
    if not 0 < cfg.think_fdr < 1:
        raise ThinksaeError(f"--think_fdr must be between 0 and 1 (got {cfg.think_fdr})")
    read_vocab(cfg.reason_vocab, cfg.reason_vocab_match)  # a bad vocabulary fails before loading


def max_regions(sae_dir: Path | None, regions: list[str] | None) -> list[str] | None:
    """The regions whose tokens the SAE was trained on (its report card's ``training.regions``),
    over which ``max_act`` and the top contexts are taken; None (all tokens) without a report
    card, when it trained on all tokens, or when the data has no region labels."""
    if sae_dir is None or regions is None:
        return None
    trained = (read_report_card(sae_dir).get("training") or {}).get("regions")
    if not trained:
        return None
    names = [r.strip() for r in str(trained).split(",") if r.strip()]
    unknown = [r for r in names if r not in regions]
    if unknown:
        raise ThinksaeError(f"the SAE was trained on regions {names}, but the data's regions are "
                            f"{regions}: {unknown} unknown")
    return names


class _Source:
    """Where the tokens come from (a store, or a model over a corpus), with the SAE bound and
    checked against them before anything runs (:func:`thinksae.binding.bind_sae`)."""

    def __init__(self, cfg: AnalyzeConfig, sae_at: SaeAtHookpoint, store, model, tokenizer):
        self.hookpoint, self.store = sae_at.hookpoint, store
        self.trace_ids: list[str] | None = None
        if store is not None:
            self._from_store(cfg, sae_at, store, model, tokenizer)
        else:
            self._from_corpus(cfg, sae_at, model, tokenizer)

    def _from_store(self, cfg: AnalyzeConfig, sae_at, store, model, tokenizer) -> None:
        names = store.manifest.get("regions")
        self.regions = names if names and "think" in names else None
        if self.regions is None and not cfg.allow_no_regions:
            raise ThinksaeError(f"store {cfg.store} has no prompt/think/answer region labels; "
                                "harvest it again, or pass --allow_no_regions to skip the "
                                "region scores")
        source = ModelSource.of(cfg, spec=cfg.model or store.manifest.get("model"))
        self.bound = bind_sae(sae_at, source, model, tokenizer, store=store,
                              need_model=cfg.logit_lens, sae_dtype=None)
        self.behaviours = store.manifest.get("behaviours") or behaviour_names()
        self.info = {"store": str(cfg.store), "store_hash": store.hash,
                     "model": store.manifest.get("model"), "hookpoint": store.hookpoint}
        self.trace_ids = [t for s in store.manifest["shards"] for t in s.get("trace_ids", [])]
        self.total = min(store.num_tokens, cfg.max_tokens or store.num_tokens)

    def _from_corpus(self, cfg: AnalyzeConfig, sae_at, model, tokenizer) -> None:
        corpus = Path(cfg.corpus)
        if not corpus.is_file():
            raise ThinksaeError(f"corpus not found: {corpus}")
        if model is None and not cfg.model:
            raise ThinksaeError("--corpus needs --model (the model to run over the traces)")
        self.bound = bind_sae(sae_at, ModelSource.of(cfg), model, tokenizer, sae_dtype=None)
        self.traces = read_traces(corpus)[: cfg.limit]
        if not self.traces:
            raise ThinksaeError(f"corpus {corpus} holds no traces")
        self.trace_ids = [t.id for t in self.traces]
        self.regions = [r.name.lower() for r in Region]
        self.behaviours = behaviour_names()
        self.info = {"corpus": str(corpus), "model": cfg.model, "hookpoint": self.hookpoint}
        self.total = None

    @property
    def model(self):
        return self.bound.model

    @property
    def tokenizer(self):
        return self.bound.tokenizer

    def chunks(self, cfg: AnalyzeConfig):
        if cfg.store is not None:
            return store_chunks(self.store, cfg.chunk_tokens, cfg.max_tokens)
        return corpus_chunks(self.model, self.tokenizer, self.traces, self.hookpoint,
                             cfg.batch_size, cfg.max_length)


def stream_pass(chunks, sae, collector: FeatureCollector, total: int | None = None,
            progress: bool = False, no_regions: bool = False) -> tuple[FeatureStats, dict]:
    """Encode each chunk with ``sae`` and feed ``collector``; returns the statistics and timing."""
    bar = tqdm(total=total, unit="tok", desc="analyze", disable=not progress)
    t0, encode_s, n = time.perf_counter(), 0.0, 0
    with torch.inference_mode():
        for chunk in chunks:
            t1 = time.perf_counter()
            enc = sae.encode(chunk["activations"].to(sae.device, sae.dtype))
            encode_s += time.perf_counter() - t1
            labels = {k: chunk[k] for k in ("token_ids", "regions", "behaviours", "doc_index",
                                            "positions", "sinks") if k in chunk}
            if no_regions:
                labels["regions"] = torch.zeros_like(labels["regions"])
            collector.update({**labels, "acts": enc.latent_acts, "idx": enc.latent_indices})
            n += len(labels["token_ids"])
            bar.update(len(labels["token_ids"]))
        stats = collector.finish()
    bar.close()
    if n == 0:
        raise ThinksaeError("no tokens to analyse")
    wall = time.perf_counter() - t0
    return stats, {"tokens": n, "seconds": wall, "encode_seconds": encode_s,
                   "tokens_per_s": n / wall if wall else None}


def _write(cfg: AnalyzeConfig, out: Path, src: _Source, sae, stats, info, feature_rows,
           columns, timing, at_max, lens) -> None:
    """Every file of the analysis (module docstring), the dashboard last."""
    stats.save(out / STATS_FILE)
    atomic.write_json(out / VOCAB_FILE, info.strings)
    with atomic.atomic_path(out / FEATURES_FILE) as tmp:
        with open(tmp, "w") as f:
            for row in feature_rows:
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
    atomic.write_json(out / ANALYSIS_FILE, {
        "format": FORMAT, "config": to_dict(cfg),
        "sae": {"path": str(src.bound.sae_dir), "hookpoint": src.hookpoint,
                "num_latents": sae.num_latents, "k": sae.cfg.k, "d_in": sae.d_in},
        "source": src.info, "meta": stats.meta, "timing": timing,
        "trace_ids": src.trace_ids, "logit_lens": lens is not None,
        "max_regions": at_max or "all", "think_test": think_test_summary(stats, columns, cfg.think_fdr),
    })
    if cfg.dashboard:
        write_dashboard(out, feature_rows, stats, info.strings, src.trace_ids, cfg.max_pages)


def run(cfg: AnalyzeConfig, model=None, tokenizer=None) -> Path:
    """Run the analysis; returns the output directory. Bad input fails before anything is written."""
    cfg = with_defaults(with_run(cfg, "analyze", ("sae", "store")), out="runs/features")
    need(cfg, "sae", "an SAE directory")
    _check_cfg(cfg)
    store = ActivationStore(cfg.store) if cfg.store is not None else None
    src = _Source(cfg, SaeAtHookpoint.find(cfg.sae, cfg.hookpoint, store), store, model, tokenizer)
    sae = src.bound.sae
    info = TokenInfo.from_tokenizer(src.tokenizer)
    matcher = ReasonMatcher.from_tokenizer(
        src.tokenizer, read_vocab(cfg.reason_vocab, cfg.reason_vocab_match), cfg.reason_vocab_match)
    modules = lens_modules(src.model, sae.d_in) if cfg.logit_lens else None  # width checked now
    at_max = max_regions(src.bound.sae_dir, src.regions)
    collector = FeatureCollector(
        sae.num_latents, info, matcher, regions=src.regions or ["all"], behaviours=src.behaviours,
        top_n=cfg.top_n, window=cfg.window, token_slots=cfg.token_slots, device=sae.device,
        max_regions=at_max)
    stats, timing = stream_pass(src.chunks(cfg), sae, collector, src.total, cfg.progress,
                                no_regions=src.regions is None)
    columns = score_columns(stats, cfg.min_fires, cfg.alpha, cfg.think_fdr)
    lens = None
    if modules is not None:
        alive = torch.nonzero(stats.tensors["fires"] > 0).flatten()
        lens = logit_lens(src.model, sae.W_dec.detach(), alive, cfg.lens_k)
        stats.tensors.update(lens)
    out = Path(cfg.out)
    _write(cfg, out, src, sae, stats, info, rows(columns, info.strings, lens), columns, timing,
           at_max, lens)
    return out
