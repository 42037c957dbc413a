"""Steering hooks: change SAE features at a hookpoint while the model runs (also with a KV cache).

At every steered position, with x the hookpoint output and (f_i) the SAE's top-k activations of x
(f_i = 0 where feature i is not among the k active latents),

    x' = x + Σ_i (f'_i − f_i) · W_dec[i]

over the intervened features i, so the SAE's reconstruction error x − x̂ is kept (x is never
replaced by x̂). The sum is computed in float32 and added to x at steered positions only; other
positions pass through untouched, and an identity intervention (x1, +0) leaves x bit for bit.

The window (see :mod:`.spec`) is tracked per sequence: a forward pre-hook on the decoder stack
reads each call's new token ids and its position in the KV cache, feeds them to one scanner per
row, and the hookpoint hook steers the positions the scanners mark. A scanner's verdict on a
position depends only on the tokens up to it, so a cached generation and one teacher-forced pass
over the finished sequence steer the same positions. Hooks are removed on leaving the context,
also after an exception.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from ..errors import ThinksaeError
from ..evaluate.spliced import splice
from ..models import decoder_stack, resolve_hookpoint
from .spec import Intervention, Window, check_features

THINK_OPEN_ID, THINK_CLOSE_ID = 151648, 151649
"""R1-family ids of ``<think>`` and ``</think>`` (used when a tokenizer does not say)."""
_PREFILL_TAIL = 4
"""A ``<think>`` among the prompt's last this many tokens is the template's prefilled opening."""


@dataclass
class Markers:
    """Token ids the window needs: thinking markers, stop ids, sentence-ending tokens."""

    open_id: int = THINK_OPEN_ID
    close_id: int = THINK_CLOSE_ID
    stop_ids: frozenset[int] = frozenset()
    sentence_end: Tensor | None = None
    """Bool ``[vocab]``: tokens that end a sentence (needed for ``start=sentence``)."""
    single_token: bool = True
    """Whether ``<think>`` and ``</think>`` are single tokens of the tokenizer (R1 tokenizers);
    otherwise the ids above are R1's defaults and will not occur in the text."""

    @classmethod
    def from_tokenizer(cls, tokenizer, stop_ids: Iterable[int] = (), sentences: bool = True
                       ) -> Markers:
        """The markers of ``tokenizer`` (its own ``<think>``/``</think>`` ids when it has them)."""
        ids = tokenizer.convert_tokens_to_ids(["<think>", "</think>"])
        unk = getattr(tokenizer, "unk_token_id", None)
        found = [isinstance(i, int) and i != unk for i in ids]
        open_id, close_id = (i if ok else d
                             for i, ok, d in zip(ids, found, (THINK_OPEN_ID, THINK_CLOSE_ID)))
        stops = set(stop_ids) | ({tokenizer.eos_token_id} - {None})
        sentence_end = None
        if sentences:
            texts = tokenizer.batch_decode([[i] for i in range(len(tokenizer))])
            sentence_end = torch.tensor([t.rstrip(" ").endswith((".", "?", "!")) or "\n" in t
                                         for t in texts])
        return cls(open_id, close_id, frozenset(int(i) for i in stops), sentence_end, all(found))

    def ends_sentence(self, token: int) -> bool:
        table = self.sentence_end
        if table is None:
            raise ThinksaeError("start=sentence needs the tokenizer's sentence-ending tokens")
        return 0 <= token < len(table) and bool(table[token])


