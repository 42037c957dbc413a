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
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from ..errors import ThinksaeError
from ..models import capture, dtype_name, resolve_hookpoint


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
    ):
        self.model, self.hookpoint = model, hookpoint
        resolve_hookpoint(model, hookpoint)
        self.docs = [list(map(int, d)) for d in docs if len(d) > 0]
        if not self.docs:
            raise ThinksaeError("no tokens to train on: every document is empty")
        self.model_batch_size = model_batch_size
        self.shuffle_tokens = shuffle_tokens
        self.device = next(model.parameters()).device
        probe = capture(model, hookpoint, torch.tensor([self.docs[0][:1]], device=self.device))
        blob = hashlib.sha256(json.dumps(self.docs).encode()).hexdigest()[:16]
        self.manifest = {
            "model": getattr(getattr(model, "config", None), "_name_or_path", "") or "model",
            "hookpoint": hookpoint,
            "d_in": int(probe[hookpoint].shape[-1]),
            "dtype": dtype_name(next(model.parameters()).dtype),
            "num_tokens": sum(len(d) for d in self.docs),
            "num_docs": len(self.docs),
            "docs_hash": blob,
            "model_batch_size": model_batch_size,
            "shuffle_tokens": shuffle_tokens,
            **(manifest or {}),
        }

    @classmethod
    def from_config(cls, cfg, device: torch.device) -> OnTheFlyActivations:
        """Load ``cfg.model`` and tokenize ``cfg.corpus`` (traces cut at ``cfg.max_length``)."""
        from pathlib import Path

        from ..atomic import sha256_file
        from ..corpus import read_traces, tokenize_trace
        from ..models import load_model, precheck_model
        from ..store import tokenizer_hash

        corpus = Path(cfg.corpus)
        if not corpus.is_file():
            raise ThinksaeError(f"corpus not found: {corpus}")
        traces = read_traces(corpus)
        if not traces:
            raise ThinksaeError(f"corpus {corpus} holds no traces")
        precheck_model(cfg.model, cfg.hookpoint)
        model, tokenizer = load_model(cfg.model, str(device), cfg.model_dtype, progress=cfg.progress)
        docs = [tokenize_trace(tokenizer, t, max_length=cfg.max_length).input_ids for t in traces]
        extra = {"model": cfg.model, "corpus": str(corpus),
                 "corpus_hash": sha256_file(corpus)[:16],
                 "tokenizer_hash": tokenizer_hash(tokenizer), "max_length": cfg.max_length}
        return cls(model, cfg.hookpoint, docs, cfg.model_batch_size, cfg.shuffle_tokens, extra)

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
                pieces[p] = acts[row, lo:hi].float()
        return torch.cat([pieces[p] for p in positions])

    def iter_batches(
        self, batch_size: int, seed: int = 0, start_batch: int = 0, rank: int = 0,
        world_size: int = 1,
    ) -> Iterator[Tensor]:
        """One pass of shuffled float32 batches ``[batch_size // world_size, d_in]``."""
        if batch_size % world_size:
            raise ThinksaeError(f"batch size {batch_size} is not divisible by {world_size} ranks")
        order = np.random.default_rng(seed).permutation(len(self.docs))
        lengths = np.array([len(self.docs[i]) for i in order], dtype=np.int64)
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
