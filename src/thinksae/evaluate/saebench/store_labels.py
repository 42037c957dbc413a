"""k-sparse probing on thinksae's own labels, from an activation store.

Units (what one probe example is), built per trace, never across traces, from the kept tokens
(sinks: the ``special`` region and norm sinks, excluded before pooling):

- **regions** (prompt / think / answer): a window of at most ``window_tokens`` consecutive tokens
  of one contiguous run of one region. Whole regions would make the task trivial (a trace has one
  run of each, and its length alone tells them apart) and leave one example per trace; windows
  ask whether *local* activations say where in a trace a token is.
- **behaviours** (backtracking, verification, …): a sentence of the think region (ended by a
  token whose text ends in . ! ? or holds a newline), labelled with every behaviour tag one of
  its tokens carries. The tags mark trigger phrases ("Wait", "let me check"); a sentence is the
  smallest unit whose meaning the tag describes, and it holds enough context that a probe need
  not be a word detector (the trigger tokens are in it, so a word detector still helps).

Units are mean-pooled (residual and SAE latents, each token encoded then averaged as SAEBench
does), split train/test by trace, and probed one-vs-rest (:mod:`.sparse_probing`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ...errors import ThinksaeError
from ...sinks import SinkRule
from .sparse_probing import ProbingOptions, ProbingResult, probe_classes, split_groups

REGION_CLASSES = ("prompt", "think", "answer")
SENTENCE_END = (".", "!", "?")


def sentence_end_ids(tokenizer) -> set[int]:
    """Ids of tokens that end a sentence: their text, trailing spaces removed, ends in . ! or ?,
    or holds a newline (a decimal point also counts: sentences are approximate)."""
    out = set()
    for token, token_id in tokenizer.get_vocab().items():
        text = tokenizer.convert_tokens_to_string([token])
        if "\n" in text or text.rstrip(" ").endswith(SENTENCE_END):
            out.add(int(token_id))
    return out


def _runs(doc: np.ndarray, code: np.ndarray, eligible: np.ndarray) -> np.ndarray:
    """Run id per token: a run is a maximal stretch of eligible tokens of one trace and one code
    (−1 for ineligible tokens)."""
    start = eligible.copy()
    start[1:] &= ~(eligible[:-1] & (doc[1:] == doc[:-1]) & (code[1:] == code[:-1]))
    run = np.cumsum(start) - 1
    return np.where(eligible, run, -1)


def _windows(run: np.ndarray, window: int | None) -> np.ndarray:
    """Split each run into windows of at most ``window`` tokens: a unit id per token (−1 kept)."""
    if window is None:
        return run
    idx = np.arange(len(run))
    first = np.full(run.max() + 1 if len(run) and run.max() >= 0 else 0, len(run))
    np.minimum.at(first, run[run >= 0], idx[run >= 0])
    offset = np.where(run >= 0, idx - first[np.maximum(run, 0)], 0)
    key = np.where(run >= 0, run.astype(np.int64) * (len(run) + 1) + offset // window, -1)
    return _renumber(key)


def _renumber(key: np.ndarray) -> np.ndarray:
    """Consecutive ids 0.. for the distinct non-negative keys, in order of first appearance."""
    out = np.full(len(key), -1, dtype=np.int64)
    valid = key >= 0
    _, first, inverse = np.unique(key[valid], return_index=True, return_inverse=True)
    rank = np.argsort(np.argsort(first))
    out[valid] = rank[inverse]
    return out


def region_units(doc: np.ndarray, regions: np.ndarray, codes: list[int], window: int | None
                 ) -> np.ndarray:
    """Unit id per token for the region probes (module docstring); −1 outside units."""
    return _windows(_runs(doc, regions, np.isin(regions, codes)), window)


def sentence_units(doc: np.ndarray, regions: np.ndarray, think: int, token_ids: np.ndarray,
                   ends: set[int] | None, window: int | None) -> np.ndarray:
    """Unit id per token for the behaviour probes: sentences of the think region (windows of it
    when no sentence ends are known); −1 outside units."""
    eligible = regions == think
    if ends is None:
        return _windows(_runs(doc, regions, eligible), window)
    after_end = np.zeros(len(doc), dtype=bool)
    after_end[1:] = np.isin(token_ids[:-1], list(ends))
    start = eligible.copy()
    start[1:] &= ~(eligible[:-1] & (doc[1:] == doc[:-1]) & ~after_end[1:])
    return np.where(eligible, np.cumsum(start) - 1, -1)


@dataclass
class StoreProbing:
    """k-sparse probing on a store's labels; ``to_dict`` is JSON."""

    regions: ProbingResult | None
    behaviours: ProbingResult | None
    tokens: int
    """Tokens read (of the traces used)."""
    sink_tokens: int
    """Of them, dropped by the sink rule before pooling."""
    traces: int

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _pool(store, sae, indices: np.ndarray, unit: np.ndarray, kept: np.ndarray, chunk: int
          ) -> tuple[Tensor, Tensor]:
    """Mean over each unit's kept tokens of the activations (dense ``[U, d]``) and of the SAE
    latents (sparse ``[U, num_latents]``)."""
    n_units = int(unit.max()) + 1
    sums = torch.zeros(n_units, store.d_in, dtype=torch.float64)
    counts = torch.zeros(n_units, dtype=torch.float64)
    where, values = [torch.zeros(2, 0, dtype=torch.long)], [torch.zeros(0, dtype=torch.float64)]
    use = np.flatnonzero((unit >= 0) & kept)
    for a in range(0, len(use), chunk):
        part = use[a : a + chunk]
        x = store.gather(indices[part])
        rows = torch.from_numpy(unit[part])
        sums.index_add_(0, rows, x.double())
        counts.index_add_(0, rows, torch.ones(len(rows), dtype=torch.float64))
        with torch.inference_mode():
            acts, ids = sae.encode(x.to(sae.device, sae.dtype))
        part_sum = torch.sparse_coo_tensor(
            torch.stack([rows.repeat_interleave(acts.shape[1]), ids.cpu().reshape(-1)]),
            acts.cpu().reshape(-1).double(), (n_units, sae.num_latents),
            check_invariants=False).coalesce()  # sums repeated (unit, latent) pairs
        where.append(part_sum.indices())
        values.append(part_sum.values())
    scale = 1 / counts.clamp_min(1)
    total = torch.sparse_coo_tensor(torch.cat(where, 1), torch.cat(values),
                                    (n_units, sae.num_latents), check_invariants=False).coalesce()
    means = total.values() * scale[total.indices()[0]]
    pooled = torch.sparse_coo_tensor(total.indices(), means.float(), total.shape,
                                     check_invariants=False).coalesce()
    return pooled, (sums * scale[:, None]).float()


