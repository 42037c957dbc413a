"""bench/quality.py: data preparation, the one metric function (by hand), equal batches for every
system, the peers' SAEs through thinksae's loaders, and a smoke run on a tiny synthetic store."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from thinksae import atomic
from thinksae.sae import SaeConfig, load_sae, make_sae
from thinksae.store.shard_parts import FORMAT, MANIFEST
from thinksae.store.shards import write_shard

BENCH = Path(__file__).resolve().parent.parent / "bench"
sys.path.insert(0, str(BENCH))
quality = pytest.importorskip("quality")
from quality_data import (  # noqa: E402
    BenchData,
    HeldoutDoc,
    prepare,
    quality_metrics,
    spliced_think,
)
from quality_train import MatrixSource, batch_stream, run_worker  # noqa: E402

D = 8
PROMPT, THINK, ANSWER, SPECIAL = 0, 1, 2, 3


def _tiny_store(path: Path, docs: int = 8, seed: int = 0) -> Path:
    """``docs`` traces of 24 tokens: a special token (norm ~1000), a prompt "\\n" sink (norm
    ~300), two prompt tokens shared by every trace (same rows), then 8 prompt, 8 think and 4
    answer tokens of their own."""
    g = torch.Generator().manual_seed(seed)
    shared = torch.randn(2, D, generator=g)
    first = torch.randn(D, generator=g)
    rows, regions, ids, doc_index, positions = [], [], [], [], []
    for d in range(docs):
        own = torch.randn(20, D, generator=g) + 0.5
        x = torch.cat([first[None] * 1000 / first.norm(), first[None] * 300 / first.norm(),
                       shared, own])
        reg = [SPECIAL, PROMPT, PROMPT, PROMPT] + [PROMPT] * 8 + [THINK] * 8 + [ANSWER] * 4
        rows.append(x)
        regions += reg
        ids += [151644, 198, 5, 6] + list(range(1000 + 20 * d, 1020 + 20 * d))
        doc_index += [d] * 24
        positions += list(range(24))
    n = 24 * docs
    write_shard(path / "shard-00000.safetensors", {
        "activations": torch.cat(rows), "token_ids": torch.tensor(ids, dtype=torch.int32),
        "regions": torch.tensor(regions, dtype=torch.uint8),
        "behaviours": torch.zeros(n, dtype=torch.uint8),
        "doc_index": torch.tensor(doc_index, dtype=torch.int32),
        "positions": torch.tensor(positions, dtype=torch.int32)})
    atomic.write_json(path / MANIFEST, {
        "format": FORMAT, "model": "tiny", "hookpoint": "layers.1", "tokenizer_hash": "t",
        "corpus_hash": "c", "dtype": "float32", "d_in": D, "num_tokens": n, "complete": True,
        "shards": [{"file": "shard-00000.safetensors", "num_tokens": n, "first_doc": 0,
                    "num_docs": docs, "trace_ids": [f"q{d}#0" for d in range(docs)]}],
        "regions": ["prompt", "think", "answer", "special"]})
    return path


def test_prepare_splits_traces_drops_sinks_and_shared_prompt_rows(tmp_path):
    store = _tiny_store(tmp_path / "store")
    data = prepare(str(store), holdout=0.25, norm_multiple=10.0)
    s = data.summary
    assert len(s["heldout_traces"]) == 2  # round(0.25 · 8) whole questions
    # training: 6 traces x 24 rows, less 6 special and 6 "\n" sinks
    assert s["sinks_train"]["special"] == 6 and s["sinks_train"]["by_norm"] == 6
    assert s["sinks_train"]["by_norm_tokens"] == [{"id": 198, "count": 6}]
    assert s["train_rows"] == len(data.train_x) == 6 * 22
    # held out: 2 x 24 rows, 4 sinks; the 2 shared prompt rows of each trace equal training rows
    assert s["heldout_rows"] == 48 and s["heldout_equal_to_training_row"] == 4
    assert s["eval_rows"] == len(data.eval_x) == 2 * 20
    assert s["eval_rows_by_region"] == {"prompt": 16, "think": 16, "answer": 8, "special": 0}
    assert [len(d.input_ids) for d in data.heldout_docs] == [24, 24]
    assert data.heldout_docs[0].sinks[:3].tolist() == [True, True, False]
    kept = prepare(str(store), holdout=0.25, norm_multiple=10.0, drop_sinks=False)
    assert kept.summary["train_rows"] == 6 * 24 and kept.summary["eval_rows"] == 40


def test_quality_metrics_by_hand():
    """TopK k=1 with identity weights: x̂ keeps each row's largest coordinate."""
    sae = make_sae(2, SaeConfig(num_latents=2, k=1))
    with torch.no_grad():
        sae.encoder.weight.copy_(torch.eye(2))
        sae.encoder.bias.zero_()
        sae.W_dec.copy_(torch.eye(2))
        sae.b_dec.zero_()
    x = torch.tensor([[3.0, 1.0], [0.0, 2.0], [2.0, 0.5]])
    data = BenchData(train_x=torch.tensor([[3.0, 1.0]]), eval_x=x,
                     eval_regions=torch.tensor([THINK, THINK, ANSWER]),
                     region_names=["prompt", "think", "answer", "special"], heldout_docs=[],
                     summary={})
    m = quality_metrics(sae, data)
    # think rows: errors (0, 1) and (0, 0): SSE 1; mean (1.5, 1.5): Σ‖x − x̄‖² = 2.5 + 2.5
    assert m["think"]["fvu"] == pytest.approx(1 / 5) and m["think"]["mse"] == pytest.approx(1 / 4)
    # all rows: SSE 1 + 0.25; Σ‖x − x̄‖² = 4.6667 + 1.1667 = 35/6
    assert m["all"]["fvu"] == pytest.approx(1.25 / (35 / 6))
    assert m["all"]["mse"] == pytest.approx(1.25 / 6) and m["all"]["l0"] == 1.0
    assert m["answer"]["fvu"] is None and m["answer"]["mse"] == pytest.approx(0.25 / 2)
    assert m["prompt"]["tokens"] == 0
    assert m["dead_pct"] == 50.0  # the training row fires latent 0 only


