"""One streaming pass over SAE-encoded tokens, collecting every per-feature statistic.

State is a fixed set of tensors shaped by the number of features F (and the options), never by
the number of tokens: counters ``[F]``, ``[F, regions]``, ``[F, behaviours]``, a histogram over
fixed log-spaced bins ``[F, bins]``, the top-N activating tokens with their ±window contexts
``[F, N, 2W+1]``, and a table of the M vocabulary items with the most activation mass
``[F, M]``. The only token-sized state is a lag of ``max(W, ReasonScore reach)`` tokens held back
so that a token's right-hand context is known before it is counted. With a think region, the
per-trace firing counts of :mod:`thinksae.features.traces` are kept too (sparse; they grow with
the (trace, feature) pairs that fire, not with tokens).

``act_max`` and the top-N contexts are taken over the tokens of ``max_regions`` only (default:
all) that are not attention sinks (:mod:`thinksae.sinks`; a chunk's ``sinks`` column): an SAE can
report large values on tokens it never saw (special tokens, norm outliers), and this maximum is
what ``steer --max_from`` scales.

Token mass table: per chunk, the mass of each (feature, token) pair is summed exactly and merged
with the feature's table; a feature keeps its M heaviest tokens and the mass of the rest goes to
``tail_mass`` (``token_overflow`` marks the feature). A feature with at most M distinct trigger
tokens therefore has exact per-token masses; otherwise the kept masses are lower bounds (a token
evicted earlier starts again from zero) and the total stays exact.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..errors import ThinksaeError
from .reason_score import ReasonMatcher
from .stats import HIST_BINS, FeatureStats, hist_bin
from .tokens import TokenInfo
from .topk import top_per_group
from .traces import TraceCounts

_FIELDS = ("token_ids", "regions", "behaviours", "doc_index", "positions", "sinks", "acts", "idx")


def _cat(parts: list[dict[str, Tensor]]) -> dict[str, Tensor]:
    """Chunks one after another; ``acts``/``idx`` padded (act 0, index 0) to the widest chunk,
    since an SAE with thresholds (BatchTopK, JumpReLU) encodes each chunk to its own width."""
    width = max(p["acts"].shape[1] for p in parts)

    def pad(v: Tensor) -> Tensor:
        return torch.nn.functional.pad(v, (0, width - v.shape[1])) if v.shape[1] < width else v
    return {k: torch.cat([pad(p[k]) if k in ("acts", "idx") else p[k] for p in parts])
            for k in _FIELDS}


def _slice(d: dict[str, Tensor], a: int, b: int) -> dict[str, Tensor]:
    return {k: v[a:b] for k, v in d.items()}


class FeatureCollector:
    """Feed :meth:`update` with chunks of SAE-encoded tokens in store order, then :meth:`finish`."""

    def __init__(self, num_latents: int, info: TokenInfo, matcher: ReasonMatcher | None = None,
                 regions: list[str] = ("prompt", "think", "answer", "special"),
                 behaviours: list[str] = ("none",), top_n: int = 20, window: int = 10,
                 token_slots: int = 64, device: str | torch.device = "cpu",
                 max_regions: list[str] | None = None):
        if top_n < 1 or window < 0 or token_slots < 1:
            raise ThinksaeError("top_n and token_slots must be >= 1 and window >= 0")
        unknown = sorted(set(max_regions or ()) - set(regions))
        if unknown:
            raise ThinksaeError(f"max_regions {unknown} are not among the regions {list(regions)}")
        f, dev = int(num_latents), torch.device(device)
        self.max_mask = torch.tensor([max_regions is None or r in max_regions for r in regions],
                                     dtype=torch.bool, device=dev)
        self.traces = TraceCounts(f, list(regions), dev) if "think" in regions else None
        self.info, self.matcher, self.device = info, matcher, dev
        self.is_format = info.is_format.to(dev)
        self.is_special = info.is_special.to(dev)
        self.ignore = torch.zeros(info.vocab_size, dtype=torch.bool, device=dev)
        if info.ignore_ids:
            self.ignore[torch.tensor(info.ignore_ids, device=dev)] = True
        groups = list(matcher.groups) if matcher else []
        self.lag = max(window, matcher.reach if matcher else 0, 1)
        self.meta = {"num_latents": f, "regions": list(regions), "behaviours": list(behaviours),
                     "groups": groups, "top_n": top_n, "window": window,
                     "reason_match": None if matcher is None else
                     ("wide" if matcher.boundaries else "reference"),
                     "max_regions": None if max_regions is None else list(max_regions),
                     "token_slots": token_slots, "vocab_size": info.vocab_size,
                     "num_tokens": 0, "num_docs": 0, "reason_pos_tokens": 0,
                     "reason_neg_tokens": 0, "sink_tokens": 0}
        r, b, g, n, m, w = len(regions), len(behaviours), max(len(groups), 1), top_n, token_slots, window

        def z(*shape, dtype=torch.float64, fill=0):
            return torch.full(shape, fill, dtype=dtype, device=dev)

        i64 = torch.int64
        self.t: dict[str, Tensor] = {
            "region_tokens": z(r, dtype=i64), "behaviour_tokens": z(b, dtype=i64),
            "group_tokens": z(g, dtype=i64),
            "fires": z(f, dtype=i64), "fires_region": z(f, r, dtype=i64),
            "fires_behaviour": z(f, b, dtype=i64),
            "act_sum": z(f), "act_sum_region": z(f, r), "act_sq_region": z(f, r),
            "act_max": z(f, dtype=torch.float32),
            "hist": z(f, HIST_BINS, dtype=i64),
            "traces": z(f, dtype=i64), "last_doc": z(f, dtype=i64, fill=-1),
            "format_mass": z(f), "special_mass": z(f),
            "reason_pos_sum": z(f), "reason_neg_sum": z(f), "reason_group_sum": z(f, g),
            "tok_ids": z(f, m, dtype=i64, fill=-1), "tok_mass": z(f, m), "tok_count": z(f, m, dtype=i64),
            "tail_mass": z(f), "tail_count": z(f, dtype=i64),
            "token_overflow": z(f, dtype=torch.bool, fill=False),
            "top_val": z(f, n, dtype=torch.float32, fill=-1.0), "top_index": z(f, n, dtype=i64, fill=-1),
            "top_doc": z(f, n, dtype=i64, fill=-1), "top_pos": z(f, n, dtype=i64, fill=-1),
            "top_region": z(f, n, dtype=i64, fill=-1),
            "top_ctx": z(f, n, 2 * w + 1, dtype=torch.int32, fill=-1),
            "top_ctx_act": z(f, n, 2 * w + 1, dtype=torch.float16),
        }
        self._prev: dict[str, Tensor] | None = None  # context only (already counted)
        self._hold: dict[str, Tensor] | None = None  # waiting for right-hand context
        self._start = 0  # stream index of the first token of prev (or hold when no prev)
        self._last_doc = None

    # ------------------------------------------------------------------ streaming

    def update(self, chunk: dict[str, Tensor]) -> None:
        """Add a chunk: label columns ``token_ids, regions, behaviours, doc_index, positions``
        ``[n]`` plus ``acts``, ``idx`` ``[n, width]`` from the SAE's ``encode`` (entries with
        act 0 are padding or inactive latents; the width may change from chunk to chunk), and
        optionally ``sinks`` ``[n]`` (bool; none when absent)."""
        if "sinks" not in chunk:
            chunk = {**chunk, "sinks": torch.zeros(len(chunk["token_ids"]), dtype=torch.bool)}
        c = {k: chunk[k].to(self.device) for k in _FIELDS}
        for k in ("token_ids", "regions", "behaviours", "doc_index", "positions"):
            c[k] = c[k].long()
        self.info.check_ids(c["token_ids"])
        for name, key in (("region", "regions"), ("behaviour", "behaviours")):
            limit = len(self.meta[key])
            if len(c[key]) and int(c[key].max()) >= limit:
                raise ThinksaeError(f"{name} code {int(c[key].max())} in the data, but only "
                                    f"{limit} {name} names ({self.meta[key]})")
        parts = [p for p in (self._prev, self._hold) if p is not None]
        work = _cat([*parts, c])
        a0 = len(self._prev["token_ids"]) if self._prev is not None else 0
        a1 = max(a0, len(work["token_ids"]) - self.lag)
        self._process(work, a0, a1)
        keep_from = max(0, a1 - self.lag)
        self._start += keep_from
        self._prev = _slice(work, keep_from, a1)
        self._hold = _slice(work, a1, len(work["token_ids"]))

    def finish(self) -> FeatureStats:
        """Count the held-back tokens and return the statistics."""
        if self._hold is not None and len(self._hold["token_ids"]):
            parts = [p for p in (self._prev, self._hold) if p is not None]
            work = _cat(parts)
            a0 = len(self._prev["token_ids"]) if self._prev is not None else 0
            self._process(work, a0, len(work["token_ids"]))
            self._prev = self._hold = None
        t = {k: v.cpu() for k, v in self.t.items() if k != "last_doc"}
        if self.traces is not None:
            t.update(self.traces.finish())
        return FeatureStats(t, dict(self.meta))

    def state_nbytes(self) -> int:
        """Bytes held in statistics tensors (independent of the number of tokens seen; the
        per-trace counts are not included)."""
        return sum(v.numel() * v.element_size() for v in self.t.values())

    # ------------------------------------------------------------------ one window

    def _process(self, work: dict[str, Tensor], a0: int, a1: int) -> None:
        if a1 <= a0:
            return
        t, meta = self.t, self.meta
        tok, reg, beh, doc = (work[k][a0:a1] for k in ("token_ids", "regions", "behaviours",
                                                       "doc_index"))
        n, k = len(tok), work["acts"].shape[1]
        meta["num_tokens"] += n
        meta["sink_tokens"] += int(work["sinks"][a0:a1].sum())
        new_docs = torch.unique_consecutive(doc)
        meta["num_docs"] += len(new_docs) - int(self._last_doc is not None
                                                and int(new_docs[0]) == self._last_doc)
        self._last_doc = int(new_docs[-1])
        t["region_tokens"] += torch.bincount(reg, minlength=len(meta["regions"]))
        t["behaviour_tokens"] += torch.bincount(beh, minlength=len(meta["behaviours"]))

        acts, idx = work["acts"][a0:a1].float(), work["idx"][a0:a1].long()
        fired = acts > 0
        f, a = idx[fired], acts[fired]
        row = torch.arange(n, device=self.device)[:, None].expand(n, k)[fired]
        r, nr = reg[row], len(meta["regions"])
        t["fires"].index_add_(0, f, torch.ones_like(f))
        t["fires_region"].view(-1).index_add_(0, f * nr + r, torch.ones_like(f))
        nb = len(meta["behaviours"])
        t["fires_behaviour"].view(-1).index_add_(0, f * nb + beh[row], torch.ones_like(f))
        a64 = a.double()
        t["act_sum"].index_add_(0, f, a64)
        t["act_sum_region"].view(-1).index_add_(0, f * nr + r, a64)
        t["act_sq_region"].view(-1).index_add_(0, f * nr + r, a64 * a64)
        at_max = self.max_mask[r] & ~work["sinks"][a0:a1][row]  # sinks never set a maximum
        t["act_max"].scatter_reduce_(0, f[at_max], a[at_max], reduce="amax")
        t["hist"].view(-1).index_add_(0, f * HIST_BINS + hist_bin(a), torch.ones_like(f))
        ftok = tok[row]
        t["format_mass"].index_add_(0, f[self.is_format[ftok]], a64[self.is_format[ftok]])
        special = self.is_special[ftok]
        t["special_mass"].index_add_(0, f[special], a64[special])
        self._count_traces(f, doc[row])
        if self.traces is not None:
            self.traces.add(reg, doc, f, row)
        if self.matcher is not None:
            self._reason(work, a0, a1, f, a64, row)
        self._update_tokens(f, a64, ftok)
        self._update_top(work, a0, f[at_max], a[at_max], row[at_max])

    def _count_traces(self, f: Tensor, d: Tensor) -> None:
        """Traces in which each feature fires (documents arrive contiguous and in order)."""
        if not len(f):
            return
        key = torch.unique(f * (1 << 32) + d)
        fu, du = key >> 32, key & ((1 << 32) - 1)
        new = self.t["last_doc"][fu] != du
        self.t["traces"].index_add_(0, fu[new], torch.ones_like(fu[new]))
        self.t["last_doc"].scatter_reduce_(0, fu, du, reduce="amax")

    def _reason(self, work, a0, a1, f, a64, row) -> None:
        t, meta = self.t, self.meta
        groups = self.matcher.positives(work["token_ids"], work["doc_index"], self.info)[a0:a1]
        ignored = self.ignore[work["token_ids"][a0:a1]]
        groups &= ~ignored[:, None]
        pos = groups.any(1)
        neg = ~pos & ~ignored
        meta["reason_pos_tokens"] += int(pos.sum())
        meta["reason_neg_tokens"] += int(neg.sum())
        t["group_tokens"] += groups.sum(0)
        t["reason_pos_sum"].index_add_(0, f[pos[row]], a64[pos[row]])
        t["reason_neg_sum"].index_add_(0, f[neg[row]], a64[neg[row]])
        fi, gi = torch.nonzero(groups[row], as_tuple=True)
        ng = groups.shape[1]
        t["reason_group_sum"].view(-1).index_add_(0, f[fi] * ng + gi, a64[fi])

    def _update_tokens(self, f: Tensor, a64: Tensor, tok: Tensor) -> None:
        if not len(f):
            return
        t, v, m = self.t, self.info.vocab_size, self.meta["token_slots"]
        touched = torch.unique(f)
        old_ids = t["tok_ids"][touched]
        valid = old_ids >= 0
        keys = torch.cat([(touched[:, None] * v + old_ids)[valid], f * v + tok])
        mass = torch.cat([t["tok_mass"][touched][valid], a64])
        count = torch.cat([t["tok_count"][touched][valid], torch.ones_like(f)])
        uk, inv = torch.unique(keys, return_inverse=True)
        umass = torch.zeros(len(uk), dtype=torch.float64, device=self.device).index_add_(0, inv, mass)
        ucount = torch.zeros(len(uk), dtype=torch.int64, device=self.device).index_add_(0, inv, count)
        feat = uk // v
        sel, g, rank = top_per_group(feat, umass, self.meta["num_latents"], m)
        evicted = torch.ones(len(uk), dtype=torch.bool, device=self.device)
        evicted[sel] = False
        t["tail_mass"].index_add_(0, feat[evicted], umass[evicted])
        t["tail_count"].index_add_(0, feat[evicted], ucount[evicted])
        t["token_overflow"][feat[evicted]] = True
        rows = torch.searchsorted(touched, g)
        ids = torch.full_like(old_ids, -1)
        tm = torch.zeros_like(t["tok_mass"][touched])
        tc = torch.zeros_like(t["tok_count"][touched])
        ids[rows, rank], tm[rows, rank], tc[rows, rank] = uk[sel] % v, umass[sel], ucount[sel]
        t["tok_ids"][touched], t["tok_mass"][touched], t["tok_count"][touched] = ids, tm, tc

    def _update_top(self, work, a0, f, a, row) -> None:
        t, n = self.t, self.meta["top_n"]
        keep = a > t["top_val"][f, -1]
        f, a, pos = f[keep], a[keep], row[keep] + a0  # pos: index into work
        if not len(f):
            return
        num = self.meta["num_latents"]
        sel, _, _ = top_per_group(f, a, num, n)  # at most n candidates per feature from here
        f, a, pos = f[sel], a[sel], pos[sel]
        touched = torch.unique(f)
        old_v = t["top_val"][touched]
        valid = old_v >= 0
        slot = torch.arange(old_v.numel(), device=self.device).view(old_v.shape)[valid]
        all_f = torch.cat([touched[:, None].expand_as(old_v)[valid], f])
        all_v = torch.cat([old_v[valid], a])
        src = torch.cat([-1 - slot, pos])  # < 0: an old slot, else a position in work
        sel, g, rank = top_per_group(all_f, all_v, num, n)
        rows, s = torch.searchsorted(touched, g), src[sel]
        new = {name: torch.full_like(t[name][touched], fill)
               for name, fill in (("top_val", -1), ("top_index", -1), ("top_doc", -1),
                                  ("top_pos", -1), ("top_region", -1), ("top_ctx", -1),
                                  ("top_ctx_act", 0))}
        old = s < 0
        o_slot = -1 - s[old]
        o_row, o_col = o_slot // n, o_slot % n
        for name in new:
            new[name][rows[old], rank[old]] = t[name][touched][o_row, o_col]
        p, fn = s[~old], g[~old]
        nr, nk = rows[~old], rank[~old]
        new["top_val"][nr, nk] = all_v[sel][~old]
        new["top_index"][nr, nk] = self._start + p
        new["top_doc"][nr, nk] = work["doc_index"][p]
        new["top_pos"][nr, nk] = work["positions"][p]
        new["top_region"][nr, nk] = work["regions"][p]
        ctx, ctx_act = self._contexts(work, p, fn)
        new["top_ctx"][nr, nk], new["top_ctx_act"][nr, nk] = ctx, ctx_act
        for name, value in new.items():
            t[name][touched] = value

    def _contexts(self, work, p: Tensor, f: Tensor) -> tuple[Tensor, Tensor]:
        """Token ids (-1 outside the document) and feature ``f``'s activations at ``p ± W``."""
        w, total = self.meta["window"], len(work["token_ids"])
        num = self.meta["num_latents"]
        ids = torch.full((len(p), 2 * w + 1), -1, dtype=torch.int32, device=self.device)
        acts = torch.zeros((len(p), 2 * w + 1), dtype=torch.float16, device=self.device)
        # (token, feature) -> activation over the window, as sorted keys for binary search; only
        # active entries (padding repeats index 0 with act 0 and must not shadow a real one)
        active = work["acts"].flatten() > 0
        keys = (torch.arange(total, device=self.device)[:, None] * num + work["idx"].long()).flatten()
        keys, order = torch.sort(keys[active])
        values = work["acts"].flatten().float()[active][order]
        if not len(keys):  # nothing active: one key no query matches
            keys, values = keys.new_full((1,), -1), values.new_zeros(1)
        for j, o in enumerate(range(-w, w + 1)):
            q = p + o
            ok = (q >= 0) & (q < total)
            qc = q.clamp(0, total - 1)
            ok &= work["doc_index"][qc] == work["doc_index"][p]
            ids[:, j] = torch.where(ok, work["token_ids"][qc], -1).int()
            want = qc * num + f
            at = torch.searchsorted(keys, want).clamp(max=len(keys) - 1)
            hit = ok & (keys[at] == want)
            acts[:, j] = torch.where(hit, values[at], 0.0).clamp(max=65000).half()
        return ids, acts
