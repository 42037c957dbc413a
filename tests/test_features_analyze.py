"""`thinksae analyze` / `thinksae feature` end to end: store and corpus sources, sparsify SAEs at
``layers.N.mlp``, and bad input (one line, exit 2, nothing written)."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import save_file

from thinksae.cli import main
from thinksae.features import LABELS, AnalyzeConfig, analyze, feature_info
from thinksae.sae import Sae, SaeConfig
from thinksae.sae.formats import load_sparsify, save_sparsify, write_report_card
from thinksae.store import ActivationStore, HarvestConfig, harvest

OFF = ["--progress", "false", "--device", "cpu", "--dtype", "float32"]
NUM = 96


@pytest.fixture(scope="module")
def stores(tmp_path_factory, corpus_path, tiny_model, tokenizer):
    out = tmp_path_factory.mktemp("fstore")
    cfg = HarvestConfig(model="tiny", corpus=str(corpus_path), hookpoint="layers.1,layers.1.mlp",
                        out=str(out), device="cpu", dtype="float32", docs_per_shard=2,
                        batch_size=2, progress=False)
    resid, mlp = harvest(cfg, tiny_model, tokenizer)
    return {"layers.1": resid, "layers.1.mlp": mlp}


@pytest.fixture(scope="module")
def saes(tmp_path_factory):
    """Our SAE at run/layers.1; an EleutherAI-style sparsify dir at eai/layers.1.mlp; a d=32 SAE."""
    root = tmp_path_factory.mktemp("fsae")
    torch.manual_seed(0)
    save_sparsify(Sae(64, SaeConfig(num_latents=NUM, k=4)), root / "run" / "layers.1")
    eai = root / "eai" / "layers.1.mlp"
    eai.mkdir(parents=True)
    (eai / "cfg.json").write_text(json.dumps({
        "expansion_factor": 1, "normalize_decoder": True, "num_latents": 80, "k": 4,
        "multi_topk": False, "skip_connection": False, "d_in": 64}))
    w = torch.nn.functional.normalize(torch.randn(80, 64), dim=1)
    save_file({"encoder.weight": w.clone(), "encoder.bias": torch.zeros(80), "W_dec": w.clone(),
               "b_dec": torch.zeros(64)}, str(eai / "sae.safetensors"))
    save_sparsify(Sae(32, SaeConfig(num_latents=40, k=4)), root / "narrow" / "layers.1")
    return root


def _run_cli(capsys, args):
    rc = main(args)
    return rc, capsys.readouterr()


def test_cli_analyze_store_and_feature_card(tmp_path, stores, saes, tiny_model_dir, capsys):
    out = tmp_path / "feat"
    rc, _ = _run_cli(capsys, ["analyze", "--sae", str(saes / "run"), "--store",
                              str(stores["layers.1"]), "--model", str(tiny_model_dir),
                              "--out", str(out), "--top_n", "5", "--window", "4", *OFF])
    assert rc == 0
    store = ActivationStore(stores["layers.1"])
    rows = [json.loads(line) for line in (out / "features.jsonl").read_text().splitlines()]
    assert [r["feature"] for r in rows] == list(range(NUM))
    need = {"fires", "freq", "freq_think", "freq_answer", "freq_backtracking", "traces",
            "trace_freq", "tokens_90", "token_entropy", "top_token_share", "label",
            "reason_score", "think_rate_ratio", "think_rate_ratio_lo", "think_rate_ratio_hi",
            "think_mean_ratio", "format_share", "lens_pos", "lens_neg"}
    assert all(need <= set(r) for r in rows)
    assert {r["label"] for r in rows} <= set(LABELS)
    alive = [r for r in rows if r["fires"]]
    assert alive and all(len(r["lens_pos"]) == 5 for r in alive)
    assert sum(r["fires"] for r in rows) <= 4 * store.num_tokens
    meta = json.loads((out / "analysis.json").read_text())
    assert meta["meta"]["num_tokens"] == store.num_tokens and meta["meta"]["num_docs"] == 6
    assert (out / "dashboard" / "index.html").is_file()
    # a feature's top context is the store's token, with the SAE's activation there
    sae = load_sparsify(saes / "run" / "layers.1")
    tokens, docs, positions = (torch.from_numpy(store.labels(k).astype("int64"))
                               for k in ("token_ids", "doc_index", "positions"))
    best = max(alive, key=lambda r: r["fires"])
    row, det = feature_info(out, best["feature"])
    assert row == best and 0 < len(det["contexts"]) <= 5
    ctx = det["contexts"][0]
    i = int(((docs == ctx["doc"]) & (positions == ctx["position"])).nonzero())
    x = store.gather(torch.tensor([i]).numpy())
    with torch.no_grad():
        dense = sae.dense_acts(x)[0]
    assert ctx["act"] == pytest.approx(float(dense[best["feature"]]), rel=1e-4)
    assert ctx["act"] == pytest.approx(best["max_act"], rel=1e-4)
    assert ctx["trace_id"] == f"t{ctx['doc']}"
    assert ctx["tokens"][ctx["trigger"]] == tokenizer_text(out, int(tokens[i]))
    # the terminal card
    rc, cap = _run_cli(capsys, ["feature", str(best["feature"]), "--analysis", str(out)])
    assert rc == 0
    assert f"feature {best['feature']}" in cap.out and "logit lens" in cap.out
    assert best["label"] in cap.out and "top contexts" in cap.out


def tokenizer_text(out, token_id: int) -> str:
    return json.loads((out / "vocab.json").read_text())[token_id]


def test_sparsify_mlp_sae_on_the_fly_equals_store(tmp_path, stores, saes, corpus_path,
                                                    tiny_model, tokenizer):
    """An EleutherAI-layout SAE at layers.N.mlp: its hookpoint comes from the directory name."""
    base = dict(sae=str(saes / "eai"), top_n=3, window=2, progress=False, device="cpu",
                logit_lens=False, dashboard=False)
    fly = analyze(AnalyzeConfig(corpus=str(corpus_path), out=str(tmp_path / "fly"), **base),
                  model=tiny_model, tokenizer=tokenizer)
    st = analyze(AnalyzeConfig(store=str(stores["layers.1.mlp"]), out=str(tmp_path / "st"), **base),
                 model=tiny_model, tokenizer=tokenizer)
    a = [json.loads(line) for line in (fly / "features.jsonl").read_text().splitlines()]
    b = [json.loads(line) for line in (st / "features.jsonl").read_text().splitlines()]
    assert len(a) == len(b) == 80
    meta = json.loads((fly / "analysis.json").read_text())
    assert meta["source"]["hookpoint"] == "layers.1.mlp" and meta["sae"]["hookpoint"] == "layers.1.mlp"
    assert meta["meta"]["num_tokens"] == ActivationStore(stores["layers.1.mlp"]).num_tokens
    fires_a, fires_b = torch.tensor([r["fires"] for r in a]), torch.tensor([r["fires"] for r in b])
    assert fires_a.sum() > 0
    # the same tokens through the same model: equal up to top-k flips at float-noise ties
    assert (fires_a - fires_b).abs().sum() <= 2
    assert sum(abs(r["traces"] - s["traces"]) for r, s in zip(a, b)) <= 2


BAD = [
    ("out of range", ["feature", str(NUM)], "out of range"),
    ("far out of range", ["feature", "1000000"], "out of range"),
    ("negative index", ["feature", "-1"], "out of range"),
    ("no analysis", ["feature", "0", "--analysis", "{tmp}/nowhere"], "no feature analysis"),
    ("d_in mismatch", ["analyze", "--sae", "{saes}/narrow", "--store", "{resid}"], "SAE/model mismatch"),
    ("hookpoint mismatch", ["analyze", "--sae", "{saes}/eai", "--store", "{resid}"],
     "SAE/model mismatch"),
    ("model width mismatch", ["analyze", "--sae", "{saes}/narrow", "--corpus", "{corpus}",
                              "--model", "{model}"], "SAE/model mismatch"),
    ("no source", ["analyze", "--sae", "{saes}/run"], "exactly one of --store"),
    ("no regions", ["analyze", "--sae", "{saes}/run", "--store", "{noreg}"], "region labels"),
    ("bad option", ["analyze", "--sae", "{saes}/run", "--store", "{resid}", "--top_n", "0"],
     "--top_n"),
    ("bad vocab match", ["analyze", "--sae", "{saes}/run", "--store", "{resid}",
                         "--reason_vocab_match", "loose"], "--reason_vocab_match"),
    ("bad fdr", ["analyze", "--sae", "{saes}/run", "--store", "{resid}", "--think_fdr", "0"],
     "--think_fdr"),
]


@pytest.fixture(scope="module")
def analysed(tmp_path_factory, stores, saes, tiny_model, tokenizer):
    out = tmp_path_factory.mktemp("analysed") / "a"
    return analyze(AnalyzeConfig(sae=str(saes / "run"), store=str(stores["layers.1"]),
                                 out=str(out), progress=False, device="cpu", top_n=3, window=2,
                                 dashboard=False), model=tiny_model, tokenizer=tokenizer)


@pytest.fixture(scope="module")
def noreg(tmp_path_factory, stores):
    path = tmp_path_factory.mktemp("noreg") / "layers.1"
    shutil.copytree(stores["layers.1"], path)
    manifest = json.loads((path / "manifest.json").read_text())
    del manifest["regions"]
    (path / "manifest.json").write_text(json.dumps(manifest))
    return path


@pytest.mark.parametrize("name,args,message", BAD, ids=[b[0] for b in BAD])
def test_bad_input_is_one_line_exit_2_nothing_written(name, args, message, tmp_path, stores, saes,
                                                      analysed, noreg, corpus_path,
                                                      tiny_model_dir, capsys):
    subs = {"{saes}": str(saes), "{resid}": str(stores["layers.1"]), "{noreg}": str(noreg),
            "{corpus}": str(corpus_path), "{model}": str(tiny_model_dir), "{tmp}": str(tmp_path)}
    args = [next((a.replace(k, v) for k, v in subs.items() if k in a), a) for a in args]
    out = tmp_path / "out"
    if args[0] == "analyze":
        args += ["--out", str(out), "--model", str(tiny_model_dir), *OFF]
    elif "--analysis" not in args:
        args += ["--analysis", str(analysed)]
    rc, cap = _run_cli(capsys, args)
    assert rc == 2, name
    lines = [ln for ln in cap.err.strip().splitlines() if not ln.startswith("Loading weights")]
    assert len(lines) == 1 and lines[0].startswith("thinksae: error: ") and message in lines[0]
    assert not out.exists()


def test_store_without_regions_when_allowed(tmp_path, noreg, saes, tiny_model, tokenizer):
    out = analyze(AnalyzeConfig(sae=str(saes / "run"), store=str(noreg), out=str(tmp_path / "o"),
                                allow_no_regions=True, progress=False, device="cpu",
                                logit_lens=False, dashboard=False),
                  model=tiny_model, tokenizer=tokenizer)
    row = json.loads((out / "features.jsonl").read_text().splitlines()[0])
    assert "freq_all" in row and "think_rate_ratio" not in row and "reason_score" in row


def test_max_act_over_the_regions_the_sae_was_trained_on(tmp_path, stores, saes, tiny_model,
                                                         tokenizer):
    sae_dir = tmp_path / "r" / "layers.1"
    shutil.copytree(saes / "run" / "layers.1", sae_dir)
    write_report_card(sae_dir, {"training": {"regions": "think,answer"}})
    base = dict(store=str(stores["layers.1"]), progress=False, device="cpu", top_n=3, window=2,
                logit_lens=False, dashboard=False)
    out = analyze(AnalyzeConfig(sae=str(sae_dir), out=str(tmp_path / "o"), **base),
                  model=tiny_model, tokenizer=tokenizer)
    meta = json.loads((out / "analysis.json").read_text())
    assert meta["max_regions"] == ["think", "answer"]
    test = meta["think_test"]
    assert test["traces"] == 6 and test["fdr"] == 0.05 and 0 < test["features_tested"] <= NUM
    rows = [json.loads(line) for line in (out / "features.jsonl").read_text().splitlines()]
    assert test["features_tested"] == sum(r["think_p"] is not None for r in rows)
    assert test["think_specific"] == sum(bool(r["think_specific"]) for r in rows)
    store = ActivationStore(stores["layers.1"])
    names = store.manifest["regions"]
    regions = torch.from_numpy(store.labels("regions").astype("int64"))
    sinks = torch.from_numpy(store.sinks)  # never a maximum (the store's sink rule)
    keep = ((regions == names.index("think")) | (regions == names.index("answer"))) & ~sinks
    with torch.no_grad():
        x = load_sparsify(sae_dir).dense_acts(store.gather(torch.arange(len(regions)).numpy()))
    want = x[keep].max(0).values
    got = torch.tensor([r["max_act"] for r in rows], dtype=torch.float64)
    torch.testing.assert_close(got, want.double().clamp_min(0), rtol=1e-4, atol=1e-6)
    assert (x.max(0).values > want + 1e-3).any()  # elsewhere (prompt, special) some are larger
    # without a report card: every token, as before
    plain = analyze(AnalyzeConfig(sae=str(saes / "run"), out=str(tmp_path / "p"), **base),
                    model=tiny_model, tokenizer=tokenizer)
    assert json.loads((plain / "analysis.json").read_text())["max_regions"] == "all"
    rows = [json.loads(line) for line in (plain / "features.jsonl").read_text().splitlines()]
    torch.testing.assert_close(torch.tensor([r["max_act"] for r in rows], dtype=torch.float64),
                               x[~sinks].max(0).values.double().clamp_min(0), rtol=1e-4,
                               atol=1e-6)
