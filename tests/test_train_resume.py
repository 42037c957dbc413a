"""A training run killed with SIGKILL and run again ends bit-identical to an uninterrupted one."""

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

SCRIPT = r'''
import sys, time
import torch
torch.set_num_threads(1)
torch.use_deterministic_algorithms(True)
from thinksae.sae import SaeConfig
from thinksae.train import SyntheticActivations, TrainConfig, train


class Slow(SyntheticActivations):
    """Sleeps before each batch so that the parent can kill mid-run."""

    def iter_batches(self, *args, **kwargs):
        for x in super().iter_batches(*args, **kwargs):
            time.sleep(float(sys.argv[2]))
            yield x


cfg = TrainConfig(
    out=sys.argv[1], sae=SaeConfig(expansion_factor=4, k=4), batch_size=64, epochs=2,
    lr_warmup_steps=3, lr_decay="cosine", auxk_alpha=1 / 32, dead_feature_threshold=192,
    normalize_inputs=True, b_dec_init="geometric_median", dtype="float32", device="cpu",
    log_every=3, save_every=2, progress=False,
)
train(cfg, source=Slow(d_in=32, num_tokens=1280, num_features=64, active=3))
'''

pytestmark = pytest.mark.slow


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


def _kill_at(proc: subprocess.Popen, sae_dir: Path, step: int, sig=signal.SIGKILL,
             timeout: float = 60) -> int:
    """Send ``sig`` to ``proc`` once its checkpoint has reached ``step``; returns the step seen."""
    deadline = time.monotonic() + timeout
    while (seen := _checkpoint_step(sae_dir)) < step:
        if proc.poll() is not None:
            raise AssertionError(f"training ended before step {step}: {proc.stderr.read()}")
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"no checkpoint at step {step} in {timeout} s")
        time.sleep(0.01)
    time.sleep(0.03)  # land somewhere inside a later step
    os.kill(proc.pid, sig)
    proc.wait(timeout=30)
    assert proc.returncode != 0
    return seen


def _finish(proc: subprocess.Popen) -> str:
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    return out


def test_interrupt_and_sigkill_then_resume_is_bit_identical(tmp_path):
    script = tmp_path / "train_script.py"
    script.write_text(SCRIPT)
    clean_out, killed_out = tmp_path / "clean", tmp_path / "killed"
    clean = _run(script, clean_out, 0.0)
    first = _run(script, killed_out, 0.03)
    sae_dir = killed_out / "synthetic"
    # Ctrl-C: the step in progress finishes and is checkpointed, whatever save_every says
    seen = _kill_at(first, sae_dir, 5, sig=signal.SIGINT)
    assert "KeyboardInterrupt" in first.stderr.read()
    last_logged = json.loads((sae_dir / "metrics.jsonl").read_text().splitlines()[-1])["step"]
    assert _checkpoint_step(sae_dir) >= max(seen, last_logged)
    assert not (sae_dir / "sae.safetensors").exists()
    second = _run(script, killed_out, 0.03)
    assert _kill_at(second, sae_dir, 26) >= 26  # second epoch, SIGKILL
    step = _checkpoint_step(sae_dir)
    said = [x for x in _finish(_run(script, killed_out, 0.0)).splitlines() if "resuming" in x]
    assert said == [f"thinksae: resuming {sae_dir} from its checkpoint at step {step} "
                    f"({step * 64:,} tokens seen)"]
    assert "resuming" not in _finish(clean)

    a = load_file(str(clean_out / "synthetic" / "sae.safetensors"))
    b = load_file(str(sae_dir / "sae.safetensors"))
    assert a.keys() == b.keys() == {"encoder.weight", "encoder.bias", "W_dec", "b_dec"}
    for name in a:
        assert torch.equal(a[name], b[name]), name
    assert not (sae_dir / "checkpoint").exists()

    def rows(d):
        lines = (d / "synthetic" / "metrics.jsonl").read_text().splitlines()
        return [{k: v for k, v in json.loads(line).items() if k not in ("time", "tokens_per_s")}
                for line in lines]

    assert rows(clean_out) == rows(killed_out)
    assert [r["step"] for r in rows(clean_out)] == list(range(3, 41, 3)) + [40]
    card_a = json.loads((clean_out / "synthetic" / "thinksae.json").read_text())
    card_b = json.loads((sae_dir / "thinksae.json").read_text())
    assert card_a["metrics"] == card_b["metrics"]
    assert card_b["training"]["steps"] == 40 and card_b["training"]["tokens_seen"] == 40 * 64