def test_every_system_sees_the_same_batches():
    x = torch.arange(40.0)[:, None].repeat(1, 3)
    ours = []
    src = MatrixSource(x, "h")
    for epoch in range(3):  # thinksae's trainer asks for seed + epoch, a pass at a time
        ours += list(src.iter_batches(8, seed=5 + epoch))
    theirs = list(batch_stream(x, 8, 15, seed=5))
    assert len(theirs) == 15 and all(torch.equal(a, b) for a, b in zip(ours, theirs, strict=True))


def test_unknown_or_missing_peer_is_one_line_error(monkeypatch):
    with pytest.raises(SystemExit, match="unknown system 'foo-topk'"):
        quality.check_systems(["foo-topk"])
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "sparsify" else real(name, *a))
    with pytest.raises(SystemExit, match="sparsify-topk needs eai-sparsify") as err:
        quality.check_systems(["thinksae-topk", "sparsify-topk"])
    assert "\n" not in str(err.value)
    assert "thinksae-batchtopk" in quality.all_systems()  # the registry's trainable ones


def _spec(tmp_path, system, variant, data_file, **kw):
    return {"system": system, "variant": variant, "k": 4, "seed": 0, "latents": 32,
            "batch_size": 16, "steps": 12, "dtype": "float32", "threads": 1,
            "matched": {"lr": 3e-3, "warmup": 2, "decay": "cosine"}, "data_file": data_file,
            "data_hash": "h", "set": {}, "out_dir": str(tmp_path / f"{system}-{variant}"), **kw}


@pytest.mark.skipif(importlib.util.find_spec("sparsify") is None, reason="sparsify not installed")
def test_sparsify_matched_equals_thinksae_matched(tmp_path):
    """Same init, b_dec, FVU loss, Adam schedule and batches (AuxK off, as sparsify's default):
    the two TopK SAEs agree."""
    from safetensors.torch import save_file

    data_file = str(tmp_path / "x.safetensors")
    save_file({"train_x": torch.randn(64, D) + 1}, data_file)
    a = load_sae(run_worker(_spec(tmp_path, "thinksae-topk", "matched", data_file,
                                  set={"auxk_alpha": 0}))["sae_dir"])
    b = load_sae(run_worker(_spec(tmp_path, "sparsify-topk", "matched", data_file))["sae_dir"])
    for name, t in a.state_dict().items():
        assert torch.allclose(t, b.state_dict()[name], atol=1e-4), name


