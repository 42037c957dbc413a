"""`thinksae analyze`: one pass of an SAE over a store (or a model over a corpus), then scores,
logit lens, ``features.jsonl``, ``stats.safetensors`` and the HTML dashboard."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from .. import atomic
from ..config import to_dict
from ..errors import ThinksaeError
from ..sae.bound import SaeAtHookpoint
from .collect import FeatureCollector
from .reason_score import ALPHA, ReasonMatcher, read_vocab
from .report import ANALYSIS_FILE, FEATURES_FILE, STATS_FILE, VOCAB_FILE, rows
from .scores import FDR, score_columns, think_test_summary
from .stats import FeatureStats
from .tokens import TokenInfo

FORMAT = "thinksae-features/1"


@dataclass
class AnalyzeConfig:
    """Options of `thinksae analyze`."""

    sae: str = "runs/sae"
    """SAE directory (sparsify or SAELens layout), or a run directory holding SAEs per hookpoint."""
    hookpoint: str | None = None
    """Which SAE of a run directory; with --corpus, the hookpoint to capture (default: the SAE
    directory's name, e.g. layers.10 or layers.10.mlp)."""
    store: str | None = None
    """Activation store of the SAE's hookpoint (from `thinksae harvest`)."""
    corpus: str | None = None
    """Instead of a store: trace corpus (JSONL) to run --model over."""
    model: str | None = None
    """Model for --corpus and for the logit lens (default with --store: the store's model)."""
    tokenizer: str | None = None
    """Load the tokenizer from another spec (default: the model's)."""
    out: str = "runs/features"
    """Output directory: features.jsonl, stats.safetensors, analysis.json, dashboard/."""
    top_n: int = 20
    """Top activating contexts kept per feature."""
    window: int = 10
    """Tokens of context on each side of a top activation."""
    token_slots: int = 64
    """Vocabulary items whose activation mass is tracked per feature (exact up to this many)."""
    min_fires: int = 10
    """Features firing on fewer tokens are labelled `rare` instead of judged for selectivity."""
    reason_vocab: str | None = None
    """ReasonScore vocabulary: JSON list of strings or {group: [strings]} (default: the paper's
    10 groups; the authors' extraction/reason_tokens.json can be given as it is)."""
    reason_vocab_match: str = "reference"
    """How vocabulary strings match tokens: reference (the authors' code: each string's exact
    token ids anywhere, no word-boundary test) or wide (lower/Capital/UPPER/Title, with and
    without a leading space, whole words only)."""
    alpha: float = ALPHA
    """Exponent of the ReasonScore's entropy term."""
    think_fdr: float = FDR
    """False discovery rate for think_specific (Benjamini-Hochberg over the features tested)."""
    logit_lens: bool = True
    """Compute each feature's logit lens (needs the model's weights)."""
    lens_k: int = 10
    """Promoted and suppressed tokens listed per feature."""
    dashboard: bool = True
    """Write the static HTML dashboard (dashboard/index.html)."""
    max_pages: int = 3000
    """Feature pages written (alive features, taken in turn from the top of each score's
    ranking: ReasonScore, think/other rate and mean ratios, trace frequency, format share)."""
    chunk_tokens: int = 8192
    """Tokens encoded per step."""
    batch_size: int = 8
    """With --corpus: traces per forward pass."""
    max_length: int = 2048
    """With --corpus: tokens kept per trace."""
    limit: int | None = None
    """With --corpus: use only the first N traces."""
    max_tokens: int | None = None
    """With --store: stop after this many tokens."""
    allow_no_regions: bool = False
    """Analyse a store without prompt/think/answer labels (the region scores are left out)."""
    device: str = "auto"
    """cpu, cuda, cuda:N or auto."""
    dtype: str = "auto"
    """Model dtype (with --corpus or for the logit lens): auto, float32, bfloat16, float16."""
    progress: bool = True
    """Show a progress bar."""


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
    from ..sae.formats import read_report_card

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
    """Where the tokens come from, checked against the SAE before anything runs."""

    def __init__(self, cfg: AnalyzeConfig, bound: SaeAtHookpoint, store, model, tokenizer):
        from ..corpus import Region, behaviour_names

        self.model, self.tokenizer = model, tokenizer
        self.trace_ids: list[str] | None = None
        self.hookpoint = bound.hookpoint
        if store is not None:
            from ..models import load_tokenizer

            self.store = store
            bound.check_store(store)
            names = store.manifest.get("regions")
            self.regions = names if names and "think" in names else None
            if self.regions is None and not cfg.allow_no_regions:
                raise ThinksaeError(f"store {cfg.store} has no prompt/think/answer region labels; "
                                    "harvest it again, or pass --allow_no_regions to skip the "
                                    "region scores")
            self.behaviours = store.manifest.get("behaviours") or behaviour_names()
            self.info = {"store": str(cfg.store), "store_hash": store.hash,
                         "model": store.manifest.get("model"), "hookpoint": store.hookpoint}
            spec = cfg.model or store.manifest.get("model")
            if self.model is None and cfg.logit_lens:
                from ..models import load_model

                self.model, tok = load_model(spec, cfg.device, cfg.dtype, tokenizer=cfg.tokenizer,
                                             progress=cfg.progress)
                self.tokenizer = self.tokenizer or tok
            if self.tokenizer is None:
                self.tokenizer = load_tokenizer(cfg.tokenizer or spec)
            bound.check_tokenizers(self.tokenizer, store)
            self.trace_ids = [t for s in store.manifest["shards"] for t in s.get("trace_ids", [])]
            self.total = min(store.num_tokens, cfg.max_tokens or store.num_tokens)
            return
        from ..corpus import read_traces
        from ..models import load_model

        corpus = Path(cfg.corpus)
        if not corpus.is_file():
            raise ThinksaeError(f"corpus not found: {corpus}")
        bound.precheck(cfg.model, loaded=self.model)
        if self.model is None:
            if not cfg.model:
                raise ThinksaeError("--corpus needs --model (the model to run over the traces)")
            self.model, tok = load_model(cfg.model, cfg.device, cfg.dtype, tokenizer=cfg.tokenizer,
                                         progress=cfg.progress)
            self.tokenizer = self.tokenizer or tok
        bound.check_model(self.model)
        bound.check_tokenizers(self.tokenizer)
        self.traces = read_traces(corpus)[: cfg.limit]
        if not self.traces:
            raise ThinksaeError(f"corpus {corpus} holds no traces")
        self.trace_ids = [t.id for t in self.traces]
        self.regions = [r.name.lower() for r in Region]
        self.behaviours = behaviour_names()
        self.info = {"corpus": str(corpus), "model": cfg.model, "hookpoint": self.hookpoint}
        self.total = None

    def chunks(self, cfg: AnalyzeConfig):
        from .sources import corpus_chunks, store_chunks

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
                                            "positions")}
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


