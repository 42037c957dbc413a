"""Which rows of an activation store training leaves out: the sink rule of :mod:`thinksae.sinks`.

A row is a sink when it is a special token (the store's ``special`` region) or when its norm is
above ``sink_norm_multiple`` × the store's median norm — the median over all of the store's
non-special tokens, the one reference every stage uses (:attr:`ActivationStore.sink_rule`), so a
token training leaves out is the token eval, the analysis and validation leave out. The rule and
what it dropped from the training tokens (the documents not held out, in the regions trained on)
are recorded in the report card (training section, ``sinks``). Dropping them also keeps
BatchTopK's batch budget (k × batch latents) from being spent on them.
"""

from __future__ import annotations

import numpy as np
import torch

from ..errors import ThinksaeError
from ..sinks import SinkRule, sink_summary


def sink_keep_mask(store, norm_multiple: float | None, pool: np.ndarray
                   ) -> tuple[np.ndarray, dict]:
    """``(keep, record)``: bool per row of ``store``, False at sinks; and what the rule did on
    the training ``pool`` (global row indices: the regions and documents trained on).

    ``record`` = ``{"norm_multiple", "median_norm", "threshold"}`` plus :func:`sink_summary`'s
    counts over the pool (``tokens``, ``sinks``, ``special``, ``by_norm``, ``by_norm_tokens``).
    """
    try:
        ids = store.labels("token_ids")
        store.labels("regions")
    except KeyError:
        raise ThinksaeError(f"store {store.path} has no token ids or regions (written by another "
                            "tool?); re-harvest it with `thinksae harvest`, or train with "
                            "--nodrop_sinks") from None
    norms = torch.from_numpy(store.norms)
    pool_t = torch.from_numpy(pool)
    bad = int((~torch.isfinite(norms[pool_t])).sum())
    if bad:
        raise ThinksaeError(f"non-finite values in {bad} training rows of store {store.path}; "
                            "nothing written (re-harvest it)")
    special = torch.from_numpy(store.special)
    rule = SinkRule(norm_multiple, store.sink_rule.median_norm)
    sinks = rule.mask(norms, special)
    summary = sink_summary(sinks[pool_t], special[pool_t],
                           torch.from_numpy(ids.astype(np.int64))[pool_t])
    threshold = rule.threshold(norms, special)
    record = {"norm_multiple": norm_multiple, "median_norm": rule.median_norm,
              "threshold": threshold if np.isfinite(threshold) else None, **summary}
    return ~sinks.numpy(), record
