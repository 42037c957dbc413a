"""Evaluation compares like with like: the mean ablation replaces tokens by the mean of exactly
those tokens, and the headline row is the set of regions the SAE was trained on."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch

from thinksae.cli import main
from thinksae.errors import ThinksaeError
from thinksae.evaluate import EvalConfig, evaluate
from thinksae.sae import Sae, SaeConfig, write_report_card
from thinksae.sae.formats import load_sparsify, save_sparsify
from thinksae.store import ActivationStore, HarvestConfig, harvest

SPLICED = ("prompt", "think", "answer")


@pytest.fixture(scope="module")
def store_dir(tmp_path_factory, corpus_path, tiny_model, tokenizer) -> Path:
    cfg = HarvestConfig(model="tiny", corpus=str(corpus_path), hookpoint="layers.1",
                        out=str(tmp_path_factory.mktemp("trained_store")), device="cpu",
                        dtype="float32", docs_per_shard=3, batch_size=3, progress=False)
    (path,) = harvest(cfg, tiny_model, tokenizer)
    return path


def _sae(path: Path, regions: str | None = None, card: bool = True) -> Path:
    torch.manual_seed(0)
    save_sparsify(Sae(64, SaeConfig(expansion_factor=2, k=4)), path)
    if card:
        write_report_card(path, {"hookpoint": "layers.1", "training": {"regions": regions},
                                 "metrics": {}})
    return path


def test_mean_ablation_uses_the_mean_of_the_replaced_tokens_only(tmp_path, store_dir, tiny_model,
                                                                 tokenizer, monkeypatch):
    """Special tokens' hookpoint outputs made huge (their embeddings x1000, carried by the
    residual stream): the mean that replaces the prompt/think/answer tokens is their own mean,
    computed here by hand from the model's hidden states, untouched by the special tokens."""
    import thinksae.evaluate.passes as run_module

    store = ActivationStore(store_dir)
    special_code = store.manifest["regions"].index("special")
    ids, regions = store.labels("token_ids"), store.labels("regions")
    special_ids = torch.unique(torch.as_tensor(ids[regions == special_code]).long())
    model = copy.deepcopy(tiny_model)
    with torch.no_grad():
        model.model.embed_tokens.weight[special_ids] *= 1000.0

    outputs, kept = [], []
    doc_index = torch.as_tensor(store.labels("doc_index"))
    for d in torch.unique(doc_index):
        at = doc_index == d
        with torch.no_grad():
            hidden = model(torch.as_tensor(ids[at.numpy()]).long()[None],
                           output_hidden_states=True).hidden_states[2][0]  # layers.1 output
        outputs.append(hidden.double())
        kept.append(torch.as_tensor(regions[at.numpy()]) != special_code)
    outputs, kept = torch.cat(outputs), torch.cat(kept)
    by_hand = outputs[kept].mean(0)
    assert outputs[~kept].norm(dim=-1).min() > 100 * outputs[kept].norm(dim=-1).max()
    assert (outputs.mean(0) - by_hand).norm() > 10 * by_hand.norm()  # the case tells them apart

    used = []
    original = run_module.spliced_batch

    def spy(*args, **kwargs):
        used.append(args[5])
        return original(*args, **kwargs)

    monkeypatch.setattr(run_module, "spliced_batch", spy)
    result = evaluate(EvalConfig(sae=str(_sae(tmp_path / "layers.1", ",".join(SPLICED))),
                                 store=str(store_dir), splice_regions=",".join(SPLICED),
                                 batch_size=4, update_card=False, progress=False), model, tokenizer)
    assert len(used) == 2 and all(m is used[0] for m in used)
    torch.testing.assert_close(used[0].double(), by_hand, rtol=1e-5, atol=1e-5)
    assert result.metrics["trained"]["ce_mean_ablated"] is not None


