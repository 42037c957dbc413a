"""torchrun with 2 CPU ranks (gloo) takes the same steps as one process on the same global batch."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

SCRIPT = r'''
import sys
import torch
torch.set_num_threads(1)
from thinksae.sae import SaeConfig
from thinksae.train import SyntheticActivations, TrainConfig, train
from thinksae.cli import exit_process

cfg = TrainConfig(
    out=sys.argv[1], sae=SaeConfig(expansion_factor=4, k=4), batch_size=128, max_tokens=8 * 128,
    lr=3e-3, lr_warmup_steps=2, auxk_alpha=1 / 32, dead_feature_threshold=256,
    normalize_inputs=True, dtype="float32", device="cpu", log_every=2, save_every=3,
    progress=False, auxk_norm=sys.argv[2],
)
train(cfg, source=SyntheticActivations(d_in=32, num_tokens=2048, num_features=64, active=3))
exit_process(0)  # as `python -m thinksae` ends a torchrun rank
'''

pytestmark = pytest.mark.slow


def _env() -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for key in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    return env


@pytest.mark.parametrize("auxk_norm", ["x", "residual"])
def test_two_ranks_match_one_process(tmp_path, auxk_norm):
    script = tmp_path / "ddp_script.py"
    script.write_text(SCRIPT)
    one = subprocess.Popen([sys.executable, str(script), str(tmp_path / "one"), auxk_norm],
                           env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    two = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         str(script), str(tmp_path / "two"), auxk_norm],
        env=_env(), capture_output=True, text=True, timeout=180,
    )
    assert two.returncode == 0, two.stderr[-3000:]
    _, err = one.communicate(timeout=120)
    assert one.returncode == 0, err

    a = load_file(str(tmp_path / "one" / "synthetic" / "sae.safetensors"))
    b = load_file(str(tmp_path / "two" / "synthetic" / "sae.safetensors"))
    for name in a:
        torch.testing.assert_close(b[name], a[name], rtol=1e-4, atol=1e-5, msg=name)

    def rows(run: str) -> list[dict]:
        path = Path(tmp_path / run / "synthetic" / "metrics.jsonl")
        return [json.loads(line) for line in path.read_text().splitlines()]

    r1, r2 = rows("one"), rows("two")
    assert [r["step"] for r in r1] == [r["step"] for r in r2] == [2, 4, 6, 8]
    for x, y in zip(r1, r2, strict=True):
        assert y["fvu"] == pytest.approx(x["fvu"], rel=1e-4)
        assert y["auxk"] == pytest.approx(x["auxk"], rel=1e-3, abs=1e-7)
        assert (y["l0"], y["dead_pct"], y["tokens"]) == (x["l0"], x["dead_pct"], x["tokens"])
    card1 = json.loads((tmp_path / "one" / "synthetic" / "thinksae.json").read_text())
    card2 = json.loads((tmp_path / "two" / "synthetic" / "thinksae.json").read_text())
    assert card2["training"]["world_size"] == 2 and card1["training"]["world_size"] == 1
    assert card2["training"]["input_scale"] == pytest.approx(card1["training"]["input_scale"])
    assert any(r["auxk"] > 0 for r in r1)  # the AuxK path was exercised


def test_exit_process_skips_the_teardown_only_under_torchrun():
    """One process: a normal exit (SystemExit, atexit runs); a torchrun rank: streams flushed, the
    code kept, the interpreter's teardown (atexit) skipped."""
    code = ("import atexit; from thinksae.cli import exit_process; "
            "atexit.register(lambda: print('teardown', flush=True)); print('trained'); exit_process(3)")
    plain = subprocess.run([sys.executable, "-c", code], env=_env(), capture_output=True, text=True)
    rank = subprocess.run([sys.executable, "-c", code], env={**_env(), "WORLD_SIZE": "2"},
                          capture_output=True, text=True)
    assert (plain.returncode, plain.stdout.split()) == (3, ["trained", "teardown"])
    assert (rank.returncode, rank.stdout.split()) == (3, ["trained"])