@pytest.mark.skipif(importlib.util.find_spec("sae_lens") is None, reason="sae-lens not installed")
def test_saelens_batchtopk_loads_as_its_own_jumprelu(tmp_path):
    """The SAELens BatchTopK the bench trains, read by thinksae's loader, encodes as SAELens'
    own loader of the same files does."""
    from sae_lens import SAE
    from safetensors.torch import save_file

    data_file = str(tmp_path / "x.safetensors")
    x = torch.randn(64, D) * 3 + 1
    save_file({"train_x": x}, data_file)
    rec = run_worker(_spec(tmp_path, "saelens-batchtopk", "own", data_file))
    ours = load_sae(rec["sae_dir"])
    theirs = SAE.load_from_disk(rec["sae_dir"], device="cpu")
    assert ours.architecture == "jumprelu"
    with torch.no_grad():
        assert torch.allclose(ours.dense_acts(x), theirs.encode(x), atol=1e-4)
        assert torch.allclose(ours.decode(*ours.encode(x)), theirs.decode(theirs.encode(x)),
                              atol=1e-4)


def test_smoke_table_on_a_tiny_store(tmp_path, capsys):
    store = _tiny_store(tmp_path / "store")
    out = tmp_path / "q.json"
    quality.main(["--store", str(store), "--systems", "thinksae-topk", "thinksae-batchtopk",
                  "--variants", "own", "--k", "4", "--seeds", "0", "--latents", "32",
                  "--batch_size", "16", "--epochs", "2", "--holdout", "0.25", "--threads", "1",
                  "--json", str(out)])
    text = capsys.readouterr().out
    assert "- command: `python" in text and "commit " in text and "flags" in text
    assert "12 sinks (6 special, 6 by norm: id 198 × 6) dropped" in text
    assert "4 tokens bit-identical to a training row" in text
    lines = [ln for ln in text.splitlines() if ln.startswith("| thinksae-")]
    assert len(lines) == 2 and all(" | own | 4 | 1 | " in ln for ln in lines)
    result = json.loads(out.read_text())
    assert [r["system"] for r in result["runs"]] == ["thinksae-topk", "thinksae-batchtopk"]
    for run in result["runs"]:
        assert 0 < run["metrics"]["think"]["fvu"] < 2 and run["train_s"] > 0
        assert run["metrics"]["dead_pct"] >= 0 and run["peak_rss_mb"] > 0


def test_spliced_think_scores_by_hand():
    """An SAE that reconstructs exactly scores CE 1 and KL 0 on think positions; one that outputs
    zeros is the zero ablation (score 0); sink positions stay clean and are not scored."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    model = Qwen2ForCausalLM(Qwen2Config(
        vocab_size=256, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=64,
        initializer_range=0.2)).eval()
    g = torch.Generator().manual_seed(1)
    docs = []
    for n in (12, 9):
        regions = torch.tensor([SPECIAL, PROMPT, PROMPT] + [THINK] * (n - 3), dtype=torch.uint8)
        docs.append(HeldoutDoc(torch.randint(0, 256, (n,), generator=g), regions,
                               regions == SPECIAL))
    data = BenchData(torch.zeros(1, 16), torch.zeros(1, 16), torch.zeros(1), ["prompt", "think",
                     "answer", "special"], docs, {})
    exact = make_sae(16, SaeConfig(num_latents=32, k=32))
    zero = make_sae(16, SaeConfig(num_latents=32, k=1))
    with torch.no_grad():
        exact.encoder.weight.copy_(torch.cat([torch.eye(16), -torch.eye(16)]))
        exact.W_dec.copy_(torch.cat([torch.eye(16), -torch.eye(16)]))
        for sae in (exact, zero):
            sae.encoder.bias.zero_()
            sae.b_dec.zero_()
        zero.W_dec.zero_()
    r = spliced_think(model, "layers.0", exact, data, batch_size=2)
    assert r["positions"] == (12 - 3 - 1) + (9 - 3 - 1)  # think positions with a next token
    assert r["ce_score"] == pytest.approx(1.0, abs=1e-4) and r["kl"] == pytest.approx(0, abs=1e-5)
    assert spliced_think(model, "layers.0", zero, data)["ce_score"] == pytest.approx(0, abs=1e-9)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the fork-and-exec quirk is Linux's")
def test_worker_peak_rss_is_its_own_not_the_parents():
    """A process started from a parent holding 512 MB reports its own peak (what a bench worker
    started beside the loaded model must do): ru_maxrss would carry the parent's over the exec."""
    ballast = b"\x01" * (512 << 20)  # resident in the parent
    code = (f"import sys, resource; sys.path.insert(0, {str(BENCH)!r}); import quality_train; "
            "print(quality_train.peak_rss_mb(), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    own, rusage = map(float, out.stdout.split())
    assert len(ballast) == 512 << 20
    assert own < 450, (own, rusage)  # importing torch and the bench: ~220 MB here; ru_maxrss read 526
