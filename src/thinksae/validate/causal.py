"""(c) Causal effect, teacher-forced on the held-out traces: ablate the feature where it fires,
or clamp it to ``clamp_factor`` × its max activation at every token (AIRI's recipe), with the
SAE's error term kept (:func:`thinksae.steer.steering`), and compare with the clean model.

Per trace, at the target positions t (the next token, t + 1, is one of the target tokens):

- ``dlogp`` = mean over target positions of log p_new(token[t+1]) − log p_clean(token[t+1]),
  with a 95 % bootstrap interval over traces (Σ change / Σ positions per resample);
- ``dmetric`` = Σ over all target positions of the change in the metric (log-probability, or
  the target's logit with ``--metric logit``): the real ablation effect attribution estimates;
- ``kl`` = mean KL(p_clean ‖ p_new) over the positions from the first changed one on (ablation:
  the feature's first firing in the trace; clamp: every position).

A feature is causal when the ablation's or the clamp's ``dlogp`` interval excludes 0 with
|dlogp| ≥ ``min_effect``, or the ablation's ``kl`` ≥ ``min_kl``.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ..corpus.segment import BEHAVIOUR_VOCAB
from ..errors import ThinksaeError
from ..evaluate.sources import batches, pad_right
from ..interventions.hooks import steering
from ..models.splice import final_hidden, output_head
from .stats import bootstrap, finite, ratio


def target_ids(tokenizer, spec: str | None) -> list[int]:
    """Token ids of ``--targets`` (each string must be one token), or the defaults: the
    behaviour vocabulary's first words in their single-token forms, and ``</think>``."""
    if spec:
        wanted, strict = [s for s in spec.split(",") if s.strip()], True
    else:
        words = dict.fromkeys(p.split()[0] for ps in BEHAVIOUR_VOCAB.values() for p in ps)
        wanted = [f"{sp}{v}" for w in words for v in (w, w.capitalize()) for sp in ("", " ")]
        wanted, strict = [*wanted, "</think>"], False
    out = []
    for text in wanted:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        if len(ids) == 1:
            out.append(int(ids[0]))
        elif strict:
            raise ThinksaeError(f"target {text!r} is not one token: the tokenizer splits it into "
                                f"{len(ids)} tokens {ids}")
    if not out:
        raise ThinksaeError("no target token: none of the targets is a single token")
    return list(dict.fromkeys(out))


class Batch(NamedTuple):
    """A right-padded batch of traces with its clean final hidden states."""

    ids: Tensor
    mask: Tensor
    pred: Tensor
    """``[b, s]`` real positions whose next token is real."""
    target: Tensor
    """``[b, s]`` positions whose next token is a target."""
    next_ids: Tensor
    hidden: Tensor


@torch.no_grad()  # not inference mode: the attribution pass runs autograd on these ids
def prepare(model, docs, batch_size: int, pad_id: int, targets: list[int]) -> list[Batch]:
    """Batches of ``docs`` with their clean final hidden states (computed once)."""

    device = next(model.parameters()).device
    out = []
    tgt = torch.tensor(targets, device=device)
    for group in batches(docs, batch_size):
        ids, mask, _, _ = pad_right(group, pad_id)
        ids, mask = ids.to(device), mask.to(device)
        real = mask.bool()
        pred = torch.zeros_like(real)
        pred[:, :-1] = real[:, :-1] & real[:, 1:]
        next_ids = torch.zeros_like(ids)
        next_ids[:, :-1] = ids[:, 1:]
        out.append(Batch(ids, mask, pred, pred & torch.isin(next_ids, tgt), next_ids,
                         final_hidden(model, ids, mask)))
    return out


def metric_values(head, hidden: Tensor, next_ids: Tensor, metric: str) -> Tensor:
    """Per position: log p(next token) (``logprob``) or its logit (``logit``), float32."""
    logits = head(hidden).float()
    if metric == "logprob":
        logits = F.log_softmax(logits, dim=-1)
    return logits.gather(-1, next_ids[:, None])[:, 0]


def _row_sums(head, b: Batch, new: Tensor, changed: Tensor, metric: str,
              chunk: int = 256) -> np.ndarray:
    """Per row: [Σ Δlogp, Σ Δmetric, target positions, Σ KL, KL positions]."""
    after = (torch.cumsum(changed.long(), 1) > 0) & b.pred
    need = b.target | after
    rows = torch.nonzero(need)
    sums = torch.zeros((b.ids.shape[0], 5), dtype=torch.float64)
    for a in range(0, len(rows), chunk):
        r = rows[a : a + chunk]
        hc, hn = b.hidden[r[:, 0], r[:, 1]], new[r[:, 0], r[:, 1]]
        nxt = b.next_ids[r[:, 0], r[:, 1]]
        lc, ln = F.log_softmax(head(hc).float(), -1), F.log_softmax(head(hn).float(), -1)
        dlogp = (ln - lc).gather(-1, nxt[:, None])[:, 0]
        dmet = dlogp if metric == "logprob" else (
            metric_values(head, hn, nxt, metric) - metric_values(head, hc, nxt, metric))
        kl = (lc.exp() * (lc - ln)).sum(-1)
        is_t, is_a = b.target[r[:, 0], r[:, 1]], after[r[:, 0], r[:, 1]]
        row = r[:, 0].cpu()
        for col, val in enumerate((dlogp * is_t, dmet * is_t, is_t.float(), kl * is_a,
                                   is_a.float())):
            sums[:, col].index_add_(0, row, val.double().cpu())
    return sums.numpy()


@torch.inference_mode()
def intervene(model, sae, hookpoint: str, batches: list[Batch], intervention, metric: str
              ) -> tuple[np.ndarray, int]:
    """Per trace sums (see :func:`_row_sums`) under one intervention, and how many positions
    the feature fired at."""

    head = output_head(model)
    parts, fired = [], 0
    for b in batches:
        with steering(model, sae, hookpoint, [intervention],
                      record=[intervention.feature]) as st:
            new = final_hidden(model, b.ids, b.mask)
        acts = st.acts[..., 0].to(b.mask.device)
        real = b.mask.bool()
        fires = (acts > 0) & real
        fired += int(fires.sum())
        changed = fires if intervention.kind == "ablate" else real
        parts.append(_row_sums(head, b, new, changed, metric))
    return np.concatenate(parts), fired


class Effect(NamedTuple):
    dlogp: float
    dlogp_lo: float
    dlogp_hi: float
    dmetric: float
    kl: float
    targets: int
    fired: int

    def significant(self, min_effect: float) -> bool:
        return bool(abs(self.dlogp) >= min_effect and (self.dlogp_lo > 0 or self.dlogp_hi < 0))

    def to_dict(self, prefix: str) -> dict:
        return {f"{prefix}_dlogp": finite(self.dlogp), f"{prefix}_dlogp_lo": finite(self.dlogp_lo),
                f"{prefix}_dlogp_hi": finite(self.dlogp_hi),
                f"{prefix}_dmetric": finite(self.dmetric), f"{prefix}_kl": finite(self.kl),
                f"{prefix}_fired_positions": self.fired}


def effect(sums: np.ndarray, fired: int, resamples: int, seed: int) -> Effect:
    """The :class:`Effect` of per-trace sums from :func:`intervene`."""
    d, dl, dh = bootstrap({"num": sums[:, 0], "den": sums[:, 2]}, ratio, resamples, seed)
    kl = float(ratio(sums[:, 3].sum(), sums[:, 4].sum()))
    return Effect(d, dl, dh, float(sums[:, 1].sum()), kl if np.isfinite(kl) else 0.0,
                  int(sums[:, 2].sum()), fired)
