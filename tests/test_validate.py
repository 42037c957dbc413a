"""`thinksae validate` on the tiny fixture with planted features: a pure token detector, a
feature that fires on a token only inside thinking, a feature whose decoder row drives a target
logit, the linear case where attribution equals the real ablation, and bad inputs."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from thinksae.annotations import refresh_dashboard
from thinksae.cli import main
from thinksae.features import AnalyzeConfig, analyze
from thinksae.sae import Sae, SaeConfig
from thinksae.sae.formats import save_sparsify
from thinksae.store import ActivationStore, HarvestConfig, harvest
from thinksae.store.shards import write_shard
from thinksae.validate import ValidateConfig, read_verdicts, validate
from thinksae.validate.stats import bootstrap, ratio, spearman

THE, IS, WAIT = 279, 374, 13824  # " the", " is", " Wait" in the R1 tokenizer
DETECTOR, THINK_ONLY, CAUSAL = 0, 1, 2
HELD = ["t0", "t2", "t4"]


def _card(sae_dir, store, hookpoint):
    (sae_dir / "thinksae.json").write_text(json.dumps({
        "hookpoint": hookpoint, "training": {"holdout": 0.5},
        "data": {"hash": store.hash, "heldout_traces": HELD}}))


def _plant_think_only(store_dir, direction):
    """Add ``direction`` to the stored activation of every " is" inside thinking."""
    store = ActivationStore(store_dir)
    think = store.manifest["regions"].index("think")
    for shard in store.manifest["shards"]:
        path = store_dir / shard["file"]
        t = load_file(str(path))
        hit = (t["token_ids"] == IS) & (t["regions"] == think)
        t["activations"][hit] += direction
        write_shard(path, t)


@pytest.fixture(scope="module")
def world(tmp_path_factory, corpus_path, tiny_model, tokenizer, one_thread):
    root = tmp_path_factory.mktemp("validate")
    cfg = HarvestConfig(model="tiny", corpus=str(corpus_path), hookpoint="embed_tokens,layers.3",
                        out=str(root / "store"), device="cpu", dtype="float32", docs_per_shard=3,
                        batch_size=3, progress=False)
    emb_dir, l3_dir = harvest(cfg, tiny_model, tokenizer)
    d = tiny_model.config.hidden_size
    u = torch.zeros(d)
    u[0] = 1.0  # embeddings are ~0.02 per dimension: u stands out
    _plant_think_only(emb_dir, u)
    emb = tiny_model.get_input_embeddings().weight.detach()
    sae = Sae(d, SaeConfig(num_latents=8, k=4))
    with torch.no_grad():
        sae.encoder.weight.zero_()
        sae.encoder.bias.fill_(-1.0)
        sae.b_dec.zero_()
        e = emb[THE] / emb[THE].norm()
        sae.encoder.weight[DETECTOR] = 10 * e / emb[THE].norm()  # 10 on " the", < 10·cos elsewhere
        sae.encoder.bias[DETECTOR] = -8.0
        sae.encoder.weight[THINK_ONLY] = 4 * u
        sae.encoder.bias[THINK_ONLY] = -2.0  # fires (≈ 2) only where u was added
        sae.encoder.bias[CAUSAL] = 1.0  # fires (1.0) on every token
        w = tiny_model.get_output_embeddings().weight.detach()[WAIT]
        sae.W_dec[CAUSAL] = 20 * w / w.norm()  # drives the " Wait" logit
    sae_dir = root / "sae" / "embed_tokens"
    save_sparsify(sae, sae_dir)
    store = ActivationStore(emb_dir)
    _card(sae_dir, store, "embed_tokens")
    analysis = root / "features"
    analyze(AnalyzeConfig(sae=str(sae_dir), store=str(emb_dir), out=str(analysis), min_fires=2,
                          logit_lens=False, progress=False, device="cpu", top_n=5, window=3),
            tokenizer=tokenizer)
    return {"root": root, "emb": emb_dir, "l3": l3_dir, "sae": sae_dir, "analysis": analysis}


def _cfg(world, **kw):
    base = dict(analysis=str(world["analysis"]), sae=str(world["sae"]), store=str(world["emb"]),
                top=0, features="0,1,2", bootstrap=200, batch_size=3, progress=False,
                device="cpu", dtype="float32")
    return ValidateConfig(**{**base, **kw})


@pytest.fixture(scope="module")
def result(world, tiny_model, tokenizer):
    return validate(_cfg(world), tiny_model, tokenizer)


def test_pure_token_detector_is_called_a_token_detector(result):
    row = {r["feature"]: r for r in result.rows}[DETECTOR]
    assert row["triggers"] == [THE]
    assert row["context_ratio"] == pytest.approx(1.0, abs=1e-6)  # same vector in any context
    assert row["context_passed"] is False
    assert row["injection_ratio"] == pytest.approx(1.0, abs=1e-5)  # fires as well in prose
    assert row["injection_passed"] is False
    assert row["verdict"] == "token detector"


def test_think_only_feature_passes_the_context_test(result):
    row = {r["feature"]: r for r in result.rows}[THINK_ONLY]
    assert row["triggers"] == [IS]
    assert row["context_other_mean"] == 0 and row["context_think_mean"] > 1
    assert row["context_only_in_think"] and row["context_passed"] is True
    assert row["injection_passed"] is True  # the model itself never adds u: silent in prose
    assert row["verdict"] != "token detector"


def test_decoder_row_on_a_target_logit_is_causal(result):
    row = {r["feature"]: r for r in result.rows}[CAUSAL]
    assert row["target_positions"] > 0 and row["ablate_fired_positions"] > 0
    assert row["ablate_dlogp"] < -0.05 and row["ablate_dlogp_hi"] < 0  # removing it lowers " Wait"
    assert row["causal"] is True
    others = {r["feature"]: r for r in result.rows}
    assert others[DETECTOR]["ablate_kl"] < row["ablate_kl"]


def test_outputs_summary_and_reader(result, world):
    summary = json.loads((world["analysis"] / "validate" / "validation.json").read_text())
    assert summary["features"] == 3 and sum(summary["counts"].values()) == 3
    assert summary["comparisons"] == 12 and summary["traces"] == len(HELD)
    assert summary["thresholds"]["min_context_ratio"] == 2.0
    verdicts = read_verdicts(world["analysis"])
    assert set(verdicts) == {0, 1, 2} and verdicts[0]["verdict"] == "token detector"
    index = world["analysis"] / "dashboard" / "index.html"
    assert '"verdict": "token detector"' not in index.read_text()  # validate: only its folder
    assert refresh_dashboard(world["analysis"]) == index  # what `thinksae validate` does after it
    index = index.read_text()
    assert '"verdict": "token detector"' in index
    page = (world["analysis"] / "dashboard" / f"feature-{CAUSAL}.html").read_text()
    assert 'id="verdict"' in page


def test_feature_card_prints_the_verdict(result, world, capsys):
    assert main(["feature", str(DETECTOR), "--analysis", str(world["analysis"])]) == 0
    assert "verdict: token detector" in capsys.readouterr().out


def test_attribution_equals_ablation_where_the_model_is_linear(world, tiny_model, tokenizer):
    """Hookpoint = last block's output, final norm replaced by the identity, metric = the target
    logit: the metric is linear in every latent, so a·∂m/∂a is the ablation effect exactly."""
    model = copy.deepcopy(tiny_model)
    model.model.norm = torch.nn.Identity()
    d = model.config.hidden_size
    torch.manual_seed(3)
    sae = Sae(d, SaeConfig(num_latents=12, k=4))
    with torch.no_grad():
        sae.encoder.bias.add_(0.5)
    sae_dir = world["root"] / "sae-l3" / "layers.3"
    save_sparsify(sae, sae_dir)
    _card(sae_dir, ActivationStore(world["l3"]), "layers.3")
    analysis = world["root"] / "features-l3"
    analyze(AnalyzeConfig(sae=str(sae_dir), store=str(world["l3"]), out=str(analysis),
                          min_fires=1, logit_lens=False, progress=False, device="cpu",
                          dashboard=False), tokenizer=tokenizer)
    res = validate(_cfg(world, analysis=str(analysis), sae=str(sae_dir), store=str(world["l3"]),
                        features="0", metric="logit", attribution_top=5), model, tokenizer)
    checked = res.summary["attribution"]["checked"]
    assert len(checked) >= 3
    for c in checked:
        assert c["attribution"] == pytest.approx(c["ablation"], rel=1e-3, abs=1e-3)
    assert res.summary["attribution"]["spearman"] == pytest.approx(1.0)


def test_bootstrap_interval_and_spearman_by_hand():
    s, n = np.array([1.0, 3.0]), np.array([1.0, 1.0])
    value, lo, hi = bootstrap({"num": s, "den": n}, ratio, 400, 0)
    assert value == 2.0 and lo == 1.0 and hi == 3.0  # resamples: {1,1}, {1,3}, {3,3}
    assert spearman([1, 2, 3, 4], [10, 20, 40, 30]) == pytest.approx(0.8)


def _fails(capsys, args):
    rc = main(["validate", *args, "--progress", "false", "--device", "cpu", "--dtype", "float32"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1
    return err


def test_bad_inputs_one_line_exit_2(world, tiny_model_dir, capsys, tmp_path):
    common = ["--analysis", str(world["analysis"]), "--store", str(world["emb"]),
              "--model", str(tiny_model_dir), "--top", "0"]
    err = _fails(capsys, [*common, "--sae", str(world["sae"]), "--features", "99"])
    assert "unknown feature 99" in err
    err = _fails(capsys, [*common, "--sae", str(world["sae"]), "--features", "0",
                          "--targets", " Thereforeness"])
    assert "is not one token" in err
    bare = tmp_path / "bare" / "embed_tokens"
    bare.mkdir(parents=True)
    for f in ("cfg.json", "sae.safetensors"):
        (bare / f).write_bytes((world["sae"] / f).read_bytes())
    err = _fails(capsys, [*common, "--sae", str(bare), "--features", "0"])
    assert "holdout" in err


def test_seed_study_preset_validates_a_sparsify_sae_at_an_mlp_hookpoint(
        world, corpus_path, tiny_model, tokenizer, tmp_path):
    """The preset's `validate` section is a valid ValidateConfig, and validation runs on a small
    SAE in EleutherAI's sparsify layout at `layers.N.mlp` with no report card (split: all)."""
    import re
    from pathlib import Path

    import yaml
    from safetensors.torch import save_file

    import thinksae.pipeline

    preset = Path(thinksae.pipeline.__file__).parent / "presets" / "seed-study.yaml"
    spec = yaml.safe_load(preset.read_text())
    assert re.fullmatch(r"layers\.\d+\.mlp", spec["hookpoint"])
    assert spec["sae"] == "EleutherAI/sae-DeepSeek-R1-Distill-Qwen-1.5B-65k"
    options = spec["validate"]
    assert options["features"] == "32456,6252,31146" and options["split"] == "all"
    store_dir = harvest(HarvestConfig(model="tiny", corpus=str(corpus_path),
                                      hookpoint="layers.1.mlp", out=str(tmp_path / "store"),
                                      device="cpu", dtype="float32", batch_size=3,
                                      progress=False), tiny_model, tokenizer)[0]
    sae_dir = tmp_path / "eai" / "layers.1.mlp"
    sae_dir.mkdir(parents=True)
    d, n = tiny_model.config.hidden_size, 64
    (sae_dir / "cfg.json").write_text(json.dumps({
        "expansion_factor": 1, "normalize_decoder": True, "num_latents": n, "k": 8,
        "multi_topk": False, "skip_connection": False, "d_in": d}))
    torch.manual_seed(5)
    w = torch.nn.functional.normalize(torch.randn(n, d), dim=1)
    save_file({"encoder.weight": w.clone(), "encoder.bias": torch.zeros(n), "W_dec": w.clone(),
               "b_dec": torch.zeros(d)}, str(sae_dir / "sae.safetensors"))
    analysis = tmp_path / "features"
    analyze(AnalyzeConfig(sae=str(sae_dir), store=str(store_dir), out=str(analysis), min_fires=2,
                          logit_lens=False, progress=False, device="cpu", dashboard=False),
            tokenizer=tokenizer)
    options = {**options, "features": "3", "top": 1, "max_traces": 2, "bootstrap": 50,
               "attribution_top": 3}
    cfg = ValidateConfig(analysis=str(analysis), sae=str(sae_dir.parent), store=str(store_dir),
                         progress=False, device="cpu", dtype="float32", **options)
    res = validate(cfg, tiny_model, tokenizer)
    assert res.summary["hookpoint"] == "layers.1.mlp" and res.summary["traces"] == 2
    assert 3 in {r["feature"] for r in res.rows} and all(r["verdict"] for r in res.rows)
