"""`thinksae eval` and the sink rule, with a planted norm sink: the tiny model's embedding of
"Okay" (the first think token of every trace) scaled 1000x, so that token's hookpoint output is
far above 10x the median norm. Sinks are left out of every group and counted, kept clean when
splicing, left out of the mean ablation's mean; the rule's median is the store's, or the batch's
without a store."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch

from thinksae.config import nest
from thinksae.corpus.segment import control_token_ids
from thinksae.evaluate import EvalConfig, evaluate, spliced_batch
from thinksae.evaluate.passes import ablation_mean
from thinksae.evaluate.saebench import core_eval
from thinksae.evaluate.sources import pad_right, store_docs, take_tokens
from thinksae.models.hookpoints import capture
from thinksae.sae import Sae, SaeConfig
from thinksae.sae.formats import load_sparsify, save_sparsify
from thinksae.sinks import SinkRule
from thinksae.store import ActivationStore, HarvestConfig, harvest

PLANTED = "Okay"


@pytest.fixture(scope="module")
def planted(tiny_model, tokenizer):
    """The tiny model with a norm sink planted at every "Okay", and that token's id."""
    (token_id,) = tokenizer.encode(PLANTED, add_special_tokens=False)
    model = copy.deepcopy(tiny_model)
    with torch.no_grad():
        model.model.embed_tokens.weight[token_id] *= 1000.0
    return model, token_id


@pytest.fixture(scope="module")
def sink_store(tmp_path_factory, corpus_path, planted, tokenizer) -> Path:
    cfg = HarvestConfig(model="tiny", corpus=str(corpus_path), hookpoint="layers.1",
                        out=str(tmp_path_factory.mktemp("sink_store")), device="cpu",
                        dtype="float32", docs_per_shard=3, batch_size=3, progress=False)
    (path,) = harvest(cfg, planted[0], tokenizer)
    return path


def _sae(path: Path, card_regions: str | None = None) -> Path:
    torch.manual_seed(0)
    save_sparsify(Sae(64, SaeConfig(expansion_factor=2, k=4)), path)
    if card_regions is not None:
        from thinksae.sae import write_report_card
        write_report_card(path, {"hookpoint": "layers.1", "training": {"regions": card_regions}})
    return path


def _cfg(**kw) -> EvalConfig:
    return EvalConfig(**nest(EvalConfig, {"progress": False, "update_card": False, **kw}))


def _fvu(x: torch.Tensor, x_hat: torch.Tensor) -> float:
    x, x_hat = x.double(), x_hat.double()
    return float(((x - x_hat) ** 2).sum() / ((x - x.mean(0)) ** 2).sum())


def test_store_mode_leaves_the_planted_sinks_out_and_counts_them(tmp_path, sink_store, planted):
    _, token_id = planted
    store = ActivationStore(sink_store)
    chunks = list(store.iter_chunks())
    x = torch.cat([c["activations"] for c in chunks])
    ids = torch.cat([c["token_ids"] for c in chunks])
    regions = torch.cat([c["regions"] for c in chunks])
    names = store.manifest["regions"]
    special = regions == names.index("special")
    norms = x.norm(dim=-1)
    median = float(norms[~special].median())  # the rule's median: the store's non-special tokens
    by_norm = norms > 10 * median
    assert torch.equal(by_norm & ~special, ids == token_id) and int((ids == token_id).sum()) == 6
    sinks = special | by_norm

    sae_dir = _sae(tmp_path / "layers.1")
    result = evaluate(_cfg(sae=str(sae_dir), store=str(sink_store), probing=False,
                           out=str(tmp_path / "e.json")))
    assert result.sinks == {
        "excluded": True, "rule": {"norm_multiple": 10.0, "median_norm": pytest.approx(median),
                                   "median_from": "store"},
        "tokens": len(x), "sinks": int(sinks.sum()), "special": int(special.sum()), "by_norm": 6,
        "by_norm_tokens": [{"id": token_id, "count": 6}]}
    sae = load_sparsify(sae_dir)
    with torch.no_grad():
        x_hat = sae.decode(*sae.encode(x))
    think = regions == names.index("think")
    m = result.metrics
    assert (m["all"]["tokens"], m["all"]["sinks"]) == (int((~sinks).sum()), int(sinks.sum()))
    assert (m["regions"]["think"]["tokens"], m["regions"]["think"]["sinks"]) == (
        int((think & ~sinks).sum()), 6)
    assert (m["regions"]["special"]["tokens"], m["regions"]["special"]["fvu"]) == (0, None)
    assert m["regions"]["special"]["sinks"] == int(special.sum())
    keep = think & ~sinks
    assert m["regions"]["think"]["fvu"] == pytest.approx(_fvu(x[keep], x_hat[keep]), rel=1e-5)
    assert m["all"]["fvu"] == pytest.approx(_fvu(x[~sinks], x_hat[~sinks]), rel=1e-5)
    assert result.data.tokens == len(x)

    kept_in = evaluate(_cfg(sae=str(sae_dir), store=str(sink_store), probing=False,
                            exclude_sinks=False, out=str(tmp_path / "in.json")))
    assert kept_in.sinks["excluded"] is False and kept_in.sinks["by_norm"] == 6
    think_in = kept_in.metrics["regions"]["think"]
    assert "sinks" not in think_in and think_in["tokens"] == int(think.sum())
    assert think_in["fvu"] == pytest.approx(_fvu(x[think], x_hat[think]), rel=1e-5)
    assert abs(think_in["fvu"] - m["regions"]["think"]["fvu"]) > 0.05  # the planted rows matter