def test_headline_is_the_trained_regions_one_ratio_over_their_tokens(tmp_path, store_dir, capsys):
    sae_dir = _sae(tmp_path / "run" / "layers.1", "think,answer")
    assert main(["eval", "--sae", str(sae_dir), "--store", str(store_dir), "--progress", "false"]) == 0
    table = capsys.readouterr().out
    result = json.loads((sae_dir / "eval.json").read_text())
    assert result["headline"] == {"group": "trained", "label": "trained regions (think, answer)",
                                  "regions": ["think", "answer"], "known": True}
    lines = [line for line in table.splitlines() if "trained regions" in line or "all tokens" in line]
    assert "trained regions (think, answer)" in lines[0] and "all tokens" in lines[1]

    # by hand: FVU over the think and answer tokens together, about their joint mean
    store = ActivationStore(store_dir)
    sae = load_sparsify(sae_dir)
    chunks = list(store.iter_chunks())
    names = store.manifest["regions"]
    on = torch.isin(torch.cat([c["regions"] for c in chunks]),
                    torch.tensor([names.index("think"), names.index("answer")], dtype=torch.uint8))
    on &= torch.from_numpy(~store.sinks)  # the sinks are left out of every group
    x = torch.cat([c["activations"] for c in chunks])[on].double()
    with torch.no_grad():
        x_hat = sae.decode(*sae.encode(x.float())).double()
    fvu = float(((x - x_hat) ** 2).sum() / ((x - x.mean(0)) ** 2).sum())
    m = result["metrics"]
    assert m["trained"]["tokens"] == int(on.sum()) == (m["regions"]["think"]["tokens"]
                                                        + m["regions"]["answer"]["tokens"])
    assert m["trained"]["fvu"] == pytest.approx(fvu, rel=1e-5)
    per_region = [m["regions"][r]["fvu"] for r in ("think", "answer")]
    assert abs(sum(per_region) / 2 - fvu) > 0.01  # not the mean of the per-region numbers
    assert m["all"]["tokens"] + m["all"]["sinks"] == store.num_tokens  # all tokens: its own row


@pytest.mark.parametrize("regions,card,label", [
    (None, True, "all tokens (trained on all)"),
    (None, False, "all tokens (no report card: trained regions unknown)"),
])
def test_headline_is_all_tokens_when_trained_on_all_or_unknown(tmp_path, store_dir, regions, card,
                                                               label):
    sae_dir = _sae(tmp_path / "layers.1", regions, card)
    result = evaluate(EvalConfig(sae=str(sae_dir), store=str(store_dir), progress=False))
    assert result.headline["group"] == "all" and result.headline["label"] == label
    assert result.headline["known"] is card and "trained" not in result.metrics
    # the card written by this eval (an `eval` section only) still says nothing about training
    again = evaluate(EvalConfig(sae=str(sae_dir), store=str(store_dir), progress=False))
    assert again.headline == result.headline


def test_unknown_trained_region_is_one_clear_error(tmp_path, store_dir):
    sae_dir = _sae(tmp_path / "layers.1", "think,thoughts")
    with pytest.raises(ThinksaeError, match="trained on regions 'think,thoughts', unknown"):
        evaluate(EvalConfig(sae=str(sae_dir), store=str(store_dir), progress=False))
    assert not (sae_dir / "eval.json").exists()


def test_run_report_heads_with_the_trained_regions(tmp_path, store_dir):
    from thinksae.pipeline.report import write_report

    root = tmp_path / "run"
    sae_dir = _sae(root / "sae" / "layers.1", "think,answer")
    evaluate(EvalConfig(sae=str(sae_dir), store=str(store_dir), out=str(root / "eval" / "eval.json"),
                        progress=False))
    write_report(root, sae_dir)
    section = json.loads((root / "report.json").read_text())["eval"]
    first, second = section["groups"][:2]
    assert (first["group"], first["label"], first["headline"]) == (
        "trained", "trained regions (think, answer)", True)
    assert (second["group"], second["label"], second["headline"]) == ("all", "all tokens", False)
    assert section["headline"] == "trained regions (think, answer)"
    summary = (root / "summary.md").read_text()
    table = [line for line in summary.splitlines() if line.startswith("| ")]
    assert table[1].startswith("| **trained regions (think, answer)** |")
    assert table[2].startswith("| all tokens |")
    html = (root / "index.html").read_text()
    assert '<tr class="headline"><td>trained regions (think, answer)</td>' in html

    # an eval.json written before the headline existed: all tokens head the table
    result = json.loads((root / "eval" / "eval.json").read_text())
    del result["headline"], result["metrics"]["trained"]
    (root / "eval" / "eval.json").write_text(json.dumps(result))
    write_report(root, sae_dir)
    first = json.loads((root / "report.json").read_text())["eval"]["groups"][0]
    assert (first["group"], first["label"], first["headline"]) == ("all", "all tokens", True)