@dataclass
class RowScanner:
    """Follows one sequence token by token and says which positions are steered."""

    window: Window
    markers: Markers
    prompt_len: int
    pos: int = 0
    open_pos: int | None = None
    close_pos: int | None = None
    stop_pos: int | None = None
    start_pos: int | None = None
    end_pos: int | None = None

    def push(self, token: int) -> bool:
        """Take the token at the next position; whether that position is steered."""
        t, self.pos = self.pos, self.pos + 1
        m, w = self.markers, self.window
        generated = t >= self.prompt_len
        if self.stop_pos is not None:
            return False
        if generated and token in m.stop_ids:
            self.stop_pos = t
            return False
        if token == m.open_id and self.open_pos is None and self.close_pos is None and (
                generated or t >= self.prompt_len - _PREFILL_TAIL):
            self.open_pos = t
        if generated and token == m.close_id and self.close_pos is None:
            self.close_pos = t
        opened = self.open_pos is not None
        if self.end_pos is None and (
                (w.end == "think_end" and self.close_pos == t)
                or (isinstance(w.end, int) and opened and t == self.open_pos + w.end)):
            self.end_pos = t
        if self.start_pos is None and self.end_pos is None and (
                (w.start == "prompt" and t >= self.prompt_len - 1)
                or (w.start == "think" and opened and t == self.open_pos)
                or (isinstance(w.start, int) and opened and t == self.open_pos + w.start)
                or (w.start == "sentence" and opened and t > self.open_pos + 1
                    and self.close_pos is None and m.ends_sentence(token))):
            self.start_pos = t
        return self.start_pos is not None and self.end_pos is None

    @property
    def think_tokens(self) -> int | None:
        """Tokens strictly between the opening and ``</think>`` (or the end); None unopened."""
        if self.open_pos is None:
            return None
        end = self.close_pos if self.close_pos is not None else (
            self.stop_pos if self.stop_pos is not None else self.pos)
        return max(end - self.open_pos - 1, 0)


def scan(window: Window, markers: Markers, tokens: list[int], prompt_len: int
         ) -> tuple[list[bool], RowScanner]:
    """Steered flags of every position of one sequence, and the scanner (markers found)."""
    row = RowScanner(window, markers, prompt_len)
    return [row.push(int(t)) for t in tokens], row


@dataclass
class FeatureStats:
    """What the SAE reported at the steered positions, per intervened feature."""

    positions: int = 0
    fired: dict[int, int] = field(default_factory=dict)
    act_sum: dict[int, float] = field(default_factory=dict)
    act_max: dict[int, float] = field(default_factory=dict)

    @classmethod
    def empty(cls, features: Iterable[int]) -> FeatureStats:
        features = list(features)
        return cls(0, dict.fromkeys(features, 0), dict.fromkeys(features, 0.0),
                   dict.fromkeys(features, 0.0))

    def add(self, other: FeatureStats) -> None:
        self.positions += other.positions
        for f in other.fired:
            self.fired[f] = self.fired.get(f, 0) + other.fired[f]
            self.act_sum[f] = self.act_sum.get(f, 0.0) + other.act_sum[f]
            self.act_max[f] = max(self.act_max.get(f, 0.0), other.act_max[f])

    def to_dict(self) -> dict:
        n = self.positions
        return {"steered_positions": n, "features": {
            str(f): {"fired_fraction": (self.fired[f] / n) if n else None,
                     "mean_activation": (self.act_sum[f] / n) if n else None,
                     "max_activation": self.act_max[f] if n else None}
            for f in self.fired}}


