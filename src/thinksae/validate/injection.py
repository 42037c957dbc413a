"""(b) Token injection (Ma et al. 2026): a feature's trigger tokens, alone and in their most
frequent short context, put into neutral text with no reasoning in it; the model is run and the
feature's activation on the injected trigger token is compared with its activation on the same
tokens inside thinking.

Texts: the built-in plain passages below (written for thinksae: descriptions, no reasoning
words) and the prompt-region tokens of the first ``--prompts`` traces. Each text is cut at its
middle token and the insertion appended; the model is causal, so the activation at the inserted
trigger token depends only on the text before it and the rest of the text is not run.
Insertions: ``[t]`` for each trigger t, and ``[p, t]`` with p the token most often right before
t in the feature's top contexts (when there is one).

``injection_ratio`` = mean activation on injected trigger tokens / ``context_think_mean`` (the
mean on the trigger tokens inside thinking, from the context control), with a 95 % bootstrap
interval over texts. The test passes when the interval's upper bound is below
``max_injection_ratio`` (the feature does not fire as well without reasoning around it), and
is void (None) when the feature never fired on its triggers in thinking.
"""

from __future__ import annotations

from collections import Counter
from typing import NamedTuple

import numpy as np
import torch

from ..evaluate.sources import Doc, batches, pad_right
from ..models.hookpoints import capture
from .stats import bootstrap, finite, ratio

PASSAGES = (
    "The old library stands at the corner of the market square. Its red brick walls are covered "
    "in ivy, and the reading room has tall windows that face the river.",
    "Every spring the village holds a flower fair. Stalls line the main street, selling tulips, "
    "seedlings and honey from the farms in the valley.",
    "The recipe calls for flour, butter, sugar and two eggs. The dough is rolled out thin, cut "
    "into circles and baked until the edges turn golden.",
    "A narrow path climbs from the harbour to the lighthouse. Fishing boats rest on the shingle "
    "below, and gulls circle above the white tower.",
    "The museum's new gallery shows paintings of the northern coast. Most of the canvases are "
    "large, with grey skies, green hills and small stone cottages.",
    "On weekday mornings the train to the city is crowded. Commuters read newspapers, drink "
    "coffee from paper cups and look out at the passing fields.",
    "The garden behind the house has an apple tree, a vegetable patch and a wooden bench. In "
    "summer the roses along the fence bloom in pink and yellow.",
    "The orchestra opened the concert with a short overture. The violins played the melody "
    "while the cellos and horns held long, warm notes underneath.",
)
"""Neutral prose for the injection test (descriptions only: no questions, steps or hedges)."""


class Insertion(NamedTuple):
    tokens: tuple[int, ...]
    trigger: int


def insertions(stats_t: dict, window: int, feature: int, triggers: list[int]) -> list[Insertion]:
    """The feature's insertions: each trigger alone, and after its most frequent predecessor
    in the feature's top contexts."""
    out = []
    ctx = stats_t["top_ctx"][feature]  # [top_n, 2w + 1], -1 = none
    for t in triggers:
        out.append(Insertion((t,), t))
        if window < 1:
            continue
        prev = Counter(int(row[window - 1]) for row in ctx.tolist()
                       if row[window] == t and row[window - 1] >= 0)
        if prev:
            p, _ = max(prev.items(), key=lambda kv: (kv[1], -kv[0]))
            out.append(Insertion((p, t), t))
    return out


def neutral_texts(tokenizer, prompt_docs: list[torch.Tensor]) -> list[list[int]]:
    """Token ids of the built-in passages (with the tokenizer's special start tokens) and of
    the given trace prompts."""
    texts = [list(tokenizer(p)["input_ids"]) for p in PASSAGES]
    return texts + [d.tolist() for d in prompt_docs if len(d) >= 2]


@torch.inference_mode()
def run_injections(model, sae, hookpoint: str, texts: list[list[int]], inserts: list[Insertion],
                   features: list[int], batch_size: int, pad_id: int) -> np.ndarray:
    """``[len(texts), len(inserts), len(features)]`` activations at each injected trigger."""

    device = next(model.parameters()).device
    feats = torch.tensor(features, dtype=torch.long, device=sae.device)
    jobs = [(i, j) for i in range(len(texts)) for j in range(len(inserts))]
    seqs = [texts[i][: max(len(texts[i]) // 2, 1)] + list(inserts[j].tokens) for i, j in jobs]
    out = np.zeros((len(texts), len(inserts), len(features)))
    docs = [Doc(torch.tensor(s), torch.zeros(len(s)), torch.zeros(len(s))) for s in seqs]
    done = 0
    for batch in batches(docs, batch_size):
        ids, mask, _, _ = pad_right(batch, pad_id)
        x = capture(model, hookpoint, ids.to(device), mask.to(device))[hookpoint]
        last = torch.tensor([len(d.input_ids) - 1 for d in batch], device=x.device)
        rows = x[torch.arange(len(batch), device=x.device), last]
        enc = sae.encode(rows.to(sae.device, sae.dtype))
        hit = enc.latent_indices[:, None, :] == feats[None, :, None]
        acts = (enc.latent_acts[:, None, :] * hit).sum(-1).double().cpu().numpy()
        for r, (i, j) in enumerate(jobs[done : done + len(batch)]):
            out[i, j] = acts[r]
        done += len(batch)
    return out


class InjectionResult(NamedTuple):
    mean: float
    fire_rate: float
    ratio: float
    ratio_lo: float
    ratio_hi: float
    texts: int
    insertions: int
    passed: bool | None

    def to_dict(self) -> dict:
        return {"injection_mean": finite(self.mean), "injection_fire_rate": finite(self.fire_rate),
                "injection_ratio": finite(self.ratio), "injection_ratio_lo": finite(self.ratio_lo),
                "injection_ratio_hi": finite(self.ratio_hi), "injection_texts": self.texts,
                "injection_insertions": self.insertions, "injection_passed": self.passed}


def injection_test(acts: np.ndarray, think_mean: float, max_ratio: float, resamples: int,
                   seed: int) -> InjectionResult:
    """The injection test from ``acts [texts, insertions]`` of one feature."""
    texts, n_ins = acts.shape
    per_text = acts.sum(1)
    count = np.full(texts, float(n_ins))
    mean = float(acts.mean()) if acts.size else float("nan")
    fire = float((acts > 0).mean()) if acts.size else float("nan")
    if not think_mean or not np.isfinite(think_mean) or not acts.size:
        return InjectionResult(mean, fire, float("nan"), float("nan"), float("nan"), texts,
                               n_ins, None)

    def stat(s, n):
        return ratio(s, n) / think_mean

    r, lo, hi = bootstrap({"s": per_text, "n": count}, stat, resamples, seed)
    return InjectionResult(mean, fire, r, lo, hi, texts, n_ins, bool(hi < max_ratio))
