"""The study's workflow end to end on the tiny fixture: an SAE released in EleutherAI sparsify's
layout for `layers.10.mlp` (as for R1-Distill-Qwen-1.5B), written by the real `sparsify` package,
analysed by `thinksae run` with no training: corpus → harvest at the MLP output → eval → splice
→ analyze → monitor → report."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from conftest import TINY_CONFIG

from thinksae.cli import main
from thinksae.store import ActivationStore

HOOK = "layers.10.mlp"


@pytest.fixture(scope="module")
def study(tmp_path_factory, tokenizer, corpus_path):
    sparsify = pytest.importorskip("sparsify")
    from transformers import Qwen2Config, Qwen2ForCausalLM

    root = tmp_path_factory.mktemp("study")
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(Qwen2Config(**{**TINY_CONFIG, "num_hidden_layers": 12})).eval()
    model.save_pretrained(root / "model")
    tokenizer.save_pretrained(root / "model")

    torch.manual_seed(1)
    sae = sparsify.SparseCoder(TINY_CONFIG["hidden_size"],
                               sparsify.SparseCoderConfig(num_latents=256, k=8))
    with torch.no_grad():
        sae.encoder.bias.normal_(0, 0.02)
    sae.save_to_disk(root / "sae-release" / HOOK)  # sparsify's own writer
    sae_files = {p.name: p.read_bytes() for p in (root / "sae-release" / HOOK).iterdir()}

    config = {
        "name": "study", "out": str(root / "run"), "model": str(root / "model"),
        "hookpoint": HOOK, "device": "cpu", "dtype": "float32", "sae": str(root / "sae-release"),
        "corpus": {"traces": str(corpus_path)},
        "harvest": {"batch_size": 3}, "eval": {}, "splice": {"max_tokens": 96},
        "analyze": {"min_fires": 2, "top_n": 5}, "steer": None,
        "monitor": {"max_new_tokens": 4, "rule": {"threshold": 0.0}},
    }
    (root / "study.yaml").write_text(yaml.safe_dump(config))
    assert main(["run", str(root / "study.yaml"), "--progress", "false"]) == 0
    return root, model, sae, sae_files


def test_the_released_sae_is_used_as_it_is_and_left_untouched(study):
    root, _, _, sae_files = study
    out = root / "run"
    assert not (out / "sae").exists()  # no training
    assert {p.name: p.read_bytes() for p in (root / "sae-release" / HOOK).iterdir()} == sae_files
    for stage in ("corpus", "store", "eval", "splice", "features", "monitor"):
        assert json.loads((out / stage / "stage.json").read_text())["status"] == "done"
    assert "Pretrained SAE" in (out / "index.html").read_text()


def test_the_store_holds_the_mlp_output_of_block_10(study, tokenizer):
    root, model, _, _ = study
    store = ActivationStore(root / "run" / "store" / HOOK)
    assert store.hookpoint == HOOK and store.d_in == TINY_CONFIG["hidden_size"]
    chunk = next(store.iter_chunks(10_000))
    first = chunk["doc_index"] == 0
    ids = chunk["token_ids"][first][None]
    seen = {}
    handle = model.model.layers[10].mlp.register_forward_hook(
        lambda _m, _i, out: seen.setdefault("x", out))
    try:
        with torch.no_grad():
            model(ids)
    finally:
        handle.remove()
    torch.testing.assert_close(chunk["activations"][first].float(), seen["x"][0].float())


def test_eval_equals_sparsify_s_own_reconstruction(study):
    root, _, sae, _ = study
    store = ActivationStore(root / "run" / "store" / HOOK)
    kept = np.flatnonzero(~store.sinks)  # eval leaves the sinks (here the special tokens) out
    assert 0 < len(kept) < store.num_tokens
    x = store.gather(kept).float()
    with torch.no_grad():
        x_hat = sae(x).sae_out.double()
    x = x.double()
    fvu = float(((x - x_hat) ** 2).sum() / ((x - x.mean(0)) ** 2).sum())
    report = json.loads((root / "run" / "report.json").read_text())
    groups = {g["group"]: g for g in report["eval"]["groups"]}
    assert groups["all"]["fvu"] == pytest.approx(fvu, rel=1e-4)
    assert groups["all"]["tokens"] == len(kept)
    assert groups["all"]["l0"] == pytest.approx(8.0)
    assert groups["region think"]["tokens"] > 0 and groups["region answer"]["tokens"] > 0
    assert any(g.startswith("behaviour ") for g in groups)  # "wait", "hmm", ... in the traces
    splice = {g["group"]: g for g in report["splice"]["groups"]}
    sinks = report["splice"]["sinks"]  # of the 96 spliced tokens, the sinks are not scored
    assert sinks["tokens"] == 96 and sinks["sinks"] == sinks["special"] > 0
    assert splice["all"]["tokens"] == 96 - sinks["sinks"] and splice["all"]["ce_spliced"] > 0


def test_features_name_their_trigger_tokens(study):
    root, _, _, _ = study
    report = json.loads((root / "run" / "report.json").read_text())
    feats = report["features"]
    assert feats["num_latents"] == 256
    assert sum(feats["labels"].values()) == 256
    top = feats["top"]["freq"][0]
    context = top["context"]
    assert context["tokens"][context["trigger"]] == context["trigger_token"]
    shares = [t["share"] for t in top["tokens"]]
    assert shares == sorted(shares, reverse=True) and 0 < sum(shares) <= 1 + 1e-6
    rows = [json.loads(line) for line in
            (root / "run" / "features" / "features.jsonl").read_text().splitlines()]
    assert len(rows) == 256 and all("reason_score" in r for r in rows)
    assert Path(root / "run" / feats["dashboard"]).is_file()
    assert report["monitor"]["alerts"] and report["steer"] is None
