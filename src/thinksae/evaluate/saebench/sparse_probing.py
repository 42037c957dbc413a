"""k-sparse probing (SAEBench's ``sparse_probing``) on any labelled set of pooled units.

Per class c, one-vs-rest with balanced classes: the positives are the units labelled c, the
negatives an equal number of units without c drawn evenly from the other strata (SAEBench draws
them evenly from the other classes). On the training units the k features with the largest
|mean over positives − mean over negatives| are kept, an L2 logistic regression (C = 1) is fitted
on them, and its accuracy on the balanced test units is reported, for k ∈ ``ks``; the same on the
residual (the hookpoint's activations) is the baseline, with a probe on every residual dimension
(SAEBench's ``llm_test_accuracy``). Train and test units come from disjoint groups (traces).
"""

from __future__ import annotations

import dataclasses
import math
import statistics
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from ...errors import ThinksaeError
from .probes import accuracy, check_two_classes, logistic_regression, mean_difference_top_k, take_columns


@dataclass
class ProbingOptions:
    """Options of k-sparse probing. Defaults are small CPU settings; SAEBench's own values are
    given where they differ."""

    ks: tuple[int, ...] = (1, 2, 5)
    """Numbers of SAE latents (and of residual dimensions) each probe may use (SAEBench)."""
    test_fraction: float = 0.2
    """Share of the traces whose units are held out for testing (SAEBench: 1000 test vs 4000
    training texts)."""
    c: float = 1.0
    """Inverse L2 regularisation of the logistic regression (SAEBench: 1, sklearn's default)."""
    max_iter: int = 1000
    """Iterations of the logistic regression's solver (SAEBench: 1000)."""
    residual_all: bool = True
    """Also fit the baseline probe on every residual dimension."""
    window_tokens: int | None = 32
    """Store probing: region units are windows of at most this many tokens of one contiguous
    region of one trace (None: the whole run); also the behaviour units without sentence ends."""
    max_traces: int | None = 100
    """Store probing: use at most this many traces (a seeded sample; None: all)."""
    min_units: int = 2
    """Store probing: probe a class only if it has this many positive units in both splits."""
    seed: int = 42
    """Seed of the trace split and the negative sampling (SAEBench: 42)."""

    def check(self) -> None:
        if not self.ks or min(self.ks) < 1:
            raise ThinksaeError(f"probing: ks must be numbers >= 1 (got {self.ks})")
        if not 0 < self.test_fraction < 1:
            raise ThinksaeError(f"probing: test_fraction must be in (0, 1) (got {self.test_fraction})")
        if self.window_tokens is not None and self.window_tokens < 1:
            raise ThinksaeError("probing: window_tokens must be >= 1 or none")
        if self.min_units < 1:
            raise ThinksaeError("probing: min_units must be >= 1")


@dataclass
class ClassProbe:
    """One class's one-vs-rest probes."""

    name: str
    train_units: int
    """Balanced training units (half positive)."""
    test_units: int
    sae: dict[str, float]
    """Test accuracy of the probe on the top-k SAE latents, by k."""
    sae_latents: dict[str, list[int]]
    """The latents chosen for each k (largest mean difference first)."""
    residual: dict[str, float]
    """Test accuracy of the probe on the top-k residual dimensions, by k."""
    residual_all: float | None
    """Test accuracy of the probe on every residual dimension."""


@dataclass
class ProbingResult:
    """k-sparse probing of one label family; ``to_dict`` is JSON."""

    family: str
    classes: list[ClassProbe]
    mean: dict[str, Any]
    """Over the probed classes: mean test accuracy of the SAE and residual probes by k, and of
    the all-dimensions residual probe."""
    units: int
    groups: dict[str, list[int]]
    """The trace (group) ids on each side of the split."""
    skipped: dict[str, str] = dataclasses.field(default_factory=dict)
    """Classes not probed, with why."""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def split_groups(groups: Tensor, test_fraction: float, seed: int) -> tuple[Tensor, Tensor]:
    """Boolean train and test masks over units such that no group (trace) is on both sides:
    the distinct groups are shuffled (seeded) and round(G · test_fraction) of them, at least 1
    and at most G − 1, are held out."""
    distinct = groups.unique()
    if len(distinct) < 2:
        raise ThinksaeError(f"probing needs units from at least 2 traces to split train/test by "
                            f"trace (got {len(distinct)})")
    order = distinct[torch.randperm(len(distinct), generator=torch.Generator().manual_seed(seed))]
    n_test = min(max(1, round(len(distinct) * test_fraction)), len(distinct) - 1)
    test = torch.isin(groups, order[:n_test])
    return ~test, test