def test_spliced_batch_keeps_the_sinks_clean_with_the_batch_median(sink_store, planted):
    """With a rule and no reference median, the sinks are those of the batch's own median, and
    splicing with them kept clean is bit for bit splicing with that mask given by hand; the
    mean ablation's mean leaves them out."""
    model, token_id = planted
    store = ActivationStore(sink_store)
    docs = list(store_docs(store))[:2]
    ids, mask, regions, _ = pad_right(docs, 0)
    special = regions == store.manifest["regions"].index("special")
    out = capture(model, "layers.1", ids, mask)["layers.1"].float()
    real = mask.bool()
    norms = out.norm(dim=-1)
    median = float(norms[real & ~special].median())
    by_hand = real & (special | (norms > 10 * median))
    assert torch.equal(by_hand & ~special, ids == token_id)
    torch.manual_seed(1)
    sae = Sae(64, SaeConfig(expansion_factor=2, k=4))
    with_rule = spliced_batch(model, "layers.1", sae, ids, mask, sink_rule=SinkRule(),
                              special=special)
    given = spliced_batch(model, "layers.1", sae, ids, mask, keep_clean=by_hand)
    assert torch.equal(with_rule.sinks, by_hand)
    assert torch.equal(with_rule.replaced, real & ~by_hand)
    assert with_rule.losses.keys() == given.losses.keys()
    for name, values in given.losses.items():
        assert torch.equal(with_rule.losses[name], values), name

    code = store.manifest["regions"].index("special")
    mean = ablation_mean(model, "layers.1", docs, 2, 0, None, 64, SinkRule(), code)
    torch.testing.assert_close(mean.double(), out[real & ~by_hand].double().mean(0),
                               rtol=1e-5, atol=1e-6)


def test_model_mode_core_is_core_eval_and_the_trained_row(tmp_path, sink_store, planted,
                                                          tokenizer):
    """Over the store, the SAE spliced in at the trained regions (special tokens and the planted
    sinks kept clean): SAEBench's core metrics from the spliced passes equal `core_eval`'s own
    passes (same rule, same tokens) and the trained row's loss recovered and FVU."""
    model, token_id = planted
    trained = "prompt,think,answer"
    sae_dir = _sae(tmp_path / "layers.1", trained)
    result = evaluate(_cfg(sae=str(sae_dir), store=str(sink_store), splice_regions=trained,
                           mean_ablation=False, probing=False, batch_size=6, max_tokens=220,
                           out=str(tmp_path / "m.json")), model, tokenizer)
    core = result.saebench["core"]
    row = result.metrics["trained"]
    assert result.sinks["by_norm_tokens"] == [{"id": token_id, "count": 3, "text": PLANTED}]
    assert row["sinks"] == 3 and core["tokens"] == row["tokens"]
    assert core["ce_positions"] == row["ce_positions"]
    assert core["ce_loss_score"] == pytest.approx(row["loss_recovered"], rel=1e-9)
    assert core["explained_variance"] == pytest.approx(1 - row["fvu"], rel=1e-9)
    assert core["kl_sae"] == pytest.approx(row["kl_spliced"], rel=1e-9)
    assert core["kl_zero"] == pytest.approx(row["kl_zero_ablated"], rel=1e-9)
    assert core["sinks"] == {k: result.sinks[k] for k in ("tokens", "sinks", "special", "by_norm")}

    store = ActivationStore(sink_store)
    padded = pad_right(list(take_tokens(store_docs(store), 220)), 0)  # the same 220 tokens
    direct = core_eval(model, load_sparsify(sae_dir), "layers.1", [padded[:2]],
                       control_token_ids(tokenizer), store.sink_rule).to_dict()
    for key in ("tokens", "ce_positions", "sinks"):
        assert core[key] == direct[key], key
    for key in ("ce_clean", "ce_sae", "ce_zero", "ce_loss_score", "explained_variance", "mse",
                "cosine_similarity", "l2_ratio", "relative_reconstruction_bias", "l0", "l1",
                "alive_fraction"):
        assert core[key] == pytest.approx(direct[key], rel=1e-4, abs=1e-7), key


def test_corpus_mode_uses_each_batch_median(tmp_path, corpus_path, planted, tokenizer):
    model, token_id = planted
    sae_dir = _sae(tmp_path / "layers.1")
    result = evaluate(_cfg(sae=str(sae_dir), corpus=str(corpus_path), max_length=40,
                           mean_ablation=False, batch_size=6, out=str(tmp_path / "c.json")),
                      model, tokenizer)
    assert result.sinks["rule"] == {"norm_multiple": 10.0, "median_norm": None,
                                    "median_from": "batch"}
    assert result.sinks["by_norm_tokens"] == [{"id": token_id, "count": 6, "text": PLANTED}]
    think = result.metrics["regions"]["think"]
    assert think["sinks"] == 6 and think["tokens"] > 0
    assert result.saebench["probing"] is None  # no store: nothing to probe

    kept_in = evaluate(_cfg(sae=str(sae_dir), corpus=str(corpus_path), max_length=40,
                            mean_ablation=False, batch_size=6, exclude_sinks=False, core=False,
                            out=str(tmp_path / "k.json")), model, tokenizer)
    assert kept_in.sinks["excluded"] is False and kept_in.sinks["by_norm"] == 6
    assert kept_in.metrics["regions"]["think"]["tokens"] == think["tokens"] + 6
    assert "sinks" not in kept_in.metrics["all"] and kept_in.saebench["core"] is None
    assert kept_in.metrics["regions"]["think"]["ce_positions"] > think["ce_positions"]
