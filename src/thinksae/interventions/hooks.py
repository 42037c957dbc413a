"""Steering hooks: change SAE features at a hookpoint while the model runs (also with a KV cache).

At every steered position, with x the hookpoint output and (f_i) the SAE's top-k activations of x
(f_i = 0 where feature i is not among the k active latents),

    x' = x + Σ_i (f'_i − f_i) · W_dec[i]

over the intervened features i, so the SAE's reconstruction error x − x̂ is kept (x is never
replaced by x̂). The sum is computed in float32 and added to x at steered positions only; other
positions pass through untouched, and an identity intervention (x1, +0) leaves x bit for bit.

Each batch row may have its own interventions (a sweep decodes the baseline and every setting
in the same batches): f'_i = m_i · f_i + a_i with the row's (m_i, a_i) (identity 1, 0 for a
feature the row does not change, whose x then stays bit for bit).

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
from ..models import decoder_stack, resolve_hookpoint, splice
from .spec import Intervention, Window, check_features, check_unique

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
class SteeredFeatureStats:
    """What the SAE reported at the steered positions, per intervened feature: ``fired`` counts
    the positions where the feature's activation was > 0 (being among the top k with
    activation 0 is not firing)."""

    positions: int = 0
    fired: dict[int, int] = field(default_factory=dict)
    act_sum: dict[int, float] = field(default_factory=dict)
    act_max: dict[int, float] = field(default_factory=dict)

    @classmethod
    def empty(cls, features: Iterable[int]) -> SteeredFeatureStats:
        features = list(features)
        return cls(0, dict.fromkeys(features, 0), dict.fromkeys(features, 0.0),
                   dict.fromkeys(features, 0.0))

    def add(self, other: SteeredFeatureStats) -> None:
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


def _settings(interventions) -> tuple[list[list[Intervention]], bool]:
    """``(settings, per_row)``: one list for every row, or one list per batch row."""
    items = list(interventions)
    per_row = bool(items) and not isinstance(items[0], Intervention)
    settings = [list(s) for s in items] if per_row else [items]
    if any(not isinstance(i, Intervention) for s in settings for i in s):
        raise ThinksaeError("steering takes Intervention objects, either one list for every row "
                            "or one list per batch row")
    return settings, per_row


class Steerer:
    """The state behind :func:`steering`: interventions (one setting for every row, or one per
    batch row), window scanners, statistics per row and, with ``record``, the activations."""

    def __init__(self, sae, interventions, window: Window | None, markers: Markers | None,
                 record: Iterable[int] = ()):
        if window is not None and markers is None:
            raise ThinksaeError("a steering window needs the tokenizer's markers")
        self.settings, self.per_row = _settings(interventions)
        for setting in self.settings:
            check_features(setting, sae.num_latents)
            check_unique(setting)
        order = [i.feature for s in self.settings for i in s] + [int(f) for f in record]
        self.feature_list = list(dict.fromkeys(order))
        check_features([Intervention(f, "scale", 1.0) for f in self.feature_list], sae.num_latents)
        if not self.feature_list:
            raise ThinksaeError("no intervention given")
        self.sae, self.window, self.markers, self.record = sae, window, markers, bool(record)
        self.interventions = [i for s in self.settings for i in s]
        col = {f: j for j, f in enumerate(self.feature_list)}
        coef = torch.tensor([[1.0, 0.0]], dtype=torch.float32).repeat(
            len(self.settings), len(col), 1)  # [settings, F, (m, a)]: identity
        for r, setting in enumerate(self.settings):
            for i in setting:
                coef[r, col[i.feature]] = torch.tensor(i.affine())
        device = sae.W_dec.device
        self.coef = coef.to(device)
        self.active = torch.tensor([bool(s) for s in self.settings], device=device)
        self.features = torch.tensor(self.feature_list, dtype=torch.long, device=device)
        self.prompt_len: int | None = None
        """Prompt width of the next fresh sequence (default: the width of its first call)."""
        self.rows: list[RowScanner] = []
        self.mask: Tensor | None = None
        """``[batch, seq]`` steered positions of the current forward call (None: all)."""
        self.real: Tensor | None = None
        """``[batch, seq]`` non-padding positions of the current call (None: all)."""
        self.last_mask: Tensor | None = None
        """The steered positions of the whole sequences seen since the last fresh start."""
        self.recorded: list[Tensor] = []
        """With ``record``: per call ``[batch, seq, F]`` activations of ``feature_list`` at every
        non-padding position (0 elsewhere), since the last fresh start."""
        self._acc = torch.zeros((0, 3, len(col)), dtype=torch.float64)  # rows × (fired, sum, max)
        self._positions = torch.zeros(0, dtype=torch.long)
        self._changed: set[int] = set()

    def _row_settings(self, batch: int) -> Tensor:
        if not self.per_row:
            return torch.zeros(batch, dtype=torch.long, device=self.coef.device)
        if batch != len(self.settings):
            raise ThinksaeError(f"steering has {len(self.settings)} per-row settings, but the batch "
                                f"has {batch} rows")
        return torch.arange(batch, device=self.coef.device)

    def before_forward(self, input_ids: Tensor | None, past: int,
                       attention_mask: Tensor | None = None) -> None:
        """Mark the positions of this call to steer: the window's, never padding (positions
        the call's 2-D attention mask has at 0)."""
        self.real = None
        if isinstance(attention_mask, Tensor) and attention_mask.ndim == 2:
            width = input_ids.shape[1] if input_ids is not None else None
            if width is not None and attention_mask.shape[1] >= width:
                self.real = attention_mask[:, attention_mask.shape[1] - width:] != 0
        if past == 0:
            self.recorded = []
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

    def prime(self, prefix: Tensor, prompt_len: int) -> None:
        """Start fresh sequences whose first tokens ``prefix [batch, n]`` are already in the KV
        cache (a shared prefill, run without this steerer): the scanners read them, so the next
        call continues at position n. None of them may be steered or recorded."""
        if self.record:
            raise ThinksaeError("a recording steerer must see every position: no shared prefill")
        self.prompt_len = prompt_len
        self.before_forward(prefix, 0)
        if self.window is None or (self.mask is not None and bool(self.mask.any())):
            raise ThinksaeError("a shared prefill must end before the first steered position")

    def _encode(self, x: Tensor) -> Tensor:
        """f of ``feature_list`` for rows ``x [n, d_in]``, float32 ``[n, F]``."""
        acts, idx = self.sae.encode(x.to(self.sae.device, self.sae.dtype))
        hit = idx[:, None, :] == self.features[None, :, None]  # [n, F, k]
        return (acts[:, None, :] * hit).sum(-1).float()

    def _count(self, rows: Tensor, f: Tensor) -> None:
        """Statistics of the steered positions (``rows`` their batch rows, ``f`` their acts)."""
        n = int(rows.max()) + 1 if len(rows) else 0
        if n > len(self._positions):
            grow = n - len(self._positions)
            self._positions = torch.cat([self._positions, torch.zeros(grow, dtype=torch.long)])
            self._acc = torch.cat([self._acc, self._acc.new_zeros((grow, *self._acc.shape[1:]))])
        rows, f = rows.cpu(), f.double().cpu()
        self._positions.index_add_(0, rows, torch.ones_like(rows))
        self._acc[:, 0].index_add_(0, rows, (f > 0).double())
        self._acc[:, 1].index_add_(0, rows, f)
        self._acc[:, 2].scatter_reduce_(0, rows[:, None].expand_as(f), f, "amax")

    def stats_for(self, rows: Iterable[int] | None = None,
                  features: Iterable[int] | None = None) -> SteeredFeatureStats:
        """:class:`SteeredFeatureStats` of the steered positions of batch ``rows`` (None: all) over
        ``features`` (None: all intervened and recorded features)."""
        keep = range(len(self._positions)) if rows is None else [r for r in rows
                                                                  if r < len(self._positions)]
        feats = self.feature_list if features is None else list(features)
        out = SteeredFeatureStats.empty(feats)
        keep = torch.tensor(list(keep), dtype=torch.long)
        if len(keep):
            acc = self._acc[keep]
            out.positions = int(self._positions[keep].sum())
            for f in feats:
                j = self.feature_list.index(f)
                out.fired[f], out.act_sum[f] = int(acc[:, 0, j].sum()), float(acc[:, 1, j].sum())
                out.act_max[f] = float(acc[:, 2, j].max())
        return out

    def changed(self, row: int) -> bool:
        """Whether the interventions changed batch row ``row``'s hookpoint output anywhere so far
        (an identity setting never does, nor a scale, clamp to 0 or ablation of features that
        never fired where it steered: such a row ran bit for bit as unsteered)."""
        return row in self._changed

    @property
    def stats(self) -> SteeredFeatureStats:
        """Statistics of every row and feature."""
        return self.stats_for()

    @property
    def acts(self) -> Tensor | None:
        """With ``record``: ``[batch, seq, F]`` activations since the last fresh start."""
        return torch.cat(self.recorded, dim=1) if self.recorded else None

    def apply(self, out: Tensor) -> Tensor:
        if out.ndim != 3:
            raise ThinksaeError(f"steering expects a [batch, seq, d] hookpoint output, got "
                                f"shape {tuple(out.shape)}")
        setting = self._row_settings(out.shape[0])
        mask = self.mask if self.window is not None else torch.ones(
            out.shape[:2], dtype=torch.bool, device=out.device)
        if mask is None or mask.shape != out.shape[:2]:
            raise ThinksaeError("steering: the hookpoint ran without its decoder-stack call")
        real = torch.ones_like(mask) if self.real is None or self.real.shape != mask.shape \
            else self.real.to(mask.device)
        steer = mask & real & self.active[setting].to(mask.device)[:, None]
        sel = (steer | real) if self.record else steer
        if self.record:
            record = out.new_zeros((*out.shape[:2], len(self.feature_list)), dtype=torch.float32)
            self.recorded.append(record)
        if not bool(sel.any()):
            return out
        x = out[sel]
        f = self._encode(x)
        if self.record:
            record[sel] = f.to(record.device)
        rows = torch.nonzero(sel)[:, 0].to(self.coef.device)
        on = steer[sel].to(self.coef.device)
        self._count(rows[on], f[on])
        coef = self.coef[setting.to(self.coef.device)[rows]]  # [n, F, 2]
        change = torch.where(on[:, None], coef[..., 0] * f + coef[..., 1] - f, 0.0)
        moved = (change != 0).any(-1)
        if bool(moved.any()):
            self._changed.update(rows[moved].tolist())
        delta = (change @ self.sae.W_dec[self.features].float()).to(out.device)
        steered = out.clone()
        steered[sel] = (x.float() + delta).to(out.dtype)
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
def steering(model: nn.Module, sae, hookpoint: str, interventions,
             window: Window | None = None, markers: Markers | None = None,
             record: Iterable[int] = ()) -> Iterator[Steerer]:
    """While open, ``model`` runs with ``interventions`` applied at ``hookpoint`` (module
    docstring): a list of :class:`Intervention` for every row, or one such list per batch row
    (an empty list leaves its row unsteered), each feature at most once per list.
    ``window=None`` steers every position of every call; with a window, ``markers``
    (``Markers.from_tokenizer``) say where thinking opens and closes. ``record`` features'
    activations are kept at every non-padding position (``Steerer.acts``). Yields the
    :class:`Steerer` (its ``last_mask`` and ``stats`` tell what was steered)."""
    module = resolve_hookpoint(model, hookpoint)
    steerer = Steerer(sae, interventions, window, markers, record)

    def pre_hook(_module, args, kwargs):
        ids = kwargs.get("input_ids", args[0] if args else None)
        steerer.before_forward(ids, _cache_length(kwargs), kwargs.get("attention_mask"))

    handle = decoder_stack(model).register_forward_pre_hook(pre_hook, with_kwargs=True)
    try:
        with splice(module, steerer.apply):
            yield steerer
    finally:
        handle.remove()
