"""`thinksae train` and `thinksae convert` from the command line on the tiny fixture."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from thinksae.cli import main
from thinksae.sae import Sae, load_sae
from thinksae.sae.formats import load_sparsify, save_sparsify
from thinksae.store import HarvestConfig, harvest


@pytest.fixture(scope="module")
def store(tmp_path_factory, corpus_path, tiny_model, tokenizer) -> Path:
    cfg = HarvestConfig(model="tiny", corpus=str(corpus_path), hookpoint="layers.2",
                        out=str(tmp_path_factory.mktemp("store")), device="cpu", dtype="float32",
                        progress=False)
    (path,) = harvest(cfg, tiny_model, tokenizer)
    return path


def _train_args(out, *extra):
    return ["train", "--out", str(out), "--expansion_factor", "2", "-k", "4", "--batch_size", "32",
            "--lr", "3e-3", "--lr_warmup_steps", "2", "--epochs", "2", "--dtype", "float32",
            "--device", "cpu", "--log_every", "2", "--noprogress", *extra]


def test_a_truncated_shard_is_refused_before_anything_is_written(store, tmp_path, capsys):
    broken = tmp_path / "store"
    shutil.copytree(store, broken)
    shard = sorted(broken.glob("shard-*.safetensors"))[-1]
    shard.write_bytes(shard.read_bytes()[:-100])
    out = tmp_path / "run"
    assert main(_train_args(out, "--store", str(broken))) == 2
    err = capsys.readouterr().err
    assert err.startswith("thinksae: error: shard") and "truncated" in err and err.count("\n") == 1
    assert not out.exists()


def test_train_from_store_on_the_command_line(store, tmp_path, capsys):
    assert main(_train_args(tmp_path / "run", "--store", str(store))) == 0
    sae_dir = tmp_path / "run" / "layers.2"
    assert capsys.readouterr().out.strip().endswith(str(sae_dir))
    card = json.loads((sae_dir / "thinksae.json").read_text())
    assert card["hookpoint"] == "layers.2" and card["k"] == 4 and card["num_latents"] == 128
    assert card["expansion_factor"] == 2.0
    assert card["data"]["tokenizer_hash"] and card["training"]["tokens_seen"] > 0
    rows = [json.loads(x) for x in (sae_dir / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["fvu"] < rows[0]["fvu"]
    assert json.loads((sae_dir / "train_config.json").read_text())["store"] == str(store)


def test_train_on_the_fly_from_a_model_directory(tiny_model_dir, corpus_path, tmp_path):
    args = _train_args(tmp_path / "fly", "--num_latents", "96", "--model", str(tiny_model_dir), "--corpus",
                       str(corpus_path), "--hookpoint", "layers.1.mlp", "--model_dtype", "float32")
    assert main(args) == 0
    sae = load_sparsify(tmp_path / "fly" / "layers.1.mlp")
    assert sae.d_in == 64 and sae.cfg.k == 4 and sae.num_latents == 96
    card = json.loads((tmp_path / "fly" / "layers.1.mlp" / "thinksae.json").read_text())
    assert card["num_latents"] == 96 and card["expansion_factor"] == 1.5  # effective, not the flag


@pytest.mark.parametrize("extra, message", [
    (["-k", "0"], "k must be >= 1"),
    (["-k", "500"], "k = 500 is more than the 128 latents"),
    (["--lr", "-1"], "learning rate must be > 0"),
    (["--hookpoint", "layers.3"], "holds hookpoint layers.2, not layers.3"),
])
def test_bad_train_options_one_line_exit_2_nothing_written(store, tmp_path, capsys, extra,
                                                            message):
    assert main(_train_args(tmp_path / "bad", "--store", str(store), *extra)) == 2
    err = capsys.readouterr().err
    assert err.startswith("thinksae: error: ") and message in err and err.count("\n") == 1
    assert not (tmp_path / "bad").exists()


def test_missing_store_is_one_line(tmp_path, capsys):
    assert main(_train_args(tmp_path / "bad", "--store", str(tmp_path / "nowhere"))) == 2
    assert "no activation store" in capsys.readouterr().err


def test_convert_to_saelens_and_back(tmp_path, capsys):
    torch.manual_seed(0)
    from thinksae.sae import SaeConfig

    sae = Sae(16, SaeConfig(expansion_factor=2, k=3))
    save_sparsify(sae, tmp_path / "run" / "layers.4")
    assert main(["convert", "--src", str(tmp_path / "run"), "--out", str(tmp_path / "sl")]) == 0
    assert json.loads((tmp_path / "sl" / "cfg.json").read_text())["metadata"]["hook_name"] == \
        "layers.4"
    assert main(["convert", "--src", str(tmp_path / "sl"), "--out", str(tmp_path / "back"),
                 "--to", "sparsify"]) == 0
    x = torch.randn(10, 16)
    back = load_sae(tmp_path / "back")
    torch.testing.assert_close(back.dense_acts(x), sae.dense_acts(x))
    assert main(["convert", "--src", str(tmp_path / "sl"), "--out", str(tmp_path / "back")]) == 2
    assert "already holds an SAE" in capsys.readouterr().err
    assert main(["convert", "--src", str(tmp_path / "sl"), "--out", str(tmp_path / "x"),
                 "--to", "onnx"]) == 2