def _kept(store, indices: np.ndarray, regions: np.ndarray, special: int | None, rule: SinkRule,
          chunk: int) -> np.ndarray:
    """Tokens the sink rule keeps (not special, norm not above the threshold)."""
    is_special = regions == special if special is not None else np.zeros(len(regions), bool)
    if rule.norm_multiple is None:
        return ~is_special
    norms = torch.cat([store.gather(indices[a : a + chunk]).norm(dim=-1)
                       for a in range(0, len(indices), chunk)])
    return ~rule.mask(norms, torch.from_numpy(is_special)).numpy()


def _unit_labels(family: str, unit: np.ndarray, regions: np.ndarray, behaviours: np.ndarray,
                 region_names: list[str], behaviour_names: list[str]
                 ) -> tuple[Tensor, list[str], Tensor]:
    """Per unit: multi-hot labels ``[U, C]``, the class names, and the negative-sampling strata
    (regions: the unit's region; behaviours: its first tag, C for none)."""
    n_units = int(unit.max()) + 1
    at = unit >= 0
    if family == "regions":
        names = list(REGION_CLASSES)
        code_to_class = {region_names.index(n): i for i, n in enumerate(names)}
        labels = np.zeros((n_units, len(names)), dtype=bool)
        labels[unit[at], [code_to_class[int(c)] for c in regions[at]]] = True
        return torch.from_numpy(labels), names, torch.from_numpy(labels.argmax(1))
    names = list(behaviour_names[1:])
    labels = np.zeros((n_units, len(names)), dtype=bool)
    tagged = at & (behaviours > 0)
    labels[unit[tagged], behaviours[tagged].astype(np.int64) - 1] = True
    strata = np.where(labels.any(1), labels.argmax(1), len(names))
    return torch.from_numpy(labels), names, torch.from_numpy(strata)


