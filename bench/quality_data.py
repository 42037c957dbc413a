"""The data and the metrics of bench/quality.py: one rule for every system.

Data (:func:`prepare`): a store's traces split by thinksae's hash rule (whole questions held out,
:mod:`thinksae.store.split`); the sink rule of :mod:`thinksae.sinks` (special tokens by region,
plus tokens whose norm is above ``norm_multiple`` × the store's own median norm, that of all its
non-special tokens, as ``thinksae train`` and ``thinksae eval`` take it) applied the same way for
every system: sink rows are left out of training (unless ``drop_sinks=False``) and always out of
the held-out metrics. Held-out rows bit-identical to a training row (the shared system prompt:
every trace starts with the same tokens, so their activations are the same) are left out of the
held-out metrics too, and counted.

Metrics (:func:`quality_metrics`, the one function every system's SAE goes through, loaded by
thinksae's own loaders): per group g of held-out tokens (``all`` = every kept held-out token,
and each region):

- ``fvu_g`` = Σ‖x − x̂‖² / Σ‖x − x̄_g‖², x̄_g the group's mean (thinksae.evaluate.metrics)
- ``mse_g`` = Σ‖x − x̂‖² / (n_g · d_in)
- ``l0_g``  = mean over the group's tokens of the number of latents with activation > 0
- ``dead_pct`` = 100 · (latents with no activation > 0 on any training row) / latents

and, with a model (:func:`spliced_think`), on the think positions of the held-out traces with the
SAE spliced in at every non-sink token (sinks kept clean):

- ``ce_score`` = (CE_zero − CE_spliced) / (CE_zero − CE_clean)   (zero ablation at those tokens)
- ``kl``       = mean over positions of KL(p_clean ‖ p_spliced)
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor

from thinksae.errors import ThinksaeError
from thinksae.evaluate.metrics import ReconstructionStats
from thinksae.evaluate.spliced import SplicedStats, spliced_batch
from thinksae.sinks import SinkRule, sink_summary
from thinksae.store import ActivationStore

REGIONS = ("prompt", "think", "answer")
"""The regions reported per group (the special region is all sinks)."""


class HeldoutDoc(NamedTuple):
    """One held-out trace in position order: token ids, region codes and sink flags."""

    input_ids: Tensor
    regions: Tensor
    sinks: Tensor


class BenchData(NamedTuple):
    """What every system trains and is measured on."""

    train_x: Tensor
    """Training rows ``[n, d_in]`` float32 (sinks dropped unless asked to keep them)."""
    eval_x: Tensor
    """Kept held-out rows (no sinks, none equal to a training row)."""
    eval_regions: Tensor
    """Region code of each kept held-out row."""
    region_names: list[str]
    heldout_docs: list[HeldoutDoc]
    summary: dict
    """Counts and the sink rule, for the report."""
    heldout_doc_index: np.ndarray | None = None
    """The store's document indices of the held-out traces (the order of ``heldout_docs``)."""
    sink_rule: SinkRule | None = None
    """The rule that marked the sinks (the store's median, the bench's norm multiple)."""


def _labels(store: ActivationStore) -> dict[str, np.ndarray]:
    out = {}
    for name in ("token_ids", "regions", "doc_index", "positions"):
        try:
            out[name] = store.labels(name)
        except KeyError:
            raise ThinksaeError(f"store {store.path} has no {name} labels; re-harvest it with "
                                "`thinksae harvest`") from None
    return out


def _rows_equal_to(rows: Tensor, reference: Tensor) -> np.ndarray:
    """Bool per row of ``rows``: bit-identical to some row of ``reference`` (candidates found by
    a random projection, then compared exactly)."""
    direction = torch.randn(rows.shape[1], generator=torch.Generator().manual_seed(0),
                            dtype=torch.float64)
    index: dict[float, list[int]] = {}
    for i, key in enumerate((reference.double() * direction).sum(1).tolist()):
        index.setdefault(key, []).append(i)
    keys = (rows.double() * direction).sum(1).tolist()
    return np.array([any(torch.equal(rows[j], reference[i]) for i in index.get(key, ()))
                     for j, key in enumerate(keys)], dtype=bool)