def analyze(cfg: AnalyzeConfig, model=None, tokenizer=None) -> Path:
    """Run the analysis; returns the output directory. Bad input fails before anything is written."""
    from ..models import resolve_device

    _check_cfg(cfg)
    store = None
    if cfg.store is not None:
        from ..store import ActivationStore

        store = ActivationStore(cfg.store)
    bound = SaeAtHookpoint.find(cfg.sae, cfg.hookpoint, store)
    sae_dir, sae_hook = bound.dir, bound.hookpoint
    sae = bound.load(resolve_device(cfg.device), dtype=None)
    src = _Source(cfg, bound, store, model, tokenizer)
    info = TokenInfo.from_tokenizer(src.tokenizer)
    matcher = ReasonMatcher.from_tokenizer(
        src.tokenizer, read_vocab(cfg.reason_vocab, cfg.reason_vocab_match), cfg.reason_vocab_match)
    lens_modules = None
    if cfg.logit_lens:
        from .logit_lens import lens_modules as _lm

        lens_modules = _lm(src.model, sae.d_in)  # checks the width before the long pass
    at_max = max_regions(sae_dir, src.regions)
    collector = FeatureCollector(
        sae.num_latents, info, matcher, regions=src.regions or ["all"], behaviours=src.behaviours,
        top_n=cfg.top_n, window=cfg.window, token_slots=cfg.token_slots, device=sae.device,
        max_regions=at_max)
    stats, timing = stream_pass(src.chunks(cfg), sae, collector, src.total, cfg.progress,
                            no_regions=src.regions is None)
    columns = score_columns(stats, cfg.min_fires, cfg.alpha, cfg.think_fdr)
    lens = None
    if lens_modules is not None:
        from .logit_lens import logit_lens

        alive = torch.nonzero(stats.tensors["fires"] > 0).flatten()
        lens = logit_lens(src.model, sae.W_dec.detach(), alive, cfg.lens_k)
        stats.tensors.update(lens)
    feature_rows = rows(columns, info.strings, lens)

    out = Path(cfg.out)
    stats.save(out / STATS_FILE)
    atomic.write_json(out / VOCAB_FILE, info.strings)
    with atomic.atomic_path(out / FEATURES_FILE) as tmp:
        import json

        with open(tmp, "w") as f:
            for row in feature_rows:
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
    atomic.write_json(out / ANALYSIS_FILE, {
        "format": FORMAT, "config": to_dict(cfg),
        "sae": {"path": str(sae_dir), "hookpoint": sae_hook,
                "num_latents": sae.num_latents, "k": sae.cfg.k, "d_in": sae.d_in},
        "source": src.info, "meta": stats.meta, "timing": timing,
        "trace_ids": src.trace_ids, "logit_lens": lens is not None,
        "max_regions": at_max or "all", "think_test": think_test_summary(stats, columns, cfg.think_fdr),
    })
    if cfg.dashboard:
        from .dashboard import write_dashboard

        write_dashboard(out, feature_rows, stats, info.strings, src.trace_ids, cfg.max_pages)
    return out
