"""Train without a store: run the model on the corpus and serve shuffled hookpoint activations.

The documents of an epoch are put in a seeded order and read as one stream of tokens. The stream
is cut into windows of ``shuffle_tokens`` (rounded up to whole batches); each window's tokens are
captured from the model (only the documents that overlap it are run, padding dropped), shuffled
with a generator seeded by (seed, window, rank) and served as batches. So a batch is a function
of the seed and its index alone: resuming at batch ``start_batch`` runs the model only from the
window that holds it, and the run continues exactly as it would have.

Under torchrun each window is split into ``world_size`` contiguous parts, one per rank, and
each rank serves its ``batch_size / world_size`` rows of every batch from its own part (so
ranks do not repeat each other's forwards; the batches differ from a one-process run's).

With ``keep`` masks (``--regions``) only the kept tokens make up the stream; each document is
still run from its start (up to its last kept token), so kept tokens see their full context.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from ..atomic import sha256_file
from ..corpus.segment import tokenize_trace
from ..corpus.traces import read_traces
from ..errors import ThinksaeError
from ..models.hookpoints import capture, resolve_hookpoint
from ..models.loading import dtype_name, load_model
from ..models.precheck import precheck_model
from ..models.tokenizer import tokenizer_hash
from .config import REGION_NAMES, region_list


class OnTheFlyActivations:
    """Hookpoint activations of ``model`` over token-id documents, served like a store."""

    def __init__(
        self,
        model: nn.Module,
        hookpoint: str,
        docs: Sequence[Sequence[int]],
        model_batch_size: int = 8,
        shuffle_tokens: int = 65536,
        manifest: dict | None = None,
        keep: Sequence[Sequence[bool]] | None = None,
    ):
        self.model, self.hookpoint = model, hookpoint
        resolve_hookpoint(model, hookpoint)
        self._set_docs(docs, keep)
        self.model_batch_size = model_batch_size
        self.shuffle_tokens = shuffle_tokens
        self.device = next(model.parameters()).device
        probe = capture(model, hookpoint, torch.tensor([self.docs[0][:1]], device=self.device))
        kept = None if keep is None else [k.tolist() for k in self.kept]
        blob = json.dumps(self.docs if kept is None else [self.docs, kept])
        blob = hashlib.sha256(blob.encode()).hexdigest()[:16]
        self.manifest = {
            "model": getattr(getattr(model, "config", None), "_name_or_path", "") or "model",
            "hookpoint": hookpoint,
            "d_in": int(probe[hookpoint].shape[-1]),
            "dtype": dtype_name(next(model.parameters()).dtype),
            "num_tokens": sum(len(k) for k in self.kept),
            "num_docs": len(self.docs),
            "docs_hash": blob,
            "model_batch_size": model_batch_size,
            "shuffle_tokens": shuffle_tokens,
            **(manifest or {}),
        }

    def _set_docs(self, docs: Sequence[Sequence[int]], keep: Sequence[Sequence[bool]] | None):
        """``docs`` (cut after their last kept token) and ``kept``, the positions kept in each;
        documents without kept tokens are dropped."""
        docs = [list(map(int, d)) for d in docs]
        if keep is None:
            kept = [np.arange(len(d)) for d in docs]
        else:
            if [len(k) for k in keep] != [len(d) for d in docs]:
                raise ThinksaeError("keep masks must match the documents' lengths")
            kept = [np.flatnonzero(np.asarray(k, dtype=bool)) for k in keep]
        pairs = [(d[: int(k[-1]) + 1], k) for d, k in zip(docs, kept, strict=True) if len(k)]
        if not pairs:
            what = "every document is empty" if keep is None else "no token is in the regions"
            raise ThinksaeError(f"no tokens to train on: {what}")
        self.docs = [d for d, _ in pairs]
        self.kept = [k for _, k in pairs]

    @classmethod
    def from_config(cls, cfg, device: torch.device) -> OnTheFlyActivations:
        """Load ``cfg.model`` and tokenize ``cfg.corpus`` (traces cut at ``cfg.max_length``)."""
        from pathlib import Path


        corpus = Path(cfg.corpus)
        if not corpus.is_file():
            raise ThinksaeError(f"corpus not found: {corpus}")
        traces = read_traces(corpus)
        if not traces:
            raise ThinksaeError(f"corpus {corpus} holds no traces")
        precheck_model(cfg.model, cfg.hookpoint)
        model, tokenizer = load_model(cfg.model, str(device), cfg.model_dtype, progress=cfg.progress)
        tokenized = [tokenize_trace(tokenizer, t, max_length=cfg.max_length) for t in traces]
        extra = {"model": cfg.model, "corpus": str(corpus),
                 "corpus_hash": sha256_file(corpus)[:16],
                 "tokenizer_hash": tokenizer_hash(tokenizer), "max_length": cfg.max_length}
        keep = None
        regions = region_list(cfg.regions)
        if regions:
            codes = [REGION_NAMES.index(r) for r in regions]
            keep = [[r in codes for r in t.regions] for t in tokenized]
            extra["region_filter"] = regions
        docs = [t.input_ids for t in tokenized]
        return cls(model, cfg.hookpoint, docs, cfg.model_batch_size, cfg.shuffle_tokens, extra,
                   keep)

    @property
    def d_in(self) -> int:
        return int(self.manifest["d_in"])

    @property
    def num_tokens(self) -> int:
        return int(self.manifest["num_tokens"])

    @property
    def hash(self) -> str:
        """Hash of the manifest (model, hookpoint, documents, shuffling)."""
        blob = json.dumps(self.manifest, sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]

    @torch.inference_mode()
    def _stream_slice(self, order: np.ndarray, starts: np.ndarray, a: int, b: int) -> Tensor:
        """Activations (float32) of stream tokens ``[a, b)``, in stream order."""
        first = int(np.searchsorted(starts, a, side="right")) - 1
        last = int(np.searchsorted(starts, b, side="left"))  # exclusive, in stream positions
        positions = list(range(first, last))
        pieces: dict[int, Tensor] = {}
        by_length = sorted(positions, key=lambda p: -len(self.docs[order[p]]))
        for i in range(0, len(by_length), self.model_batch_size):
            group = by_length[i : i + self.model_batch_size]
            width = max(len(self.docs[order[p]]) for p in group)
            ids = torch.zeros((len(group), width), dtype=torch.long)
            mask = torch.zeros((len(group), width), dtype=torch.long)
            for row, p in enumerate(group):
                doc = self.docs[order[p]]
                ids[row, : len(doc)] = torch.tensor(doc)
                mask[row, : len(doc)] = 1
            acts = capture(self.model, self.hookpoint, ids.to(self.device), mask.to(self.device))
            acts = acts[self.hookpoint]
            for row, p in enumerate(group):
                lo = max(a, int(starts[p])) - int(starts[p])
                hi = min(b, int(starts[p + 1])) - int(starts[p])
                where = torch.from_numpy(self.kept[order[p]][lo:hi]).to(acts.device)
                pieces[p] = acts[row, where].float()
        return torch.cat([pieces[p] for p in positions])

    def iter_batches(
        self, batch_size: int, seed: int = 0, start_batch: int = 0, rank: int = 0,
        world_size: int = 1,
    ) -> Iterator[Tensor]:
        """One pass of shuffled float32 batches ``[batch_size // world_size, d_in]``."""
        if batch_size % world_size:
            raise ThinksaeError(f"batch size {batch_size} is not divisible by {world_size} ranks")
        order = np.random.default_rng(seed).permutation(len(self.docs))
        lengths = np.array([len(self.kept[i]) for i in order], dtype=np.int64)
        starts = np.concatenate([[0], np.cumsum(lengths)])
        per_window = -(-self.shuffle_tokens // batch_size)
        window = per_window * batch_size
        n_batches = int(starts[-1]) // batch_size
        per_rank = batch_size // world_size
        for w in range(start_batch // per_window, -(-n_batches // per_window)):
            first_batch = w * per_window
            count = min(per_window, n_batches - first_batch)
            part = count * per_rank
            a = w * window + rank * part
            acts = self._stream_slice(order, starts, a, a + part)
            perm = torch.from_numpy(np.random.default_rng([seed, w, rank]).permutation(part))
            for j in range(max(0, start_batch - first_batch), count):
                yield acts[perm[j * per_rank : (j + 1) * per_rank]]
