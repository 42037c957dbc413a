"""Every stage with the two architectures beside TopK, on the tiny model: a BatchTopK SAE trained
end to end by `thinksae run` (train, eval, splice, analyze, steer, monitor), and a JumpReLU SAE
in SAELens' format through eval, analyze, steer and the monitor."""

from __future__ import annotations

import json

import pytest
import torch
from test_monitor_helpers import HOOKPOINT, QUESTION
from test_pipeline_run import run_config, tiny_config

from thinksae.cli import main
from thinksae.monitor import Monitor, TokenEvent
from thinksae.sae import BatchTopKSae, JumpReLUSae, SaeConfig, load_sae, save_saelens
from thinksae.store import ActivationStore, HarvestConfig, harvest

OFF = ["--progress", "false"]
NUM = 96


@pytest.fixture(scope="module")
def store_dir(tmp_path_factory, corpus_path, tiny_model, tokenizer):
    cfg = HarvestConfig(model="tiny", corpus=str(corpus_path), hookpoint=HOOKPOINT,
                        out=str(tmp_path_factory.mktemp("arch_store")), device="cpu",
                        dtype="float32", docs_per_shard=2, batch_size=2, progress=False)
    (path,) = harvest(cfg, tiny_model, tokenizer)
    return path


@pytest.fixture(scope="module")
def jumprelu_dir(tmp_path_factory, store_dir):
    """A JumpReLU SAE (SAELens layout, apply_b_dec_to_input false as in Gemma Scope) whose
    thresholds let a few latents fire per token of the store."""
    torch.manual_seed(0)
    sae = JumpReLUSae(64, SaeConfig(architecture="jumprelu", num_latents=NUM, k=0))
    x = torch.cat([c["activations"] for c in ActivationStore(store_dir).iter_chunks()])
    with torch.no_grad():
        sae.b_dec.copy_(x.mean(0))
        sae.threshold.copy_(sae.pre_acts(x).quantile(0.95, dim=0).clamp_min(0))
    path = tmp_path_factory.mktemp("jumprelu") / HOOKPOINT
    save_saelens(sae, path, hook_name=HOOKPOINT)
    cfg = json.loads((path / "cfg.json").read_text())
    cfg["apply_b_dec_to_input"] = False  # fold b_dec the SAELens way: b_enc' = b_enc - b_dec W
    (path / "cfg.json").write_text(json.dumps(cfg))
    from safetensors.torch import load_file, save_file

    t = load_file(str(path / "sae_weights.safetensors"))
    t["b_enc"] = t["b_enc"] - t["b_dec"] @ t["W_enc"]
    save_file(t, str(path / "sae_weights.safetensors"))
    assert torch.allclose(load_sae(path).dense_acts(x), sae.dense_acts(x), atol=1e-4)
    return path


def _store_x(store_dir):
    return torch.cat([c["activations"] for c in ActivationStore(store_dir).iter_chunks()])


def _kept_x(store_dir):
    """The store's activations of the tokens eval keeps (not the sinks)."""
    return _store_x(store_dir)[torch.from_numpy(~ActivationStore(store_dir).sinks)]


def test_jumprelu_eval_l0_counts_active_latents(tmp_path, store_dir, jumprelu_dir, capsys):
    assert main(["eval", "--sae", str(jumprelu_dir), "--store", str(store_dir), "--out",
                 str(tmp_path / "eval.json"), *OFF]) == 0
    result = json.loads((tmp_path / "eval.json").read_text())
    sae, x = load_sae(jumprelu_dir), _kept_x(store_dir)
    with torch.no_grad():
        dense = sae.dense_acts(x)
        fvu = float(sae(x).fvu)
    counts = (dense > 0).sum(-1).float()
    assert counts.max() > counts.min()  # a varying number of active latents per token
    metrics = result["metrics"]["all"]
    assert metrics["l0"] == pytest.approx(float(counts.mean()), rel=1e-6)
    assert metrics["fvu"] == pytest.approx(fvu, rel=1e-5)
    assert metrics["dead_fraction"] == pytest.approx(1 - float((dense > 0).any(0).float().mean()))


def test_jumprelu_analyze_counts_and_contexts(tmp_path, store_dir, jumprelu_dir, tiny_model_dir):
    out = tmp_path / "feat"
    assert main(["analyze", "--sae", str(jumprelu_dir), "--store", str(store_dir), "--model",
                 str(tiny_model_dir), "--out", str(out), "--top_n", "3", "--window", "2",
                 "--device", "cpu", "--dtype", "float32", *OFF]) == 0
    rows = [json.loads(line) for line in (out / "features.jsonl").read_text().splitlines()]
    with torch.no_grad():
        dense = load_sae(jumprelu_dir).dense_acts(_store_x(store_dir))
    assert [r["fires"] for r in rows] == (dense > 0).sum(0).tolist()
    kept = dense[~torch.from_numpy(ActivationStore(store_dir).sinks)]  # a sink is never a max
    for r in rows:
        if r["fires"]:
            assert r["max_act"] == pytest.approx(float(kept[:, r["feature"]].max()), rel=1e-3)


