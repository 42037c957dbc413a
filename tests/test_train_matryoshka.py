"""`thinksae train --architecture matryoshka_batchtopk` on a tiny store: per-prefix FVU in the
metrics, SAELens conversion both ways, one-line refusals, and a SIGKILLed run that resumes to the
same weights as an uninterrupted one."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from thinksae import atomic
from thinksae.cli import main
from thinksae.sae import MatryoshkaBatchTopKSae, load_sae
from thinksae.store.shard_parts import FORMAT, MANIFEST
from thinksae.store.shards import write_shard
from thinksae.train import SyntheticActivations

WIDTHS = "8,32,64"


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    """A one-shard store of 640 synthetic tokens of width 16, in the layout harvest writes."""
    path = tmp_path_factory.mktemp("store")
    data = SyntheticActivations(d_in=16, num_tokens=640, num_features=48, active=3).data
    n = len(data)
    write_shard(path / "shard-00000.safetensors", {
        "activations": data, "token_ids": torch.arange(n, dtype=torch.int32),
        "regions": torch.ones(n, dtype=torch.uint8), "behaviours": torch.zeros(n, dtype=torch.uint8),
        "doc_index": torch.zeros(n, dtype=torch.int32), "positions": torch.arange(n, dtype=torch.int32),
    })
    atomic.write_json(path / MANIFEST, {
        "format": FORMAT, "model": "tiny", "hookpoint": "layers.2", "tokenizer_hash": "t",
        "corpus_hash": "c", "dtype": "float32", "d_in": 16, "num_tokens": n,
        "shards": [{"file": "shard-00000.safetensors", "num_tokens": n}], "complete": True,
        "regions": ["prompt", "think", "answer", "special"],
    })
    return path


def _train_args(out, store, *extra):
    return ["train", "--store", str(store), "--out", str(out), "--architecture",
            "matryoshka_batchtopk", "--num_latents", "64", "-k", "4", "--batch_size", "32",
            "--lr", "3e-3", "--lr_warmup_steps", "2", "--epochs", "2", "--dtype", "float32",
            "--device", "cpu", "--log_every", "5", "--dead_feature_threshold", "320",
            "--noprogress", *extra]


def test_train_logs_prefix_fvu_and_converts_to_saelens_and_back(store, tmp_path):
    sae_lens = pytest.importorskip("sae_lens")
    assert main(_train_args(tmp_path / "run", store, "--matryoshka_widths", WIDTHS)) == 0
    sae_dir = tmp_path / "run" / "layers.2"
    rows = [json.loads(x) for x in (sae_dir / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["step"] == 40 and rows[-1]["fvu"] < rows[0]["fvu"]
    last = rows[-1]
    assert last["fvu_prefix_8"] > last["fvu_prefix_32"] > last["fvu"]  # fewer latents, worse
    card = json.loads((sae_dir / "thinksae.json").read_text())
    assert card["metrics"]["fvu_prefix_8"] == last["fvu_prefix_8"]
    sae = load_sae(sae_dir)
    assert type(sae) is MatryoshkaBatchTopKSae and sae.prefix_widths == (8, 32, 64)
    assert float(sae.threshold) > 0

    assert main(["convert", "--src", str(tmp_path / "run"), "--out", str(tmp_path / "sl")]) == 0
    theirs = sae_lens.SAE.load_from_disk(str(tmp_path / "sl"))
    x = SyntheticActivations(d_in=16, num_tokens=50, num_features=48, active=3, seed=9).data
    with torch.no_grad():
        feats = theirs.encode(x)
        torch.testing.assert_close(feats, sae.dense_acts(x), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(theirs.decode(feats), sae.decode(*sae.encode(x)),
                                   rtol=1e-5, atol=1e-5)
    assert main(["convert", "--src", str(tmp_path / "sl"), "--out", str(tmp_path / "back"),
                 "--to", "sparsify"]) == 0
    back = load_sae(tmp_path / "back")
    assert type(back) is MatryoshkaBatchTopKSae and back.prefix_widths == (8, 32, 64)
    assert torch.equal(back.dense_acts(x), sae.dense_acts(x))


@pytest.mark.parametrize("extra, message", [
    (["--matryoshka_widths", "8,32"], "must end at the number of latents, 64"),
    (["--matryoshka_widths", "32,8,64"], "strictly increasing"),
    ([], "needs --matryoshka_widths"),
])
def test_bad_widths_one_line_exit_2_nothing_written(store, tmp_path, capsys, extra, message):
    assert main(_train_args(tmp_path / "bad", store, *extra)) == 2
    err = capsys.readouterr().err
    assert err.startswith("thinksae: error: ") and message in err and err.count("\n") == 1
    assert not (tmp_path / "bad").exists()


SCRIPT = r'''
import sys, time
import torch
torch.set_num_threads(1)
torch.use_deterministic_algorithms(True)
from thinksae.sae import SaeConfig
from thinksae.train import SyntheticActivations, TrainConfig, train


class Slow(SyntheticActivations):
    def iter_batches(self, *args, **kwargs):
        for x in super().iter_batches(*args, **kwargs):
            time.sleep(float(sys.argv[2]))
            yield x


cfg = TrainConfig(
    out=sys.argv[1], sae=SaeConfig(num_latents=64, k=4, architecture="matryoshka_batchtopk",
                                   matryoshka_widths="8,32,64"),
    batch_size=32, epochs=2, lr=3e-3, lr_warmup_steps=3, lr_decay="cosine", auxk_alpha=1 / 32,
    dead_feature_threshold=96, dtype="float32", device="cpu", log_every=3, save_every=2,
    progress=False,
)
train(cfg, source=Slow(d_in=16, num_tokens=480, num_features=48, active=3))
'''


def _run(script: Path, out: Path, delay: float) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    env.pop("WORLD_SIZE", None)
    return subprocess.Popen([sys.executable, str(script), str(out), str(delay)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _checkpoint_step(sae_dir: Path) -> int:
    try:
        return json.loads((sae_dir / "checkpoint" / "manifest.json").read_text())["step"]
    except (OSError, ValueError, KeyError):
        return -1


@pytest.mark.slow
def test_sigkill_then_resume_ends_with_the_same_weights(tmp_path):
    script = tmp_path / "train_script.py"
    script.write_text(SCRIPT)
    clean = _run(script, tmp_path / "clean", 0.0)
    killed = _run(script, tmp_path / "killed", 0.03)
    sae_dir = tmp_path / "killed" / "synthetic"
    deadline = time.monotonic() + 60
    while _checkpoint_step(sae_dir) < 18:  # into the second epoch (15 steps each)
        assert killed.poll() is None, killed.stderr.read()
        assert time.monotonic() < deadline, "no checkpoint at step 18 in 60 s"
        time.sleep(0.01)
    time.sleep(0.03)
    os.kill(killed.pid, signal.SIGKILL)
    killed.wait(timeout=30)
    assert killed.returncode != 0 and not (sae_dir / "sae.safetensors").exists()
    step = _checkpoint_step(sae_dir)
    again = _run(script, tmp_path / "killed", 0.0)
    out, err = again.communicate(timeout=120)
    assert again.returncode == 0, err
    assert f"resuming {sae_dir} from its checkpoint at step {step}" in out
    _, err = clean.communicate(timeout=120)
    assert clean.returncode == 0, err

    a = load_file(str(tmp_path / "clean" / "synthetic" / "sae.safetensors"))
    b = load_file(str(sae_dir / "sae.safetensors"))
    assert a.keys() == b.keys() == {"encoder.weight", "encoder.bias", "W_dec", "b_dec", "threshold"}
    for name in a:
        assert torch.equal(a[name], b[name]), name

    def rows(d: Path) -> list[dict]:
        lines = (d / "synthetic" / "metrics.jsonl").read_text().splitlines()
        return [{k: v for k, v in json.loads(line).items() if k not in ("time", "tokens_per_s")}
                for line in lines]

    assert rows(tmp_path / "clean") == rows(tmp_path / "killed")
    assert {"fvu_prefix_8", "fvu_prefix_32"} <= set(rows(tmp_path / "clean")[-1])
