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

The window (:mod:`.window`) is tracked per sequence: a forward pre-hook on the decoder stack
reads each call's new token ids and its position in the KV cache, feeds them to one
:class:`~.window.WindowScanner` per row, and the hookpoint hook steers the positions the
scanners mark. A recording steerer also keeps chosen features' values at every position it
sees (the SAE's top-k activation, or relu of the pre-activation: ``record_value``), read before
any change it makes. Hooks are removed on leaving the context, also after an exception.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator

import torch
from torch import Tensor, nn

from ..chat import ThinkMarkers
from ..errors import ThinksaeError
from ..models.hookpoints import decoder_stack, resolve_hookpoint
from ..models.splice import splice
from .spec import Intervention, Window, check_features, check_unique
from .stats import SteeredFeatureStats
from .window import WindowScanner

RECORD_VALUES = ("topk", "pre")
"""What a recording steerer keeps per feature: the SAE's top-k activation, or relu(pre)."""


def feature_values(sae, x: Tensor, features: Tensor, value: str = "topk") -> Tensor:
    """The values of latents ``features`` at rows ``x [n, d_in]``, float32 ``[n, F]``:

    - ``topk``: f_i, what the SAE's ``encode`` says (its top k or thresholds; 0 where latent i
      is not active);
    - ``pre``: relu(pre_i), pre = (x − b_dec) W_enc[features]ᵀ + b_enc[features] from those
      encoder rows only — equal to f_i where latent i is active; many inactive latents have
      pre_i > 0.
    """
    x = x.to(sae.device, sae.dtype)
    if value == "pre":
        with torch.no_grad():
            return sae.pre_acts(x, features).relu().float()
    acts, idx = sae.encode(x)
    hit = idx[:, None, :] == features[None, :, None]  # [n, F, k]
    return (acts[:, None, :] * hit).sum(-1).float()


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

    def __init__(self, sae, interventions, window: Window | None, markers: ThinkMarkers | None,
                 record: Iterable[int] = (), record_value: str = "topk"):
        if window is not None and markers is None:
            raise ThinksaeError("a steering window needs the tokenizer's markers")
        if record_value not in RECORD_VALUES:
            raise ThinksaeError(f"record value must be one of {', '.join(RECORD_VALUES)} "
                                f"(got {record_value!r})")
        self.record_value = record_value
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
        self.rows: list[WindowScanner] = []
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
            self.rows = [WindowScanner(self.window, self.markers, plen) for _ in range(batch)]
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
        return feature_values(self.sae, x, self.features, "topk")

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
        if out.shape[-1] != self.sae.d_in:
            raise ThinksaeError(f"SAE/model mismatch: the SAE has d_in {self.sae.d_in}, but the "
                                f"hookpoint output has width {out.shape[-1]}")
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
            kept = f if self.record_value == "topk" else \
                feature_values(self.sae, x, self.features, self.record_value)
            record[sel] = kept.to(record.device)
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
             window: Window | None = None, markers: ThinkMarkers | None = None,
             record: Iterable[int] = (), record_value: str = "topk") -> Iterator[Steerer]:
    """While open, ``model`` runs with ``interventions`` applied at ``hookpoint`` (module
    docstring): a list of :class:`Intervention` for every row, or one such list per batch row
    (an empty list leaves its row unsteered), each feature at most once per list.
    ``window=None`` steers every position of every call; with a window, ``markers``
    (``ThinkMarkers.from_tokenizer``) say where thinking opens and closes. ``record`` features'
    values (``record_value``) are kept at every non-padding position (``Steerer.acts``). Yields the
    :class:`Steerer` (its ``last_mask`` and ``stats`` tell what was steered)."""
    module = resolve_hookpoint(model, hookpoint)
    steerer = Steerer(sae, interventions, window, markers, record, record_value)

    def pre_hook(_module, args, kwargs):
        ids = kwargs.get("input_ids", args[0] if args else None)
        steerer.before_forward(ids, _cache_length(kwargs), kwargs.get("attention_mask"))

    handle = decoder_stack(model).register_forward_pre_hook(pre_hook, with_kwargs=True)
    try:
        with splice(module, steerer.apply):
            yield steerer
    finally:
        handle.remove()