def balanced_rows(has_class: Tensor, strata: Tensor, rows: Tensor, gen: torch.Generator
                  ) -> tuple[Tensor, Tensor]:
    """Balanced one-vs-rest units among ``rows``: the P positives (``has_class``) and
    ceil(P / S) random negatives from each of the S strata of the other units, shuffled and cut
    to P (fewer when the strata hold fewer; the positives are then cut to match). Returns the
    chosen rows (shuffled) and their labels."""
    pos = rows[has_class[rows]]
    neg_pool = rows[~has_class[rows]]
    kinds = strata[neg_pool].unique()
    per = math.ceil(len(pos) / max(len(kinds), 1))
    drawn = [pool[torch.randperm(len(pool), generator=gen)[:per]]
             for pool in (neg_pool[strata[neg_pool] == s] for s in kinds)]
    neg = torch.cat(drawn) if drawn else neg_pool[:0]
    neg = neg[torch.randperm(len(neg), generator=gen)][: len(pos)]
    pos = pos[torch.randperm(len(pos), generator=gen)][: len(neg)]
    chosen = torch.cat([pos, neg])
    labels = torch.cat([torch.ones(len(pos), dtype=torch.bool), torch.zeros(len(neg), dtype=torch.bool)])
    order = torch.randperm(len(chosen), generator=gen)
    return chosen[order], labels[order]


def top_k_accuracies(features: Tensor, train: tuple[Tensor, Tensor], test: tuple[Tensor, Tensor],
                     options: ProbingOptions) -> tuple[dict[str, float], dict[str, list[int]]]:
    """Per k: the test accuracy of a probe on the k features chosen by mean difference on the
    training rows, and those features. ``train``/``test``: (rows, labels)."""
    (train_rows, train_y), (test_rows, test_y) = train, test
    ranked = mean_difference_top_k(features.index_select(0, train_rows), train_y,
                                   min(max(options.ks), features.shape[1]))
    accs, chosen = {}, {}
    for k in options.ks:
        cols = ranked[:k]
        fit = logistic_regression(take_columns(features, cols, train_rows), train_y, options.c,
                                  options.max_iter, seed=options.seed)
        predicted = torch.from_numpy(fit.predict(take_columns(features, cols, test_rows).double().numpy()))
        accs[str(k)], chosen[str(k)] = accuracy(predicted, test_y), cols.tolist()
    return accs, chosen


def probe_class(name: str, sae_features: Tensor, residual: Tensor, has_class: Tensor,
                strata: Tensor, split: tuple[Tensor, Tensor], options: ProbingOptions) -> ClassProbe:
    """One class's probes (module docstring); a one-line error when its balanced training or
    test set has only one class."""
    gen = torch.Generator().manual_seed(options.seed)
    rows = torch.arange(len(has_class))
    train = balanced_rows(has_class, strata, rows[split[0]], gen)
    test = balanced_rows(has_class, strata, rows[split[1]], gen)
    check_two_classes(train[1], f"probe label {name!r} (training units)")
    check_two_classes(test[1], f"probe label {name!r} (test units)")
    sae, latents = top_k_accuracies(sae_features, train, test, options)
    res, _ = top_k_accuracies(residual, train, test, options)
    res_all = None
    if options.residual_all:
        fit = logistic_regression(residual[train[0]], train[1], options.c, options.max_iter,
                                  seed=options.seed)
        res_all = accuracy(torch.from_numpy(fit.predict(residual[test[0]].double().numpy())), test[1])
    return ClassProbe(name, len(train[0]), len(test[0]), sae, latents, res, res_all)


def probe_classes(family: str, sae_features: Tensor, residual: Tensor, labels: Tensor,
                  class_names: list[str], groups: Tensor, strata: Tensor | None = None,
                  options: ProbingOptions | None = None) -> ProbingResult:
    """k-sparse probing of every class of one labelled set of units: ``sae_features``
    ``[U, num_latents]`` (dense or sparse) and ``residual`` ``[U, d]`` pooled per unit,
    ``labels`` ``[U, C]`` (bool, multi-hot) naming ``class_names``, ``groups`` ``[U]`` the trace
    of each unit (the split keeps traces whole), ``strata`` ``[U]`` the stratum negatives are
    drawn evenly from (default: each unit's first class, C for none)."""
    opts = options or ProbingOptions()
    opts.check()
    labels = labels.bool()
    if strata is None:
        strata = torch.where(labels.any(1), labels.int().argmax(1), labels.shape[1])
    split = split_groups(groups, opts.test_fraction, opts.seed)
    classes = [probe_class(name, sae_features, residual, labels[:, c], strata, split, opts)
               for c, name in enumerate(class_names)]
    return ProbingResult(family, classes, mean_accuracies(classes), len(labels),
                         {"train": groups[split[0]].unique().tolist(),
                          "test": groups[split[1]].unique().tolist()})


def mean_accuracies(classes: list[ClassProbe]) -> dict[str, Any]:
    """Mean test accuracy over classes: ``sae`` and ``residual`` by k, ``residual_all``."""
    if not classes:
        return {"sae": {}, "residual": {}, "residual_all": None}
    ks = list(classes[0].sae)
    alls = [c.residual_all for c in classes if c.residual_all is not None]
    return {"sae": {k: statistics.fmean(c.sae[k] for c in classes) for k in ks},
            "residual": {k: statistics.fmean(c.residual[k] for c in classes) for k in ks},
            "residual_all": statistics.fmean(alls) if alls else None}