def test_jumprelu_steer_and_monitor(tmp_path, jumprelu_dir, tiny_model_dir, tiny_model,
                                    tokenizer):
    out = tmp_path / "steer"
    assert main(["steer", "--sae", str(jumprelu_dir), "--model", str(tiny_model_dir), "--device", "cpu",
                 "--dtype", "float32", "--max_new_tokens", "4", "--out", str(out), "--feature",
                 "3", "--sweep", "x1,+8", "--start", "prompt", "--end", "none", "--prompt", QUESTION,
                 *OFF]) == 0
    result = json.loads((out / "steer.json").read_text())
    base, ident, strong = (result["baseline"]["traces"], result["runs"][0]["traces"],
                           result["runs"][1]["traces"])
    assert [t["new_ids"] for t in ident] == [t["new_ids"] for t in base]
    assert result["runs"][1]["summary"]["kl_mean"] > 0
    assert all(t["steered_positions"] > 0 for t in strong)
    _monitor_reads_encode(load_sae(jumprelu_dir), tiny_model, tokenizer)


def _monitor_reads_encode(sae, model, tokenizer):
    """The monitor's topk value is the SAE's encode at the hookpoint; pre its pre-activation."""
    from thinksae.models import capture

    watch = list(range(0, sae.num_latents, 7))
    prompt = Monitor(model, tokenizer, sae, HOOKPOINT, watch).prepare(QUESTION).ids
    for value in ("topk", "pre"):
        mon = Monitor(model, tokenizer, sae, HOOKPOINT, watch, value=value)
        toks = [e for e in mon.watch(QUESTION, max_new_tokens=3) if isinstance(e, TokenEvent)]
        full = torch.tensor([[*prompt, *[t.token_id for t in toks]]])
        x = capture(model, HOOKPOINT, full)[HOOKPOINT][0, len(prompt):]
        with torch.no_grad():
            ref = sae.dense_acts(x) if value == "topk" else sae.pre_acts(x).relu()
        got = torch.tensor([[t.acts[f] for f in watch] for t in toks])
        torch.testing.assert_close(got, ref[:, watch].float(), atol=1e-4, rtol=1e-4)
        if value == "topk":
            assert int((got == 0).sum()) > 0  # inactive latents read 0


def test_batchtopk_trains_end_to_end_through_run(tmp_path, tiny_model_dir, tiny_model, tokenizer):
    config = tiny_config(tmp_path / "run", tiny_model_dir)
    config["train"]["sae"] = {"architecture": "batchtopk", "num_latents": 128, "k": 8}
    run_config(tmp_path / "run.yaml", config)
    out = tmp_path / "run"
    for stage in ("sae", "eval", "splice", "features", "steer", "monitor"):
        assert json.loads((out / stage / "stage.json").read_text())["status"] == "done"
    sae_dir = out / "sae" / HOOKPOINT
    assert json.loads((sae_dir / "cfg.json").read_text())["activation"] == "batchtopk"
    sae = load_sae(sae_dir)
    assert isinstance(sae, BatchTopKSae) and float(sae.threshold) > 0  # learned while training
    report = json.loads((out / "report.json").read_text())
    assert report["eval"]["groups"][0]["fvu"] > 0 and report["monitor"]["tokens"]
    assert [r["label"] for r in report["steer"]["runs"]] == ["baseline", "0", "x2", "2max"]
    # eval's L0 is the count of active latents under the threshold, on the held-out traces
    store = ActivationStore(out / "store" / HOOKPOINT)
    held = store.split_docs(0.34, "heldout")
    indices = store.token_indices(docs=held)
    x = store.gather(indices[~store.sinks[indices]])  # eval leaves the sink tokens out
    with torch.no_grad():
        l0 = float((sae.dense_acts(x) > 0).sum(-1).float().mean())
    assert report["eval"]["groups"][0]["l0"] == pytest.approx(l0, rel=1e-5)
    _monitor_reads_encode(sae, tiny_model, tokenizer)


def test_cli_train_architecture_batchtopk(tmp_path, store_dir):
    out = tmp_path / "sae"
    assert main(["train", "--store", str(store_dir), "--architecture", "batchtopk",
                 "--num_latents", str(NUM), "-k", "4", "--batch_size", "32", "--lr_warmup_steps",
                 "2", "--device", "cpu", "--dtype", "float32", "--out", str(out), *OFF]) == 0
    sae = load_sae(out / HOOKPOINT)
    assert isinstance(sae, BatchTopKSae) and sae.cfg.k == 4 and float(sae.threshold) > 0
    assert json.loads((out / HOOKPOINT / "train_config.json").read_text())["sae"][
        "architecture"] == "batchtopk"
