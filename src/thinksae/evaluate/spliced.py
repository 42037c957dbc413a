"""Splicing: run the model with the hookpoint's output replaced, and score its next-token losses.

Per position t of a document that has a next token (losses belong to the groups of position t,
the token whose hookpoint output was replaced and whose prediction is scored):

- ``ce`` = −ln p(token[t+1] | tokens[..t]), averaged over positions.
- ``ce_clean``: the model as it is. ``ce_spliced``: the hookpoint output replaced by the SAE's
  reconstruction x̂ at every token. ``ce_zero_ablated``: replaced by zeros.
  ``ce_mean_ablated``: replaced by the mean hookpoint output over the eval-set tokens it replaces
  (the caller passes that mean; `thinksae eval` computes it in a first pass that stops at the
  hookpoint, over the --splice_regions tokens only: the kept-clean ones do not enter it).
- ``loss_recovered`` = (CE_zero − CE_spliced) / (CE_zero − CE_clean); ``loss_recovered_mean``
  the same with the mean-ablated CE.
- ``kl_spliced`` = mean over positions of KL(p_clean ‖ p_spliced)
  = Σ_v p_clean(v) (ln p_clean(v) − ln p_spliced(v)) over the vocabulary; ``kl_zero_ablated``
  the same with the zero-ablated distribution (the denominator of SAEBench's KL score).

Sinks (:mod:`thinksae.sinks`: the special tokens and norm sinks, given a rule) are kept clean in
every replacement, as are the tokens outside the splice regions.

Each replacement runs only the blocks above the hookpoint from the replaced output where the
model allows it (:func:`~thinksae.models.splice.resume_layer`); the blocks below ran once, in the
clean pass. Logits are the model's output embeddings applied to the final hidden state, computed a few
hundred positions at a time, so no [batch, seq, vocab] tensor is ever held.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..models.hookpoints import resolve_hookpoint
from ..models.splice import final_hidden, final_hidden_from, output_head, resume_layer, splice
from ..sinks import SinkRule
from .metrics import loss_recovered
from .sink_tokens import sink_mask


def replace_with(value: Tensor) -> Callable[[Tensor], Tensor]:
    """Replacement by a fixed tensor broadcast to the output's shape (x̂, zeros, the mean)."""

    def replace(output: Tensor) -> Tensor:
        return value.to(output.device, output.dtype).expand_as(output)

    return replace


def add_error_back(x_hat: Tensor) -> Callable[[Tensor], Tensor]:
    """Replacement by x̂ + (x − x̂), x the live output: the SAE's reconstruction with its error
    added back. Computed in float64, so it equals x bit for bit (a check on the splicing)."""

    def replace(output: Tensor) -> Tensor:
        recon = x_hat.to(output.device, torch.float64)
        return (recon + (output.double() - recon)).to(output.dtype)

    return replace


def token_losses(head: nn.Module, hidden: dict[str, Tensor], targets: Tensor,
                 kl_for: tuple[str, ...] = ("spliced",), chunk_rows: int = 256
                 ) -> dict[str, Tensor]:
    """Per-position ``ce_<name>`` for each hidden-state set ``[m, d_model]`` (``clean`` among
    them) and ``kl_<name>`` = KL(p_clean ‖ p_name) for the sets in ``kl_for``, float64 ``[m]``."""
    out: dict[str, list[Tensor]] = defaultdict(list)
    for a in range(0, len(targets), chunk_rows):
        tgt = targets[a : a + chunk_rows]
        logp_clean = F.log_softmax(head(hidden["clean"][a : a + chunk_rows]).float(), dim=-1)
        out["ce_clean"].append(-logp_clean.gather(-1, tgt[:, None])[:, 0].double())
        p_clean = logp_clean.exp()
        for name, h in hidden.items():
            if name == "clean":
                continue
            logp = F.log_softmax(head(h[a : a + chunk_rows]).float(), dim=-1)
            out[f"ce_{name}"].append(-logp.gather(-1, tgt[:, None])[:, 0].double())
            if name in kl_for:
                out[f"kl_{name}"].append((p_clean * (logp_clean - logp)).sum(-1).double())
    empty = torch.zeros(0, dtype=torch.float64, device=targets.device)
    names = [f"ce_{n}" for n in hidden] + [f"kl_{n}" for n in kl_for if n in hidden]
    return {n: torch.cat(out[n]) if out[n] else empty for n in names}


class SplicedBatch(NamedTuple):
    """What one batch of documents yields: the hookpoint outputs at real tokens with the SAE's
    reconstruction and latents, and per-position losses."""

    x: Tensor
    """Hookpoint output at the real (unpadded) tokens ``[n, d_in]``, float32, row-major order."""
    x_hat: Tensor
    latent_acts: Tensor
    latent_indices: Tensor
    token_mask: Tensor
    """``[batch, seq]`` True at real tokens (the rows of ``x``)."""
    loss_mask: Tensor
    """``[batch, seq]`` True at real tokens that have a real next token (the rows of losses)."""
    losses: dict[str, Tensor]
    """``ce_clean``, ``ce_spliced``, ``ce_zero``, ``kl_spliced``, ``kl_zero`` (and ``ce_mean``
    with a mean) per scored position ``[m]``."""
    sinks: Tensor | None = None
    """``[batch, seq]`` True at the sinks by the rule given (kept clean); None without a rule."""
    replaced: Tensor | None = None
    """``[batch, seq]`` True where the hookpoint output was replaced (real tokens neither kept
    clean nor sinks)."""


