"""Per-trace firing counts, think vs prompt+answer, for trace-level inference (see
:mod:`thinksae.features.inference`).

Firing clusters within a trace, so think-specificity is judged with traces, not tokens, as the
independent units; that needs, per trace, each feature's firing count in the think region and in
the prompt+answer regions, and the trace's token count in each. Stored sparsely, by trace (CSR):

==================  ============  ==========================================================
``trace_doc``       ``[D]``       document index of each trace (with think or other tokens)
``trace_tokens``    ``[D, 2]``    its tokens in think, in prompt+answer
``trace_ptr``       ``[D + 1]``   trace d's pairs are ``trace_ptr[d] : trace_ptr[d + 1]``
``trace_feature``   ``[P]``       int32 feature of each (trace, feature) pair that fired
``trace_fires``     ``[P, 2]``    int32 firing counts in think, in prompt+answer
==================  ============  ==========================================================

Cost: 12 bytes per (trace, feature) pair that fired at least once (at most traces × features,
e.g. 65,536 features × 1,000 traces → ≤ 0.79 GB if every feature fired in every trace; a
feature's share of traces is its ``trace_freq``), plus 32 bytes per trace. While streaming,
each chunk's distinct (trace, feature, region) keys are kept (16 bytes each) and merged once they
pass :data:`MERGE_AT` entries and twice the size of the last merge.
"""

from __future__ import annotations

import torch
from torch import Tensor

TRACE_TENSORS = ("trace_doc", "trace_tokens", "trace_ptr", "trace_feature", "trace_fires")
MERGE_AT = 1 << 22
"""Pending keys after which the per-chunk tables are merged."""


def _merge(keys: list[Tensor], counts: list[Tensor]) -> tuple[Tensor, Tensor]:
    k, c = torch.cat(keys), torch.cat(counts)
    uk, inv = torch.unique(k, return_inverse=True)
    return uk, torch.zeros(len(uk), dtype=torch.int64, device=k.device).index_add_(0, inv, c)


class TraceCounts:
    """Accumulates the per-trace tables; feed :meth:`add` with each processed window."""

    def __init__(self, num_latents: int, regions: list[str], device: torch.device):
        self.f = int(num_latents)
        self.cls = torch.full((len(regions),), -1, dtype=torch.long, device=device)
        self.cls[regions.index("think")] = 0
        for name in ("prompt", "answer"):
            if name in regions:
                self.cls[regions.index(name)] = 1
        self._tok: tuple[list[Tensor], list[Tensor]] = ([], [])
        self._fire: tuple[list[Tensor], list[Tensor]] = ([], [])

    def _push(self, store, keys: Tensor) -> None:
        if not len(keys):
            return
        uk, counts = torch.unique(keys, return_counts=True)
        store[0].append(uk)
        store[1].append(counts)
        total = sum(len(x) for x in store[0])
        if total > MERGE_AT and total > 2 * len(store[0][0]):  # amortised: merged part ≤ half
            uk, c = _merge(*store)
            store[0][:], store[1][:] = [uk], [c]

    def add(self, reg: Tensor, doc: Tensor, f: Tensor, row: Tensor) -> None:
        """Tokens ``reg``/``doc`` ``[n]`` of a window and its firings (feature ``f`` at token
        ``row``)."""
        c = self.cls[reg]
        keep = c >= 0
        self._push(self._tok, doc[keep] * 2 + c[keep])
        fc = c[row]
        keep = fc >= 0
        self._push(self._fire, (doc[row][keep] * self.f + f[keep]) * 2 + fc[keep])

    def finish(self) -> dict[str, Tensor]:
        """The tables of the module docstring (on the CPU)."""
        dev = self.cls.device
        empty = torch.zeros(0, dtype=torch.long, device=dev)
        tk, tc = _merge(*self._tok) if self._tok[0] else (empty, empty)
        docs = torch.unique(tk // 2)
        tokens = torch.zeros((len(docs), 2), dtype=torch.int64, device=dev)
        tokens[torch.searchsorted(docs, tk // 2), tk % 2] = tc
        fk, fc = _merge(*self._fire) if self._fire[0] else (empty, empty)
        pair, inv = torch.unique(fk // 2, return_inverse=True)
        fires = torch.zeros((len(pair), 2), dtype=torch.int32, device=dev)
        fires[inv, fk % 2] = fc.int()
        rows = torch.searchsorted(docs, pair // self.f)
        ptr = torch.zeros(len(docs) + 1, dtype=torch.int64, device=dev)
        ptr[1:] = torch.cumsum(torch.bincount(rows, minlength=len(docs)), 0)
        out = {"trace_doc": docs, "trace_tokens": tokens, "trace_ptr": ptr,
               "trace_feature": (pair % self.f).int(), "trace_fires": fires}
        return {k: v.cpu() for k, v in out.items()}
