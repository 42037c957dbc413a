"""Where a finished batch was steered, and the KL there.

After a batch, one teacher-forced pass with and one without steering over its finished steered
rows give the KL of the next-token distribution at the steered positions: KL(p_clean ‖
p_steered), both on the steered trace's prefix. A row the steering never changed while it was
generated (``Steerer.changed``: an identity setting, or features that never fired where they
were scaled or ablated) ran as unsteered: its KL is 0 there, without the passes.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ..chat import ThinkMarkers
from ..interventions import Intervention, Window, steering
from ..models.hookpoints import decoder_stack
from ..models.splice import output_head
from .prefill import SharedPrefill, hidden_after, positions


def final_hidden_states(model, ids: Tensor, real: Tensor) -> Tensor:
    """Final hidden states of a left-padded batch, positions numbered as generate numbers them."""
    out = decoder_stack(model)(input_ids=ids, attention_mask=real.long(),
                               position_ids=positions(real), use_cache=False)
    return out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]


def kl_at(model, clean: Tensor, steered: Tensor, chunk_rows: int = 256) -> Tensor:
    """KL(p_clean ‖ p_steered) per row of final hidden states ``[m, d]``, float64 ``[m]``."""
    head = output_head(model)
    out = []
    for a in range(0, len(clean), chunk_rows):
        lp_c = F.log_softmax(head(clean[a:a + chunk_rows]).float(), -1)
        lp_s = F.log_softmax(head(steered[a:a + chunk_rows]).float(), -1)
        out.append((lp_c.exp() * (lp_c - lp_s)).sum(-1).double())
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.float64)


class SteeredRows:
    """What the KL passes need of a batch: the model, SAE and hookpoint, each row's interventions
    (empty: unsteered), the window and markers, the prompt width and the shared prefill."""

    def __init__(self, model, sae, hookpoint: str, specs: list[list[Intervention]],
                 window: Window | None, markers: ThinkMarkers | None, width: int,
                 prefill: SharedPrefill | None = None):
        self.model, self.sae, self.hookpoint, self.specs = model, sae, hookpoint, specs
        self.window, self.markers, self.width, self.prefill = window, markers, width, prefill

    def steering(self, rows: list[int]):
        return steering(self.model, self.sae, self.hookpoint, [self.specs[r] for r in rows],
                        self.window, self.markers)

    def steered_flags(self, ids: Tensor, real: Tensor, rows: list[int]) -> Tensor:
        """``[len(rows), T]`` the positions the window steers in finished rows ``ids``."""
        with self.steering(rows) as steerer:
            steerer.prompt_len = self.width
            steerer.before_forward(ids, 0)
            flags = steerer.last_mask
        return (torch.ones_like(real) if flags is None else flags.bool()) & real

    def kl(self, ids: Tensor, real: Tensor, flags: Tensor, rows: list[int]) -> Tensor:
        """KL per position (NaN where not steered) of finished rows ``ids`` (batch ``rows``):
        teacher-forced passes with and without their steering."""
        prefill = self.prefill
        start = prefill.length if prefill is not None else 0
        index = torch.tensor(rows, device=ids.device)

        def hidden() -> Tensor:
            if prefill is None:
                return final_hidden_states(self.model, ids, real)
            return hidden_after(self.model, prefill, index, ids, real)

        with self.steering(rows) as steerer:
            steerer.prompt_len = self.width
            if prefill is not None:
                steerer.prime(ids[:, :start], self.width)
            h_steered = hidden()
        h_clean = hidden()
        after = flags[:, start:]  # none of the prefill's positions is steered
        values = kl_at(self.model, h_clean[after], h_steered[after])
        out = torch.full(ids.shape, float("nan"), dtype=torch.float64, device=values.device)
        out[flags] = values
        return out


def score_steered(rows: SteeredRows, ids: Tensor, real: Tensor, kl: bool,
                  moved: list[bool] | None = None) -> tuple[Tensor, Tensor | None]:
    """``(steered [B, T], kl [B, T] or None)`` of a finished batch: the steered positions of its
    steered rows and, with ``kl``, the KL at each (module docstring; ``moved`` from
    ``Steerer.changed``, None: every row may have changed)."""
    keep = [r for r, spec in enumerate(rows.specs) if spec]
    flags = rows.steered_flags(ids[keep], real[keep], keep)
    steered = torch.zeros_like(real)
    steered[keep] = flags
    if not kl:
        return steered, None
    sub = torch.full(flags.shape, float("nan"), dtype=torch.float64, device=ids.device)
    sub[flags] = 0.0
    pick = [j for j, r in enumerate(keep) if moved is None or moved[r]]
    if pick:
        chosen = [keep[j] for j in pick]
        sub[pick] = rows.kl(ids[chosen], real[chosen], flags[pick], chosen)
    out = torch.full(ids.shape, float("nan"), dtype=torch.float64, device=ids.device)
    out[keep] = sub
    return steered, out
