"""Logit lens of SAE features: a decoder row through the model's final norm and unembedding.

A feature's decoder row is the direction it writes into the residual stream (also for SAEs on an
MLP's output, which is added to the residual). ``lm_head(norm(W_dec[i]))`` says which next tokens
that direction promotes (largest logits) and suppresses (smallest). Only the ranking matters, so
the row's scale does not.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..errors import ThinksaeError
from ..models.hookpoints import decoder_stack


def lens_modules(model: nn.Module, d_in: int) -> tuple[nn.Module, nn.Module]:
    """(final norm, unembedding) of a decoder LM, after checking its width against ``d_in``."""
    stack = decoder_stack(model)
    norm, head = getattr(stack, "norm", None), model.get_output_embeddings()
    if norm is None or head is None:
        raise ThinksaeError(f"{type(model).__name__} has no final norm or unembedding "
                            "for the logit lens")
    width = head.weight.shape[1]
    if width != d_in:
        raise ThinksaeError(f"SAE/model mismatch: the SAE's d_in is {d_in} but the model's "
                            f"hidden size is {width}")
    return norm, head


@torch.inference_mode()
def logit_lens(model: nn.Module, w_dec: Tensor, features: Tensor, k: int = 10,
               batch: int = 256) -> dict[str, Tensor]:
    """Top-``k`` promoted and suppressed token ids and logits for the given features.

    Returns ``lens_pos_ids, lens_pos_logits, lens_neg_ids, lens_neg_logits`` of shape
    ``[num_latents, k]`` (ids -1 for features not asked for).
    """
    norm, head = lens_modules(model, w_dec.shape[1])
    param = head.weight
    n = w_dec.shape[0]
    k = min(k, param.shape[0])
    out = {"lens_pos_ids": torch.full((n, k), -1, dtype=torch.int64),
           "lens_neg_ids": torch.full((n, k), -1, dtype=torch.int64),
           "lens_pos_logits": torch.zeros((n, k)), "lens_neg_logits": torch.zeros((n, k))}
    features = features.long().cpu()
    for a in range(0, len(features), batch):
        f = features[a : a + batch]
        rows = w_dec[f.to(w_dec.device)].to(param.device, param.dtype)
        logits = head(norm(rows[None]))[0].float()
        pos = torch.topk(logits, k, dim=1)
        neg = torch.topk(logits, k, dim=1, largest=False)
        out["lens_pos_ids"][f], out["lens_pos_logits"][f] = pos.indices.cpu(), pos.values.cpu()
        out["lens_neg_ids"][f], out["lens_neg_logits"][f] = neg.indices.cpu(), neg.values.cpu()
    return out
