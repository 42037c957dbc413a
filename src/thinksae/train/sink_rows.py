"""Which rows of an activation store training leaves out: the sink rule of :mod:`thinksae.sinks`.

A row is a sink when it is a special token (the store's ``special`` region) or when its norm is
above ``sink_norm_multiple`` × the median norm of the store's non-special *training* tokens (the
documents not held out, in the regions trained on). The rule, the median and what it dropped
are recorded in the report card (training section, ``sinks``). Dropping them also keeps
BatchTopK's batch budget (k × batch latents) from being spent on them.
"""

from __future__ import annotations

import numpy as np
import torch

from ..errors import ThinksaeError
from ..sinks import SinkRule, median_norm, sink_summary


def parse_norm_multiple(value: float | str | None) -> float | None:
    """The ``sink_norm_multiple`` option as a number, or None for ``none`` (special tokens only);
    a one-line error for anything else or a number <= 1."""
    if value is None or (isinstance(value, str) and value.strip().lower() == "none"):
        return None
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            raise ThinksaeError(f"sink_norm_multiple must be a number > 1 or none (got "
                                f"{value!r})") from None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 1 < value < np.inf:
        raise ThinksaeError(f"sink_norm_multiple must be a finite number > 1, or none to keep only "
                            f"the special-token rule (got {value!r})")
    return float(value)


def _store_labels(store) -> tuple[np.ndarray, np.ndarray]:
    try:
        return store.labels("token_ids"), store.labels("regions")
    except KeyError:
        raise ThinksaeError(f"store {store.path} has no token ids or regions (written by another "
                            "tool?); re-harvest it with `thinksae harvest`, or train with "
                            "--nodrop_sinks") from None


def row_norms(store, chunk_tokens: int = 65536) -> np.ndarray:
    """‖x‖ of every row of the store, in store order (float32; one pass over the shards)."""
    return np.concatenate([c["activations"].norm(dim=1).numpy()
                           for c in store.iter_chunks(chunk_tokens)])


def sink_keep_mask(store, norm_multiple: float | None, pool: np.ndarray
                   ) -> tuple[np.ndarray, dict]:
    """``(keep, record)``: bool per row of ``store``, False at sinks; and what the rule did on
    the training ``pool`` (global row indices: the regions and documents trained on).

    ``record`` = ``{"norm_multiple", "median_norm", "threshold"}`` plus :func:`sink_summary`'s
    counts over the pool (``tokens``, ``sinks``, ``special``, ``by_norm``, ``by_norm_tokens``).
    """
    ids, regions = _store_labels(store)
    names = list(store.manifest.get("regions") or [])
    special = np.zeros(store.num_tokens, dtype=bool)
    if "special" in names:
        special = regions == names.index("special")
    norms = torch.from_numpy(row_norms(store))
    special_t = torch.from_numpy(special)
    pool_t = torch.from_numpy(pool)
    bad = int((~torch.isfinite(norms[pool_t])).sum())
    if bad:
        raise ThinksaeError(f"non-finite values in {bad} training rows of store {store.path}; "
                            "nothing written (re-harvest it)")
    median = median_norm(norms[pool_t], special_t[pool_t])
    rule = SinkRule(norm_multiple, median)
    sinks = rule.mask(norms, special_t)
    summary = sink_summary(sinks[pool_t], special_t[pool_t],
                           torch.from_numpy(ids.astype(np.int64))[pool_t])
    threshold = rule.threshold(norms, special_t)
    record = {"norm_multiple": norm_multiple, "median_norm": median,
              "threshold": threshold if np.isfinite(threshold) else None, **summary}
    return ~sinks.numpy(), record
