"""Read an activation store: memory-mapped shards, seeded shuffled batches, sequential chunks."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Iterator
from functools import cached_property
from pathlib import Path

import numpy as np
import torch

from ..errors import ThinksaeError
from ..sinks import SinkRule
from .shard_parts import FORMAT, MANIFEST
from .shards import memmap_shard, to_torch
from .split import split_docs

TOKEN_LABELS = ("token_ids", "regions", "behaviours", "doc_index", "positions")


class ActivationStore:
    """One hookpoint's harvested activations with per-token labels.

    Shards are memory-mapped: opening a store reads only its manifest, and batches read only the
    rows they need.
    """

    def __init__(self, path: str | Path, allow_incomplete: bool = False):
        self.path = Path(path)
        manifest_path = self.path / MANIFEST
        if not manifest_path.exists():
            raise ThinksaeError(f"no activation store at {self.path} (no {MANIFEST})")
        try:
            self.manifest: dict = json.loads(manifest_path.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise ThinksaeError(f"cannot read {manifest_path}: {e}") from None
        if self.manifest.get("format") != FORMAT:
            raise ThinksaeError(f"{manifest_path} is not a thinksae store manifest ({FORMAT})")
        if not self.manifest["complete"] and not allow_incomplete:
            raise ThinksaeError(
                f"store {self.path} is incomplete (harvest interrupted?); "
                "run the same `thinksae harvest` again to finish it"
            )
        if self.num_tokens == 0:
            raise ThinksaeError(f"store {self.path} holds no tokens")
        counts = [s["num_tokens"] for s in self.manifest["shards"]]
        self._offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)

    @property
    def d_in(self) -> int:
        return int(self.manifest["d_in"])

    @property
    def num_tokens(self) -> int:
        return int(self.manifest["num_tokens"])

    @property
    def hookpoint(self) -> str:
        return self.manifest["hookpoint"]

    @property
    def dtype(self) -> str:
        return self.manifest["dtype"]

    @cached_property
    def trace_ids(self) -> list[str]:
        """The id of every document (trace) in store order; a store written before ids were
        recorded numbers its documents instead."""
        ids: list[str] = []
        for shard in self.manifest["shards"]:
            names = shard.get("trace_ids")
            ids += names if names else [str(shard["first_doc"] + j) for j in range(shard["num_docs"])]
        return ids

    def split_docs(self, holdout: float, split: str) -> np.ndarray | None:
        """Document indices of ``split`` (all, train or heldout) for a held-out share
        ``holdout`` of the traces (see :mod:`thinksae.store.split`); None for all."""
        return split_docs(self.trace_ids, holdout, split)

    @cached_property
    def hash(self) -> str:
        """Hash of the manifest: names the exact data an SAE was trained on."""
        blob = json.dumps(self.manifest, sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]

    @cached_property
    def special(self) -> np.ndarray:
        """Bool per token: the ``special`` region (control tokens: BOS, role and think markers)."""
        names = self.manifest.get("regions") or []
        if "special" not in names:
            return np.zeros(self.num_tokens, dtype=bool)
        return self.labels("regions") == names.index("special")

    @cached_property
    def norms(self) -> np.ndarray:
        """‖x‖ of every token (float32), in store order (one pass over the shards)."""
        return np.concatenate([
            to_torch(self._shard(i)["activations"], self.dtype).float().norm(dim=-1).numpy()
            for i in range(len(self.manifest["shards"]))])

    @cached_property
    def sink_rule(self) -> SinkRule:
        """The sink rule of this store (:mod:`thinksae.sinks`): the one its manifest records (its
        norm multiple and the median norm of its non-special tokens), else the default multiple
        with the median measured here."""
        rule = SinkRule.from_dict(self.manifest.get("sink_rule"))
        if rule.median_norm is None:
            rule = rule.with_median(torch.from_numpy(self.norms), torch.from_numpy(self.special))
        return rule

    @cached_property
    def sinks(self) -> np.ndarray:
        """Bool per token: a sink by the store's :attr:`sink_rule` (special, or norm above the
        multiple of the median)."""
        return self.sink_rule.mask(torch.from_numpy(self.norms),
                                   torch.from_numpy(self.special)).numpy()

    def check_shards(self) -> None:
        """Every shard is there and whole (its header read, each tensor inside the file): a
        one-line error now rather than midway through a pass."""
        for i in range(len(self.manifest["shards"])):
            self._shard(i)

    def _shard(self, i: int) -> dict[str, np.ndarray]:
        cache = self.__dict__.setdefault("_maps", {})
        if i not in cache:
            path = self.path / self.manifest["shards"][i]["file"]
            if not path.exists():
                raise ThinksaeError(f"store {self.path} is missing shard {path.name}")
            cache[i] = memmap_shard(path)
        return cache[i]

    def labels(self, name: str) -> np.ndarray:
        """One label column (e.g. ``regions``) for every token, in store order."""
        if name not in TOKEN_LABELS:
            raise ThinksaeError(f"unknown label {name!r} (one of {', '.join(TOKEN_LABELS)})")
        return np.concatenate([np.asarray(self._shard(i)[name])
                               for i in range(len(self.manifest["shards"]))])

    def gather(self, indices: np.ndarray) -> torch.Tensor:
        """Activations (float32) of the given global token indices, in the given order."""
        order = np.argsort(indices, kind="stable")
        sorted_idx = indices[order]
        shard_of = np.searchsorted(self._offsets, sorted_idx, side="right") - 1
        parts = []
        for s in np.unique(shard_of):
            local = sorted_idx[shard_of == s] - self._offsets[s]
            parts.append(to_torch(self._shard(int(s))["activations"][local], self.dtype))
        rows = torch.cat(parts).float()
        out = torch.empty_like(rows)
        out[torch.from_numpy(order)] = rows
        return out

    def token_indices(self, regions: Iterable[str] | None = None,
                      docs: np.ndarray | None = None, keep: np.ndarray | None = None
                      ) -> np.ndarray:
        """Global indices of the tokens in the given regions and documents (all when None) and,
        given ``keep`` (bool per token of the store, e.g. not an attention sink), kept by it."""
        keep = np.ones(self.num_tokens, dtype=bool) if keep is None else np.array(keep, dtype=bool)
        if keep.shape != (self.num_tokens,):
            raise ThinksaeError(f"keep mask of shape {keep.shape} for a store of "
                                f"{self.num_tokens} tokens")
        if regions is not None:
            names = self.manifest["regions"]
            unknown = [r for r in regions if r not in names]
            if unknown:
                raise ThinksaeError(f"unknown regions {unknown} (store has {names})")
            keep &= np.isin(self.labels("regions"), [names.index(r) for r in regions])
        if docs is not None:
            keep &= np.isin(self.labels("doc_index"), docs)
        return np.flatnonzero(keep).astype(np.int64)

    def num_batches(self, batch_size: int, regions: Iterable[str] | None = None,
                    docs: np.ndarray | None = None, keep: np.ndarray | None = None) -> int:
        """Full batches in one pass."""
        return len(self.token_indices(regions, docs, keep)) // batch_size

    def iter_batches(
        self,
        batch_size: int,
        seed: int = 0,
        start_batch: int = 0,
        rank: int = 0,
        world_size: int = 1,
        regions: Iterable[str] | None = None,
        docs: np.ndarray | None = None,
        keep: np.ndarray | None = None,
    ) -> Iterator[torch.Tensor]:
        """One shuffled pass of float32 batches ``[batch_size // world_size, d_in]``.

        The permutation depends only on ``seed``; rank ``r`` gets the r-th slice of each global
        batch; ``start_batch`` skips that many batches (to resume). The last partial batch is
        dropped. ``regions``/``docs``/``keep`` keep only those tokens.
        """
        if batch_size % world_size:
            raise ThinksaeError(f"batch size {batch_size} is not divisible by {world_size} ranks")
        pool = self.token_indices(regions, docs, keep)
        perm = np.random.default_rng(seed).permutation(len(pool))
        per_rank = batch_size // world_size
        for b in range(start_batch, len(pool) // batch_size):
            chunk = pool[perm[b * batch_size : (b + 1) * batch_size]]
            yield self.gather(chunk[rank * per_rank : (rank + 1) * per_rank])

    def iter_chunks(self, chunk_tokens: int = 8192, docs: np.ndarray | None = None
                    ) -> Iterator[dict[str, torch.Tensor]]:
        """Sequential chunks (store order) of activations (float32) and every label column;
        ``docs`` keeps only the tokens of those documents (chunks then hold up to
        ``chunk_tokens`` of them)."""
        for i in range(len(self.manifest["shards"])):
            shard = self._shard(i)
            rows = np.arange(len(shard["token_ids"]))
            if docs is not None:
                rows = rows[np.isin(np.asarray(shard["doc_index"]), docs)]
            for a in range(0, len(rows), chunk_tokens):
                part = rows[a : a + chunk_tokens]
                if docs is None:  # contiguous: read a slice of the memory map
                    part = slice(int(part[0]), int(part[-1]) + 1)
                out = {"activations": to_torch(shard["activations"][part], self.dtype).float()}
                for name in TOKEN_LABELS:
                    out[name] = torch.from_numpy(np.array(shard[name][part]))
                yield out
