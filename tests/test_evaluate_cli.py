"""`thinksae eval` end to end on the tiny fixture: outputs, per-group numbers, formats, streaming,
and one clear line (exit 2, nothing written) for each bad input."""

from __future__ import annotations

import json
import shutil
import weakref
from pathlib import Path

import pytest
import torch

from thinksae.cli import main
from thinksae.errors import ThinksaeError
from thinksae.evaluate import EvalConfig, evaluate
from thinksae.sae import Sae, SaeConfig, save_saelens, write_report_card
from thinksae.sae.formats import load_sparsify, save_sparsify
from thinksae.store import ActivationStore, HarvestConfig, harvest, tokenizer_hash

OFF = ["--progress", "false"]


@pytest.fixture(scope="module")
def store_dir(tmp_path_factory, corpus_path, tiny_model, tokenizer) -> Path:
    cfg = HarvestConfig(model="tiny", corpus=str(corpus_path), hookpoint="layers.1",
                        out=str(tmp_path_factory.mktemp("eval_store")), device="cpu",
                        dtype="float32", docs_per_shard=2, batch_size=2, progress=False)
    (path,) = harvest(cfg, tiny_model, tokenizer)
    return path


def _sae(path: Path, d_in: int = 64, seed: int = 0) -> Path:
    torch.manual_seed(seed)
    save_sparsify(Sae(d_in, SaeConfig(expansion_factor=2, k=4)), path)
    return path


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_store_mode_outputs_and_numbers(tmp_path, store_dir, capsys):
    sae_dir = _sae(tmp_path / "run" / "layers.1")
    store = ActivationStore(store_dir)
    card = {"hookpoint": "layers.1", "training": {"steps": 7},
            "data": {"tokenizer_hash": store.manifest["tokenizer_hash"]}}
    write_report_card(sae_dir, card)
    assert main(["eval", "--sae", str(sae_dir), "--store", str(store_dir), *OFF]) == 0
    table = capsys.readouterr().out
    assert "region think" in table and "behaviour backtracking" in table and "FVU" in table

    result = json.loads((sae_dir / "eval.json").read_text())
    png = sae_dir / "eval.latent_frequency.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert result["latent_frequency"]["png"] == str(png)
    merged = json.loads((sae_dir / "thinksae.json").read_text())
    assert merged["eval"] == result and merged["training"] == {"steps": 7}
    assert result["hookpoint"] == "layers.1" and result["data"]["mode"] == "store"

    # the same numbers computed directly over all non-sink store tokens at once
    sae = load_sparsify(sae_dir)
    chunks = list(store.iter_chunks())
    kept = torch.from_numpy(~store.sinks)
    x = torch.cat([c["activations"] for c in chunks])[kept]
    regions = torch.cat([c["regions"] for c in chunks])[kept]
    with torch.no_grad():
        fwd = sae(x)
    metrics = result["metrics"]
    assert result["data"]["tokens"] == store.num_tokens
    assert metrics["all"]["tokens"] == int(kept.sum()) and metrics["all"]["sinks"] == int((~kept).sum())
    assert metrics["all"]["fvu"] == pytest.approx(float(fwd.fvu), rel=1e-5)
    assert metrics["all"]["l0"] == pytest.approx(float((fwd.latent_acts > 0).sum(-1).float().mean()))
    fired = torch.zeros(sae.num_latents, dtype=torch.bool)
    fired[fwd.latent_indices[fwd.latent_acts > 0]] = True
    assert metrics["all"]["dead_fraction"] == pytest.approx(1 - float(fired.float().mean()))
    think = regions == 1
    with torch.no_grad():
        assert metrics["regions"]["think"]["fvu"] == pytest.approx(float(sae(x[think]).fvu), rel=1e-5)
    assert metrics["regions"]["think"]["tokens"] == int(think.sum())
    assert sum(metrics["regions"][r]["tokens"] + metrics["regions"][r]["sinks"]
               for r in metrics["regions"]) == store.num_tokens
    assert "ce_clean" not in metrics["all"]


