"""Where ``Smax`` values look for a feature's max activation in the baseline generations.

``Smax`` clamps a feature to S × its max activation over the baseline generations, taken only
at positions that are (a) inside the steering window (the positions the steering applies to,
:func:`thinksae.interventions.scan` on the baseline trace) and (b) in the regions the SAE was
trained on, as its
report card (``thinksae.json``, ``training.regions``) records them. Regions are labelled as the
activation store labels them (:func:`thinksae.corpus.tokenize_trace`: prompt, think, answer,
special), here on the generated token ids themselves. When the card records no regions (no card,
an SAE from elsewhere, or one trained on every token) the special tokens are left out all the
same: BOS, role markers, ``<think>`` carry outlier activations that say nothing about the
feature on text, and 2 × such an outlier is not a steering strength.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..chat import ThinkMarkers
from ..corpus.segment import Region, control_token_ids, tokenize_trace
from ..corpus.traces import Trace
from ..errors import ThinksaeError
from ..interventions import Window, scan

REGIONS = tuple(r.name.lower() for r in Region)
"""Region names in code order: prompt, think, answer, special."""
DEFAULT_REGIONS = ("prompt", "think", "answer")
"""Regions used when the report card does not record any: every non-special token."""


def trained_regions(card: dict) -> tuple[str, ...]:
    """The regions of the SAE's training tokens (report card), else :data:`DEFAULT_REGIONS`."""
    text = (card.get("training") or {}).get("regions")
    if not text:
        return DEFAULT_REGIONS
    names = tuple(r.strip().lower() for r in str(text).split(",") if r.strip())
    unknown = [n for n in names if n not in REGIONS]
    if unknown:
        raise ThinksaeError(f"the SAE's report card lists unknown training regions {unknown} "
                            f"(known: {', '.join(REGIONS)})")
    return names or DEFAULT_REGIONS


class _Given:
    """A tokenizer stand-in that "tokenizes" into fixed ids and character offsets."""

    def __init__(self, ids: list[int], offsets: list[tuple[int, int]], control: set[int]):
        self.ids, self.offsets = ids, offsets
        self.all_special_ids = list(control)
        self.added_tokens_decoder = {}

    def __call__(self, _text, **_kw):
        return {"input_ids": self.ids, "offset_mapping": self.offsets}


def position_regions(tokenizer, tokens: list[int], prompt_len: int,
                     control: set[int] | None = None) -> list[int]:
    """Region code of every token of one sequence (prompt = the first ``prompt_len`` tokens,
    which hold no padding), labelled by the store's rules on the decoded text."""
    control = control_token_ids(tokenizer) if control is None else control
    pieces = tokenizer.batch_decode([[t] for t in tokens], skip_special_tokens=False,
                                    clean_up_tokenization_spaces=False)
    offsets, at = [], 0
    for piece in pieces:
        offsets.append((at, at + len(piece)))
        at += len(piece)
    text = "".join(pieces)
    cut = offsets[prompt_len - 1][1] if prompt_len else 0
    trace = Trace("steer", text[:cut], text[cut:])
    return tokenize_trace(_Given(tokens, offsets, control), trace).regions


def max_mask(tokenizer, gen_ids: Tensor, real: Tensor, width: int, window: Window,
             markers: ThinkMarkers, regions: tuple[str, ...]) -> Tensor:
    """``[B, T]`` positions where ``Smax`` looks: real, inside ``window``, in ``regions``."""
    codes = torch.tensor([REGIONS.index(r) for r in regions])
    control = control_token_ids(tokenizer)
    out = torch.zeros(gen_ids.shape, dtype=torch.bool)
    for row in range(len(gen_ids)):
        keep, tokens = real[row].cpu(), gen_ids[row].tolist()
        first = int(torch.nonzero(keep)[0]) if keep.any() else width
        steered, _ = scan(window, markers, tokens, width)  # as the steering scans the row
        labels = torch.tensor(position_regions(tokenizer, tokens[first:], width - first, control))
        out[row, first:] = torch.tensor(steered[first:]) & torch.isin(labels, codes) & keep[first:]
    return out


def baseline_max(tokenizer, generated: dict, window: Window, markers: ThinkMarkers,
                 regions: tuple[str, ...], features: list[int]) -> dict[int, float]:
    """Max recorded activation of each feature over the baseline rows at :func:`max_mask`
    positions (0.0 where there are none); ``generated``: prompt → (Generated, row)."""
    best = dict.fromkeys(features, 0.0)
    by_batch: dict[int, tuple] = {}
    for gen, row in generated.values():
        by_batch.setdefault(id(gen), (gen, []))[1].append(row)
    for gen, rows in by_batch.values():
        if gen.acts is None:
            raise ThinksaeError("baseline activations were not recorded")
        mask = max_mask(tokenizer, gen.ids[rows], gen.real[rows], gen.width, window, markers,
                        regions)[:, :gen.acts.shape[1]]
        acts = gen.acts[rows].cpu()
        for f in features:
            values = acts[..., gen.features.index(f)][mask]
            if len(values):
                best[f] = max(best[f], float(values.max()))
    return best