def prepare(store_path: str, holdout: float, norm_multiple: float | None,
            drop_sinks: bool = True) -> BenchData:
    """Split, apply the sink rule and gather the rows (module docstring)."""
    store = ActivationStore(store_path)
    labels = _labels(store)
    names = list(store.manifest["regions"])
    if "special" not in names:
        raise ThinksaeError(f"store {store_path} has no special region")
    held = store.split_docs(holdout, "heldout")
    x = store.gather(np.arange(store.num_tokens))
    norms = x.norm(dim=1)
    special = torch.from_numpy(labels["regions"] == names.index("special"))
    is_train = torch.from_numpy(~np.isin(labels["doc_index"], held))
    median = store.sink_rule.median_norm
    rule = SinkRule(norm_multiple, median)
    sinks = rule.mask(norms, special)
    train_keep = is_train & ~sinks if drop_sinks else is_train
    held_rows = ~is_train & ~sinks
    duplicate = torch.zeros_like(held_rows)
    duplicate[held_rows] = torch.from_numpy(_rows_equal_to(x[held_rows], x[is_train]))
    eval_keep = held_rows & ~duplicate
    ids = torch.from_numpy(labels["token_ids"].astype(np.int64))
    regions = torch.from_numpy(labels["regions"].astype(np.int64))
    dup_regions = {names[r]: int(c) for r, c in enumerate(
        torch.bincount(regions[duplicate], minlength=len(names)).tolist()) if c}
    summary = {
        "store": str(store_path), "store_hash": store.hash, "d_in": store.d_in,
        "tokens": store.num_tokens, "traces": len(store.trace_ids), "holdout": holdout,
        "heldout_traces": [store.trace_ids[i] for i in held],
        "sink_rule": {"norm_multiple": norm_multiple, "median_norm": median,
                      "threshold": rule.threshold(norms, special)},
        "sinks_train": sink_summary(sinks[is_train], special[is_train], ids[is_train]),
        "sinks_heldout": sink_summary(sinks[~is_train], special[~is_train], ids[~is_train]),
        "sinks_dropped_from_training": drop_sinks,
        "train_rows": int(train_keep.sum()),
        "heldout_rows": int((~is_train).sum()),
        "heldout_equal_to_training_row": int(duplicate.sum()),
        "heldout_equal_by_region": dup_regions,
        "eval_rows": int(eval_keep.sum()),
        "eval_rows_by_region": {n: int(((regions == i) & eval_keep).sum())
                                for i, n in enumerate(names)},
    }
    docs = []
    for d in held:
        rows = np.flatnonzero(labels["doc_index"] == d)
        rows = rows[np.argsort(labels["positions"][rows], kind="stable")]
        docs.append(HeldoutDoc(ids[rows], regions[rows].to(torch.uint8), sinks[rows]))
    return BenchData(x[train_keep].contiguous(), x[eval_keep].contiguous(),
                     regions[eval_keep], names, docs, summary, np.asarray(held), rule)


@torch.no_grad()
def quality_metrics(sae, data: BenchData, chunk: int = 4096) -> dict:
    """The reconstruction metrics of one SAE (module docstring), per group of held-out tokens."""
    sae = sae.float().eval()
    groups = {"all": None, **{r: data.region_names.index(r) for r in REGIONS}}
    stats = {g: ReconstructionStats(sae.d_in, sae.num_latents) for g in groups}
    for a in range(0, len(data.eval_x), chunk):
        x, reg = data.eval_x[a : a + chunk], data.eval_regions[a : a + chunk]
        acts, idx = sae.encode(x)
        x_hat = sae.decode(acts, idx)
        for g, code in groups.items():
            sel = slice(None) if code is None else reg == code
            stats[g].update(x[sel], x_hat[sel], acts[sel], idx[sel])
    fired = torch.zeros(sae.num_latents, dtype=torch.bool)
    for a in range(0, len(data.train_x), chunk):
        acts, idx = sae.encode(data.train_x[a : a + chunk])
        fired[idx[acts > 0]] = True
    out = {}
    for g, s in stats.items():
        r = s.result()
        out[g] = {"tokens": r["tokens"], "fvu": r["fvu"], "mse": r["mse"], "l0": r["l0"]}
    out["dead_pct"] = 100.0 * float((~fired).float().mean())
    return out


@torch.no_grad()
def spliced_think(model, hookpoint: str, sae, data: BenchData, pad_id: int = 0,
                  batch_size: int = 4, max_traces: int | None = None) -> dict:
    """CE-loss score and KL at the think positions of the held-out traces (the first
    ``max_traces`` of them; None: all), the SAE spliced in at every non-sink token (module
    docstring; :mod:`thinksae.evaluate.spliced` does the runs)."""
    think = data.region_names.index("think")
    stats = SplicedStats()
    sae = sae.float().eval()
    device = next(model.parameters()).device
    heldout = data.heldout_docs[:max_traces]
    for a in range(0, len(heldout), batch_size):
        docs = heldout[a : a + batch_size]
        width = max(len(d.input_ids) for d in docs)
        ids = torch.full((len(docs), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(docs), width), dtype=torch.long)
        regions = torch.zeros((len(docs), width), dtype=torch.uint8)
        sinks = torch.zeros((len(docs), width), dtype=torch.bool)
        for row, d in enumerate(docs):
            n = len(d.input_ids)
            ids[row, :n], mask[row, :n], regions[row, :n], sinks[row, :n] = \
                d.input_ids, 1, d.regions, d.sinks
        out = spliced_batch(model, hookpoint, sae, ids.to(device), mask.to(device),
                            keep_clean=sinks)
        scored = out.loss_mask.cpu()
        sel = (regions[scored] == think) & ~sinks[scored]
        stats.update(**{k: v.cpu()[sel] for k, v in out.losses.items()})
    r = stats.result()
    return {"positions": r["ce_positions"], "ce_score": r["loss_recovered"],
            "kl": r["kl_spliced"], "ce_clean": r["ce_clean"], "ce_spliced": r["ce_spliced"]}
