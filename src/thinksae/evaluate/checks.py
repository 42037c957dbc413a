"""Input checks of `thinksae eval`: each bad input is refused with one line before anything runs."""

from __future__ import annotations

from pathlib import Path

from ..atomic import sha256_file
from ..corpus.segment import Region
from ..corpus.traces import iter_traces
from ..errors import ThinksaeError
from ..store.split import SPLITS


def check_options(cfg, have_model: bool) -> None:
    """Which data to evaluate on, and the numeric options."""
    if cfg.corpus is not None and not have_model:
        raise ThinksaeError("--corpus needs --model (its tokenizer and the spliced losses)")
    if cfg.store is None and not have_model:
        raise ThinksaeError("give --store, or --model with --corpus (or --store) to evaluate on")
    if have_model and cfg.store is None and cfg.corpus is None:
        raise ThinksaeError("--model needs --corpus or --store to evaluate on")
    if cfg.corpus is not None and cfg.store is not None:
        raise ThinksaeError("give either --corpus or --store, not both")
    if cfg.corpus is not None and not Path(cfg.corpus).is_file():
        raise ThinksaeError(f"corpus not found: {cfg.corpus}")
    if cfg.max_tokens is not None and cfg.max_tokens < 1:
        raise ThinksaeError(f"empty eval set: max_tokens must be >= 1 (got {cfg.max_tokens})")
    for name in ("max_length", "batch_size", "chunk_tokens"):
        if getattr(cfg, name) < 1:
            raise ThinksaeError(f"{name} must be >= 1 (got {getattr(cfg, name)})")
    if cfg.splice_regions is not None:
        if not have_model:
            raise ThinksaeError("--splice_regions needs --model (it is about the spliced losses)")
        splice_region_names(cfg.splice_regions)


def splice_region_names(text: str) -> list[str]:
    """The region names of ``--splice_regions`` (comma-separated), each a known region."""
    names = [r.name.lower() for r in Region]
    wanted = [n.strip() for n in text.split(",") if n.strip()]
    if not wanted or any(n not in names for n in wanted):
        raise ThinksaeError(f"unknown splice_regions {text!r} (regions: {', '.join(names)})")
    return wanted


def docs_of_split(cfg, sae_dir: Path, card: dict, store):
    """Document indices of ``cfg.split`` (None for all): the traces the SAE's training held out
    (``heldout``, as its report card lists them) or trained on (``train``). Only on the very data
    it was trained on: the same store, or the corpus that store was harvested from."""
    import numpy as np


    if cfg.split not in SPLITS:
        raise ThinksaeError(f"unknown split {cfg.split!r} (use {', '.join(SPLITS)})")
    if cfg.split == "all":
        return None
    holdout = (card.get("training") or {}).get("holdout") or 0.0
    if not holdout:
        raise ThinksaeError(f"--split {cfg.split}: the SAE in {sae_dir} was trained without a "
                            "holdout (its report card has none); train it with --holdout")
    data = card.get("data") or {}
    if store is not None:
        if data.get("hash") != store.hash:
            raise ThinksaeError(f"--split {cfg.split}: store {store.path} is not the data the SAE "
                                f"in {sae_dir} was trained on (store hash {store.hash}, trained "
                                f"on {data.get('hash')})")
        ids = store.trace_ids
    else:
        corpus_hash = sha256_file(cfg.corpus)[:16]
        if data.get("corpus_hash") != corpus_hash:
            raise ThinksaeError(f"--split {cfg.split}: corpus {cfg.corpus} is not the one the SAE "
                                f"in {sae_dir} was trained on (hash {corpus_hash}, trained on "
                                f"{data.get('corpus_hash')})")

        ids = [t.id for t in iter_traces(cfg.corpus)]
    listed = data.get("heldout_traces")
    if not listed:
        if store is None:
            raise ThinksaeError(f"--split {cfg.split}: the report card of {sae_dir} lists no "
                                "held-out traces; evaluate on its store (--store) instead")
        # A card written before the ids were listed: the trainer chose them from this very store
        # by this rule, so choosing again gives the same traces.
        return store.split_docs(holdout, cfg.split)
    held = set(listed)
    in_split = [(i in held) == (cfg.split == "heldout") for i in ids]
    return np.flatnonzero(in_split).astype(np.int64)