class Steerer:
    """The state behind :func:`steering`: interventions, window scanners, statistics."""

    def __init__(self, sae, interventions: list[Intervention], window: Window | None,
                 markers: Markers | None):
        if window is not None and markers is None:
            raise ThinksaeError("a steering window needs the tokenizer's markers")
        check_features(interventions, sae.num_latents)
        for i in interventions:
            i.new_value(0.0)  # refuses an unresolved clamp_max
        self.sae, self.window, self.markers = sae, window, markers
        self.interventions = list(interventions)
        self.features = torch.tensor([i.feature for i in interventions], dtype=torch.long,
                                     device=sae.W_dec.device)
        self.prompt_len: int | None = None
        """Prompt width of the next fresh sequence (default: the width of its first call)."""
        self.rows: list[RowScanner] = []
        self.mask: Tensor | None = None
        """``[batch, seq]`` steered positions of the current forward call (None: all)."""
        self.real: Tensor | None = None
        """``[batch, seq]`` non-padding positions of the current call (None: all)."""
        self.last_mask: Tensor | None = None
        """The steered positions of the whole sequences seen since the last fresh start."""
        self.stats = FeatureStats.empty(i.feature for i in interventions)

    def before_forward(self, input_ids: Tensor | None, past: int,
                       attention_mask: Tensor | None = None) -> None:
        """Mark the positions of this call to steer: the window's, never padding (positions
        the call's 2-D attention mask has at 0)."""
        self.real = None
        if isinstance(attention_mask, Tensor) and attention_mask.ndim == 2:
            width = input_ids.shape[1] if input_ids is not None else None
            if width is not None and attention_mask.shape[1] >= width:
                self.real = attention_mask[:, attention_mask.shape[1] - width:] != 0
        if self.window is None:
            return
        if input_ids is None:
            raise ThinksaeError("steering with a window needs input_ids (not inputs_embeds)")
        batch, width = input_ids.shape
        if past == 0:
            plen = self.prompt_len if self.prompt_len is not None else width
            self.rows = [RowScanner(self.window, self.markers, plen) for _ in range(batch)]
            self.last_mask = None
        elif len(self.rows) != batch or any(r.pos != past for r in self.rows):
            raise ThinksaeError(f"steering lost track of the sequences (a call at position {past} "
                                f"with batch {batch}); start a fresh generation")
        ids = input_ids.tolist()
        flags = [[row.push(t) for t in seq] for row, seq in zip(self.rows, ids)]
        self.mask = torch.tensor(flags, dtype=torch.bool, device=input_ids.device)
        self.last_mask = self.mask if self.last_mask is None else torch.cat(
            [self.last_mask, self.mask], dim=1)

    def deltas(self, x: Tensor) -> Tensor:
        """Σ_i (f'_i − f_i) W_dec[i] for rows ``x [n, d_in]``, float32 ``[n, d_in]``."""
        sae = self.sae
        acts, idx = sae.encode(x.to(sae.device, sae.dtype))
        hit = idx[:, None, :] == self.features[None, :, None]  # [n, F, k]
        f = (acts[:, None, :] * hit).sum(-1).float()  # [n, F]
        new = torch.stack([iv.new_value(f[:, j]) for j, iv in enumerate(self.interventions)], 1)
        self.stats.positions += len(x)
        for j, iv in enumerate(self.interventions):
            self.stats.fired[iv.feature] += int(hit[:, j].any(-1).sum())
            self.stats.act_sum[iv.feature] += float(f[:, j].sum())
            self.stats.act_max[iv.feature] = max(self.stats.act_max[iv.feature],
                                                 float(f[:, j].max()))
        return (new - f) @ sae.W_dec[self.features].float()

    def apply(self, out: Tensor) -> Tensor:
        if out.ndim != 3:
            raise ThinksaeError(f"steering expects a [batch, seq, d] hookpoint output, got "
                                f"shape {tuple(out.shape)}")
        mask = self.mask if self.window is not None else torch.ones(
            out.shape[:2], dtype=torch.bool, device=out.device)
        if mask is None or mask.shape != out.shape[:2]:
            raise ThinksaeError("steering: the hookpoint ran without its decoder-stack call")
        if self.real is not None and self.real.shape == mask.shape:
            mask = mask & self.real.to(mask.device)
        if not bool(mask.any()):
            return out
        steered = out.clone()
        x = out[mask]
        delta = self.deltas(x).to(out.device)
        steered[mask] = (x.float() + delta).to(out.dtype)
        return steered


def _cache_length(kwargs: dict) -> int:
    """Tokens already in the KV cache of a decoder-stack call (0 for a fresh sequence)."""
    pos = kwargs.get("cache_position")
    if isinstance(pos, Tensor) and pos.numel():
        return int(pos.reshape(-1)[0])
    for name in ("cache", "past_key_values"):
        cache = kwargs.get(name)
        if cache is not None and hasattr(cache, "get_seq_length"):
            return int(cache.get_seq_length())
    return 0


@contextlib.contextmanager
def steering(model: nn.Module, sae, hookpoint: str, interventions: list[Intervention],
             window: Window | None = None, markers: Markers | None = None) -> Iterator[Steerer]:
    """While open, ``model`` runs with ``interventions`` applied at ``hookpoint`` (module
    docstring). ``window=None`` steers every position of every call; with a window, ``markers``
    (``Markers.from_tokenizer``) say where thinking opens and closes. Yields the
    :class:`Steerer` (its ``last_mask`` and ``stats`` tell what was steered)."""
    if not interventions:
        raise ThinksaeError("no intervention given")
    module = resolve_hookpoint(model, hookpoint)
    steerer = Steerer(sae, interventions, window, markers)

    def pre_hook(_module, args, kwargs):
        ids = kwargs.get("input_ids", args[0] if args else None)
        steerer.before_forward(ids, _cache_length(kwargs), kwargs.get("attention_mask"))

    handle = decoder_stack(model).register_forward_pre_hook(pre_hook, with_kwargs=True)
    try:
        with splice(module, steerer.apply):
            yield steerer
    finally:
        handle.remove()
