"""k-sparse probing: mean-difference selection, balanced negatives and the trace split by hand, a
planted latent found, a one-class label refused, units from store labels by hand, and the store
application end to end on a harvested tiny-model store."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from thinksae import ThinksaeError
from thinksae.evaluate.saebench.probes import mean_difference_top_k, sparse_latents
from thinksae.evaluate.saebench.sparse_probing import (
    ProbingOptions,
    balanced_rows,
    probe_classes,
    split_groups,
)
from thinksae.evaluate.saebench.store_labels import (
    _pool,
    region_units,
    sentence_end_ids,
    sentence_units,
    store_probing,
)
from thinksae.sae import Sae, SaeConfig


def test_mean_difference_selection_by_hand():
    x = torch.tensor([[1.0, 0, 5], [3, 0, 5], [0, 2, 5], [0, 4, 1]])
    y = torch.tensor([1, 1, 0, 0])
    # mean pos (2, 0, 5), mean neg (0, 3, 3): |diff| = (2, 3, 2); the tie goes to index 0
    assert mean_difference_top_k(x, y, 2).tolist() == [1, 0]
    assert mean_difference_top_k(x, y, 3).tolist() == [1, 0, 2]
    sparse = x.to_sparse()
    assert mean_difference_top_k(sparse, y, 2).tolist() == [1, 0]
    codes = sparse_latents(torch.tensor([[2.0, 0.0], [1.0, 3.0]]), torch.tensor([[1, 0], [0, 2]]), 3)
    assert codes.to_dense().tolist() == [[0, 2, 0], [1, 0, 3]]


def test_balanced_negatives_by_hand():
    # rows 0-3 have the class; strata of the others: 1 1 1 1 1 1 (six), 2 (one)
    has = torch.tensor([True] * 4 + [False] * 7)
    strata = torch.tensor([0] * 4 + [1] * 6 + [2])
    gen = torch.Generator().manual_seed(0)
    rows, y = balanced_rows(has, strata, torch.arange(11), gen)
    # ceil(4 / 2) = 2 per stratum: two of stratum 1, the one of stratum 2 → 3 negatives, so
    # the positives are cut to 3 as well
    assert len(rows) == 6 and int(y.sum()) == 3
    negatives = rows[~y]
    assert int((strata[negatives] == 1).sum()) == 2 and 10 in negatives.tolist()
    assert bool(has[rows[y]].all()) and not bool(has[negatives].any())
    # restricted rows: only rows 0, 1, 4, 5, 6 are allowed
    rows, y = balanced_rows(has, strata, torch.tensor([0, 1, 4, 5, 6]), gen)
    assert sorted(rows.tolist())[:2] == [0, 1] and int(y.sum()) == 2 and len(rows) == 4


def test_trace_split_keeps_traces_whole():
    groups = torch.tensor([0, 0, 1, 1, 1, 2, 3, 3, 4, 4])
    train, test = split_groups(groups, 0.4, seed=3)  # round(5 · 0.4) = 2 traces held out
    assert len(groups[test].unique()) == 2 and len(groups[train].unique()) == 3
    assert set(groups[train].tolist()).isdisjoint(groups[test].tolist())
    assert (train ^ test).all()
    with pytest.raises(ThinksaeError, match="at least 2 traces"):
        split_groups(torch.zeros(4, dtype=torch.long), 0.2, 0)


def _planted(n_traces=20, per=10, seed=0):
    """Units of 20 traces; class 'a' on half of them. SAE latent 7 = 2·label + noise; the
    residual is noise."""
    g = torch.Generator().manual_seed(seed)
    n = n_traces * per
    label = torch.rand(n, generator=g) < 0.5
    latents = torch.rand(n, 50, generator=g)
    latents[:, 7] += 2.0 * label
    residual = torch.randn(n, 16, generator=g)
    groups = torch.arange(n_traces).repeat_interleave(per)
    return latents, residual, torch.stack([label, ~label], 1), groups


def test_planted_latent_is_found_and_beats_a_noise_residual():
    latents, residual, labels, groups = _planted()
    result = probe_classes("planted", latents, residual, labels, ["a", "not_a"], groups,
                           options=ProbingOptions(ks=(1, 2)))
    a = result.classes[0]
    assert a.sae_latents["1"] == [7] and a.sae_latents["2"][0] == 7
    assert a.sae["1"] >= 0.95 and a.sae["2"] >= 0.95
    assert a.residual["1"] < 0.75 and a.residual_all < 0.75
    assert set(result.groups["train"]).isdisjoint(result.groups["test"])
    assert result.mean["sae"]["1"] == pytest.approx((a.sae["1"] + result.classes[1].sae["1"]) / 2)
    # the same with sparse SAE features
    sparse = probe_classes("planted", latents.to_sparse(), residual, labels, ["a", "not_a"], groups,
                           options=ProbingOptions(ks=(1, 2)))
    assert sparse.classes[0].sae == a.sae and sparse.classes[0].sae_latents == a.sae_latents


def test_a_label_with_one_class_is_refused():
    latents, residual, _, groups = _planted()
    everything = torch.ones(len(groups), 1, dtype=torch.bool)
    with pytest.raises(ThinksaeError, match=r"probe label 'all' \(training units\) has only one class"):
        probe_classes("x", latents, residual, everything, ["all"], groups)
    with pytest.raises(ThinksaeError, match="ks must be numbers >= 1"):
        probe_classes("x", latents, residual, everything, ["all"], groups, options=ProbingOptions(ks=(0,)))


def test_units_by_hand():
    doc = np.array([0, 0, 0, 0, 0, 0, 1, 1, 1])
    reg = np.array([3, 0, 0, 1, 1, 1, 1, 1, 2])  # special, prompt×2, think×3 | think×2, answer
    assert region_units(doc, reg, [0, 1, 2], None).tolist() == [-1, 0, 0, 1, 1, 1, 2, 2, 3]
    assert region_units(doc, reg, [0, 1, 2], 2).tolist() == [-1, 0, 0, 1, 1, 2, 3, 3, 4]
    ids = np.array([9, 5, 5, 5, 7, 5, 5, 7, 5])  # 7 ends a sentence
    assert sentence_units(doc, reg, 1, ids, {7}, None).tolist() == [-1, -1, -1, 0, 0, 1, 2, 2, -1]
    assert sentence_units(doc, reg, 1, ids, None, 2).tolist() == [-1, -1, -1, 0, 0, 1, 2, 2, -1]


def test_sentence_ends_of_the_r1_tokenizer(tokenizer):
    ends = sentence_end_ids(tokenizer)
    vocab = tokenizer.get_vocab()
    assert vocab["."] in ends and vocab["?"] in ends and vocab["Ċ"] in ends
    assert vocab["Ġthe"] not in ends and vocab[","] not in ends


@pytest.fixture(scope="module")
def store(tmp_path_factory, corpus_path, tiny_model, tokenizer):
    from thinksae.store import ActivationStore, HarvestConfig, harvest

    cfg = HarvestConfig(model="tiny", corpus=str(corpus_path), hookpoint="layers.1",
                        out=str(tmp_path_factory.mktemp("store")), device="cpu", dtype="float32",
                        docs_per_shard=2, batch_size=2, progress=False)
    (path,) = harvest(cfg, tiny_model, tokenizer)
    return ActivationStore(path)


def _sae() -> Sae:
    torch.manual_seed(0)
    return Sae(64, SaeConfig(expansion_factor=4, k=8))


def test_pooling_is_the_mean_over_kept_tokens(store):
    sae = _sae()
    indices = np.arange(12)
    unit = np.array([0, 0, 0, 1, 1, -1, 2, 2, 2, 2, 1, 1])
    kept = np.ones(12, bool)
    kept[1] = False  # a sink inside unit 0
    latents, residual = _pool(store, sae, indices, unit, kept, chunk=5)
    x = store.gather(indices)
    dense = sae.dense_acts(x).detach()
    for u, members in ((0, [0, 2]), (1, [3, 4, 10, 11]), (2, [6, 7, 8, 9])):
        torch.testing.assert_close(residual[u], x[members].mean(0))
        torch.testing.assert_close(latents.to_dense()[u], dense[members].mean(0))


def test_store_probing_end_to_end(store, tokenizer, one_thread):
    opts = ProbingOptions(ks=(1, 2), window_tokens=8, test_fraction=0.34, min_units=1, max_traces=None)
    result = store_probing(store, _sae(), opts, sentence_ends=sentence_end_ids(tokenizer))
    assert result.traces == 6 and result.tokens == store.num_tokens
    assert result.sink_tokens >= int((store.labels("regions") == 3).sum())  # specials at least
    regions = result.regions
    assert [c.name for c in regions.classes] == ["prompt", "think", "answer"]
    assert len(regions.groups["test"]) == 2
    assert set(regions.groups["train"]).isdisjoint(regions.groups["test"])
    behaviours = result.behaviours
    probed = {c.name for c in behaviours.classes}
    assert probed | set(behaviours.skipped) == set(store.manifest["behaviours"][1:])
    for family in (regions, behaviours):
        for c in family.classes:
            assert c.train_units % 2 == 0 and c.test_units % 2 == 0  # balanced
            assert all(0 <= v <= 1 for v in (*c.sae.values(), *c.residual.values(), c.residual_all))
            assert [len(v) for v in c.sae_latents.values()] == [1, 2]
    d = result.to_dict()
    assert set(d) == {"regions", "behaviours", "tokens", "sink_tokens", "traces"}
    with pytest.raises(ThinksaeError, match="no class has 50 units"):
        store_probing(store, _sae(), ProbingOptions(min_units=50, max_traces=None), families=("regions",))