def _probe_family(family: str, store, sae, data: dict[str, np.ndarray], kept: np.ndarray,
                  opts: ProbingOptions, sentence_ends: set[int] | None, chunk: int) -> ProbingResult:
    """Units, pooled features and probes of one label family."""
    region_names = list(store.manifest["regions"])
    if family == "regions":
        codes = [region_names.index(n) for n in REGION_CLASSES]
        unit = region_units(data["doc"], data["regions"], codes, opts.window_tokens)
    else:
        unit = sentence_units(data["doc"], data["regions"], region_names.index("think"),
                              data["token_ids"], sentence_ends, opts.window_tokens)
    unit = _renumber(np.where(kept, unit, -1))
    if unit.max(initial=-1) < 0:
        raise ThinksaeError(f"probing {family}: no tokens of the store form a unit")
    labels, names, strata = _unit_labels(family, unit, data["regions"], data["behaviours"],
                                         region_names, list(store.manifest["behaviours"]))
    first = np.unique(unit[unit >= 0], return_index=True)[1]
    groups = torch.from_numpy(data["doc"][unit >= 0][first].astype(np.int64))
    train, test = split_groups(groups, opts.test_fraction, opts.seed)
    present, skipped = [], {}
    for c, name in enumerate(names):
        n_train, n_test = int(labels[train, c].sum()), int(labels[test, c].sum())
        if min(n_train, n_test) < opts.min_units:
            skipped[name] = (f"{n_train} training and {n_test} test units (need {opts.min_units} "
                             "on each side)")
        else:
            present.append(c)
    if not present:
        raise ThinksaeError(f"probing {family}: no class has {opts.min_units} units on both "
                            f"sides of the trace split ({skipped}); use more traces")
    sae_features, residual = _pool(store, sae, data["indices"], unit, kept, chunk)
    result = probe_classes(family, sae_features, residual, labels[:, present],
                           [names[c] for c in present], groups, strata, opts)
    result.skipped = skipped
    return result


def store_probing(store, sae, options: ProbingOptions | None = None,
                  sink_rule: SinkRule | None = None, sentence_ends: set[int] | None = None,
                  docs=None, families: tuple[str, ...] = ("regions", "behaviours"),
                  chunk_tokens: int = 8192) -> StoreProbing:
    """k-sparse probing of ``sae`` on a store's region and behaviour labels (module docstring).

    ``docs``: the traces to use (e.g. the held-out split; default all), of which at most
    ``options.max_traces`` (seeded sample); ``sentence_ends``: :func:`sentence_end_ids` of the
    store's tokenizer (None: behaviour units are think windows); ``sink_rule``: the store's rule
    (default rule, median over the tokens read)."""
    opts = options or ProbingOptions()
    opts.check()
    unknown = sorted(set(families) - {"regions", "behaviours"})
    if unknown:
        raise ThinksaeError(f"unknown probing label families {unknown} (use regions, behaviours)")
    chosen = np.arange(len(store.trace_ids)) if docs is None else np.unique(np.asarray(docs))
    if opts.max_traces is not None and len(chosen) > opts.max_traces:
        rng = np.random.default_rng(opts.seed)
        chosen = np.sort(rng.choice(chosen, opts.max_traces, replace=False))
    indices = store.token_indices(docs=chosen)
    data = {"indices": indices, "doc": store.labels("doc_index")[indices],
            "regions": store.labels("regions")[indices],
            "behaviours": store.labels("behaviours")[indices],
            "token_ids": store.labels("token_ids")[indices]}
    region_names = list(store.manifest["regions"])
    special = region_names.index("special") if "special" in region_names else None
    kept = _kept(store, indices, data["regions"], special, sink_rule or SinkRule(), chunk_tokens)
    results = {f: _probe_family(f, store, sae, data, kept, opts, sentence_ends, chunk_tokens)
               for f in families}
    return StoreProbing(results.get("regions"), results.get("behaviours"), len(indices),
                        int((~kept).sum()), len(chosen))