def test_model_corpus_mode_mlp_hookpoint(tmp_path, tiny_model_dir, corpus_path, capsys):
    sae_dir = _sae(tmp_path / "run" / "layers.2.mlp")
    out = tmp_path / "results" / "res.json"
    argv = ["eval", "--sae", str(tmp_path / "run"), "--hookpoint", "layers.2.mlp", "--model",
            str(tiny_model_dir), "--corpus", str(corpus_path), "--device", "cpu", "--dtype",
            "float32", "--max_tokens", "300", "--out", str(out), *OFF]
    assert main(argv) == 0
    assert "CE spliced" in capsys.readouterr().out
    result = json.loads(out.read_text())
    assert (out.parent / "res.latent_frequency.png").exists()
    assert json.loads((sae_dir / "thinksae.json").read_text())["eval"] == result
    m = result["metrics"]
    assert result["hookpoint"] == "layers.2.mlp" and result["data"]["tokens"] == 300
    assert m["all"]["tokens"] + m["all"]["sinks"] == 300 and m["all"]["sinks"] > 0
    for key in ("ce_clean", "ce_spliced", "ce_zero_ablated", "ce_mean_ablated", "loss_recovered",
                "loss_recovered_mean", "kl_spliced", "fvu", "cosine"):
        assert isinstance(m["all"][key], float), key
    assert m["all"]["kl_spliced"] > 0
    # regions partition the scored positions: their weighted CE is the overall CE
    regions = [v for v in m["regions"].values() if v["ce_positions"]]
    positions = sum(v["ce_positions"] for v in regions)
    assert positions == m["all"]["ce_positions"]
    for key in ("ce_clean", "ce_spliced", "kl_spliced"):
        weighted = sum(v[key] * v["ce_positions"] for v in regions) / positions
        assert weighted == pytest.approx(m["all"][key], rel=1e-9)
    assert m["behaviours"]["verification"]["ce_positions"] > 0


def test_model_rerun_on_store_matches_store_mode(tmp_path, store_dir, tiny_model, tokenizer):
    sae_dir = _sae(tmp_path / "layers.1")
    base = dict(sae=str(sae_dir), store=str(store_dir), progress=False, update_card=False)
    on_store = evaluate(EvalConfig(**base, out=str(tmp_path / "a.json")))
    rerun = evaluate(EvalConfig(**base, out=str(tmp_path / "b.json"), batch_size=3),
                     tiny_model, tokenizer)
    assert not (sae_dir / "thinksae.json").exists()
    a, b = on_store.metrics, rerun.metrics
    assert b["all"]["ce_clean"] is not None and "ce_clean" not in a["all"]
    for group in ("all", "regions", "behaviours"):
        pairs = [(a[group], b[group])] if group == "all" else [
            (a[group][n], b[group][n]) for n in a[group]]
        for x, y in pairs:
            assert x["tokens"] == y["tokens"]
            for key in ("fvu", "cosine", "relative_norm", "l0"):
                if x[key] is not None:
                    assert y[key] == pytest.approx(x[key], rel=1e-4, abs=1e-6), key


def test_saelens_format_gives_the_same_numbers(tmp_path, store_dir):
    torch.manual_seed(3)
    sae = Sae(64, SaeConfig(expansion_factor=2, k=4))
    save_sparsify(sae, tmp_path / "sparsify" / "layers.1")
    save_saelens(sae, tmp_path / "saelens" / "layers.1", hook_name="layers.1")
    results = [evaluate(EvalConfig(sae=str(tmp_path / kind / "layers.1"), store=str(store_dir),
                                   progress=False)).metrics for kind in ("sparsify", "saelens")]
    assert results[1]["all"]["fvu"] == pytest.approx(results[0]["all"]["fvu"], rel=1e-5)
    assert results[1]["regions"]["think"] == pytest.approx(results[0]["regions"]["think"], rel=1e-5)