def clean_pass(model: nn.Module, module: nn.Module, input_ids: Tensor,
               attention_mask: Tensor) -> tuple[Tensor, Tensor]:
    """``(final hidden state, hookpoint output)`` of one clean forward (``module``: the
    hookpoint's)."""
    captured: list[Tensor] = []

    def keep(output: Tensor) -> Tensor:
        captured.append(output)
        return output

    with splice(module, keep):
        hidden = final_hidden(model, input_ids, attention_mask)
    return hidden, captured[0]


def hidden_with(model: nn.Module, hookpoint: str, module: nn.Module, value: Tensor,
                input_ids: Tensor, attention_mask: Tensor, clean: Tensor) -> Tensor:
    """The final hidden state with the hookpoint output replaced by ``replace_with(value)`` of
    the ``clean`` output: only the blocks above the hookpoint run where the model allows it
    (they ran once, in the clean pass), else a whole pass with the replacement spliced in."""
    layer = resume_layer(model, hookpoint)
    if layer is not None:
        return final_hidden_from(model, layer, replace_with(value)(clean), attention_mask)
    with splice(module, replace_with(value)):
        return final_hidden(model, input_ids, attention_mask)


@torch.inference_mode()
def spliced_batch(model: nn.Module, hookpoint: str, sae, input_ids: Tensor,
                  attention_mask: Tensor, mean: Tensor | None = None,
                  chunk_rows: int = 256, keep_clean: Tensor | None = None,
                  sink_rule: SinkRule | None = None, special: Tensor | None = None
                  ) -> SplicedBatch:
    """Run a right-padded batch clean, with the SAE spliced in, zero- and (with ``mean``)
    mean-ablated at ``hookpoint``, and score next-token losses (module docstring).

    ``keep_clean`` ``[batch, seq]`` (bool) leaves the hookpoint output as it is at those positions
    in every replacement, e.g. at special tokens the SAE was not trained on; with ``sink_rule``
    so are the sinks by that rule (``special`` ``[batch, seq]``: the special tokens; the median,
    where the rule has none, is the batch's)."""
    module = resolve_hookpoint(model, hookpoint)
    hidden_clean, clean = clean_pass(model, module, input_ids, attention_mask)
    hidden = {"clean": hidden_clean}
    token_mask = attention_mask.bool()
    sinks = None
    if sink_rule is not None:
        flags = special if special is not None else torch.zeros_like(token_mask)
        sinks = sink_mask(sink_rule, clean, flags, token_mask).to(clean.device)
        keep_clean = sinks if keep_clean is None else keep_clean.to(clean.device) | sinks
    x = clean[token_mask].float()
    acts, indices = sae.encode(x.to(sae.dtype))
    x_hat = sae.decode(acts, indices).float()
    full_hat = clean.clone()
    full_hat[token_mask] = x_hat.to(clean.dtype)
    replacements = {"spliced": full_hat, "zero": torch.zeros((), dtype=clean.dtype)}
    if mean is not None:
        replacements["mean"] = mean
    replaced = token_mask.clone()
    if keep_clean is not None:
        keep = keep_clean.to(clean.device)
        replaced &= ~keep
        replacements = {name: torch.where(keep[..., None], clean,
                                          value.to(clean.device, clean.dtype))
                        for name, value in replacements.items()}
    for name, value in replacements.items():
        hidden[name] = hidden_with(model, hookpoint, module, value, input_ids, attention_mask,
                                   clean)
    loss_mask = token_mask.clone()
    loss_mask[:, :-1] &= token_mask[:, 1:]
    loss_mask[:, -1] = False
    pred = loss_mask[:, :-1]
    targets = input_ids[:, 1:][pred]
    losses = token_losses(output_head(model), {n: h[:, :-1][pred] for n, h in hidden.items()},
                          targets, kl_for=("spliced", "zero"), chunk_rows=chunk_rows)
    return SplicedBatch(x, x_hat, acts, indices, token_mask, loss_mask, losses, sinks, replaced)


class SplicedStats:
    """Running sums of the per-position losses of one group of tokens."""

    def __init__(self):
        self.positions = 0
        self.sums: dict[str, float] = defaultdict(float)

    def update(self, **losses: Tensor) -> None:
        """Add positions: each loss ``[m]`` (``ce_clean``, ``ce_spliced``, …)."""
        self.positions += len(next(iter(losses.values())))
        for name, values in losses.items():
            self.sums[name] += float(values.double().sum())

    def result(self) -> dict[str, float | int | None]:
        """Mean CE per setting, loss recovered, mean KL (None for an empty group)."""
        n = self.positions
        mean = {k: (v / n if n else None) for k, v in self.sums.items()}
        clean, spliced = mean.get("ce_clean"), mean.get("ce_spliced")
        zero, ablated_mean = mean.get("ce_zero"), mean.get("ce_mean")
        out = {"ce_positions": n, "ce_clean": clean, "ce_spliced": spliced,
               "ce_zero_ablated": zero, "ce_mean_ablated": ablated_mean,
               "loss_recovered": None, "loss_recovered_mean": None,
               "kl_spliced": mean.get("kl_spliced"), "kl_zero_ablated": mean.get("kl_zero")}
        if n and clean is not None:
            out["loss_recovered"] = loss_recovered(zero, spliced, clean)
            if ablated_mean is not None:
                out["loss_recovered_mean"] = loss_recovered(ablated_mean, spliced, clean)
        return out