def _watched(chunks, key, alive_at_most: int, seen: list):
    """Yield from ``chunks``, checking that only the last few yielded items are still alive."""
    for item in chunks:
        refs = [r for r in seen if r() is not None]
        assert len(refs) <= alive_at_most, f"{len(refs)} earlier items still referenced"
        seen.append(weakref.ref(item[key] if isinstance(item, dict) else item.input_ids))
        yield item


def test_streaming_holds_no_earlier_chunks_or_documents(tmp_path, store_dir, tiny_model,
                                                        tokenizer, corpus_path, monkeypatch):
    import thinksae.evaluate.passes as passes_module

    sae_dir = _sae(tmp_path / "layers.1")
    seen: list = []
    original = ActivationStore.iter_chunks
    monkeypatch.setattr(ActivationStore, "iter_chunks", lambda self, *a: _watched(
        original(self, *a), "activations", 2, seen))
    evaluate(EvalConfig(sae=str(sae_dir), store=str(store_dir), chunk_tokens=40, progress=False))
    assert len(seen) > 10

    docs: list = []
    original_docs = passes_module.corpus_docs
    monkeypatch.setattr(passes_module, "corpus_docs",
                        lambda *a: _watched(original_docs(*a), None, 4, docs))
    evaluate(EvalConfig(sae=str(sae_dir), corpus=str(corpus_path), batch_size=2, progress=False,
                        mean_ablation=False, max_length=60), tiny_model, tokenizer)
    assert len(docs) == 6


def _bad_cases(tmp_path: Path, store_dir: Path, model_dir: Path, corpus: Path) -> dict:
    good = _sae(tmp_path / "run" / "layers.1")
    narrow = _sae(tmp_path / "narrow" / "layers.1", d_in=32)
    other_hp = _sae(tmp_path / "other" / "layers.2")
    nameless = _sae(tmp_path / "mysae")
    foreign = _sae(tmp_path / "foreign" / "layers.1")
    write_report_card(foreign, {"hookpoint": "layers.1", "data": {"tokenizer_hash": "0" * 16}})
    retok = tmp_path / "retok_store"
    shutil.copytree(store_dir, retok)
    manifest = json.loads((retok / "manifest.json").read_text())
    (retok / "manifest.json").write_text(json.dumps({**manifest, "tokenizer_hash": "f" * 16}))
    empty_store = tmp_path / "empty_store"
    empty_store.mkdir()
    (empty_store / "manifest.json").write_text(json.dumps(
        {**manifest, "shards": [], "num_tokens": 0}))
    empty_corpus = tmp_path / "empty.jsonl"
    empty_corpus.write_text("")
    model = ["--model", str(model_dir), "--device", "cpu", "--dtype", "float32"]
    return {
        "hookpoint asked": ([str(good), "--hookpoint", "layers.2", "--store", str(store_dir)],
                            "reads hookpoint layers.1, not layers.2"),
        "store hookpoint": ([str(other_hp), "--store", str(store_dir)],
                            "holds hookpoint layers.1, but the SAE"),
        "d_in vs store": ([str(narrow), "--store", str(store_dir)], "has d_in 32"),
        "d_in vs model": ([str(narrow), *model, "--corpus", str(corpus)], "has width 64"),
        "empty corpus": ([str(good), *model, "--corpus", str(empty_corpus)], "empty eval set"),
        "max_tokens 0": ([str(good), "--store", str(store_dir), "--max_tokens", "0"],
                         "empty eval set"),
        "empty store": ([str(good), "--store", str(empty_store)], "holds no tokens"),
        "store tokenizer": ([str(good), *model, "--store", str(retok)],
                            "another tokenizer (hash ffff"),
        "sae tokenizer": ([str(foreign), "--store", str(store_dir)],
                          "trained on tokens of another tokenizer"),
        "unknown hookpoint": ([str(nameless), *model, "--corpus", str(corpus)],
                              "cannot tell which hookpoint"),
        "no data": ([str(good)], "give --store"),
        "corpus without model": ([str(good), "--corpus", str(corpus)], "--corpus needs --model"),
        "splice regions without model": ([str(good), "--store", str(store_dir),
                                          "--splice_regions", "think"],
                                         "--splice_regions needs --model"),
        "unknown splice region": ([str(good), *model, "--corpus", str(corpus),
                                   "--splice_regions", "think,thoughts"],
                                  "unknown splice_regions 'think,thoughts'"),
        "unknown split": ([str(good), "--store", str(store_dir), "--split", "dev"],
                          "unknown split 'dev'"),
        "split without holdout": ([str(good), "--store", str(store_dir), "--split", "heldout"],
                                  "trained without a holdout"),
    }


def test_bad_inputs_one_line_exit_2_nothing_written(tmp_path, store_dir, tiny_model_dir,
                                                    corpus_path, tokenizer, capsys):
    assert ActivationStore(store_dir).manifest["tokenizer_hash"] == tokenizer_hash(tokenizer)
    cases = _bad_cases(tmp_path, store_dir, tiny_model_dir, corpus_path)
    before = _tree(tmp_path)
    store_before = _tree(store_dir)
    for name, (args, message) in cases.items():
        capsys.readouterr()
        assert main(["eval", "--sae", *args, *OFF]) == 2, name
        err = capsys.readouterr().err.strip()
        assert err.startswith("thinksae: error: ") and "\n" not in err, (name, err)
        assert message in err, (name, err)
    assert _tree(tmp_path) == before and _tree(store_dir) == store_before


def test_split_on_the_corpus_equals_split_on_the_store(tmp_path, store_dir, corpus_path, tiny_model,
                                                       tokenizer):
    """`--split heldout` with the model over the corpus reads the same traces (and gets the
    same numbers) as over the store harvested from it."""
    from thinksae.train import TrainConfig, train

    sae_dir = train(TrainConfig(store=str(store_dir), out=str(tmp_path / "sae"), batch_size=32,
                                sae=SaeConfig(num_latents=128, k=4), lr_warmup_steps=1,
                                holdout=0.34, dtype="float32", device="cpu", progress=False))
    held = json.loads((sae_dir / "thinksae.json").read_text())["data"]["heldout_traces"]
    assert len(held) == 2
    common = dict(sae=str(sae_dir), split="heldout", update_card=False, device="cpu",
                  dtype="float32", progress=False, mean_ablation=False)
    on_store = evaluate(EvalConfig(store=str(store_dir), out=str(tmp_path / "s.json"), **common),
                        tiny_model, tokenizer)
    on_corpus = evaluate(EvalConfig(corpus=str(corpus_path), out=str(tmp_path / "c.json"),
                                    **common), tiny_model, tokenizer)
    store = ActivationStore(store_dir)
    docs = [i for i, t in enumerate(store.trace_ids) if t in held]
    a, b = on_store.metrics["all"], on_corpus.metrics["all"]
    assert a["tokens"] == b["tokens"] and a["sinks"] == b["sinks"]
    assert a["tokens"] + a["sinks"] == len(store.token_indices(docs=docs))
    assert a["fvu"] == pytest.approx(b["fvu"], rel=1e-5)
    assert a["ce_spliced"] == pytest.approx(b["ce_spliced"], rel=1e-5)
    card = json.loads((sae_dir / "thinksae.json").read_text())
    del card["data"]["heldout_traces"]
    (sae_dir / "thinksae.json").write_text(json.dumps(card))
    with pytest.raises(ThinksaeError, match="lists no held-out traces; evaluate on its store"):
        evaluate(EvalConfig(corpus=str(corpus_path), out=str(tmp_path / "o.json"), **common),
                 tiny_model, tokenizer)
    other = tmp_path / "other.jsonl"
    other.write_text(corpus_path.read_text().replace("apples", "pears"))
    with pytest.raises(ThinksaeError, match="is not the one the SAE"):
        evaluate(EvalConfig(corpus=str(other), out=str(tmp_path / "o.json"), **common),
                 tiny_model, tokenizer)
