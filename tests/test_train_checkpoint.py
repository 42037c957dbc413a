"""Checkpoints: exact round trip of optimiser and RNG state; a swap cut short is recovered."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from thinksae.errors import ThinksaeError
from thinksae.train.checkpoint import (
    CHECKPOINT,
    find_checkpoint,
    load_checkpoint,
    remove_checkpoints,
    save_checkpoint,
    set_rng_state,
)


def _adam(seed: int = 0):
    torch.manual_seed(seed)
    params = [torch.nn.Parameter(torch.randn(5, 3)), torch.nn.Parameter(torch.randn(3))]
    opt = torch.optim.Adam(params, lr=1e-2, fused=True)
    for _ in range(3):
        for p in params:
            p.grad = torch.randn_like(p)
        opt.step()
    return params, opt


def test_round_trip_restores_optimizer_rng_and_state(tmp_path):
    params, opt = _adam()
    counters = torch.arange(7, dtype=torch.int64)
    torch.manual_seed(123)
    np.random.seed(5)
    random.seed(9)
    save_checkpoint(tmp_path, {"w": params[0].detach()}, opt.state_dict(),
                    {"step": 3, "note": "x"}, {"since_fired": counters})
    expected = (torch.rand(4), np.random.rand(3), random.random())
    torch.manual_seed(0), np.random.seed(0), random.seed(0)

    ck = load_checkpoint(find_checkpoint(tmp_path))
    assert ck.state["step"] == 3 and ck.state["note"] == "x"
    assert torch.equal(ck.sae["w"], params[0].detach())
    assert torch.equal(ck.tensors["since_fired"], counters)
    fresh_params, fresh = _adam(seed=1)
    fresh.load_state_dict(ck.optimizer)
    a, b = opt.state_dict(), fresh.state_dict()
    assert a["param_groups"] == b["param_groups"]
    for i in a["state"]:
        for name, value in a["state"][i].items():
            assert torch.equal(value, b["state"][i][name]), name
    set_rng_state(ck.state["rng"], ck.tensors)
    assert torch.equal(torch.rand(4), expected[0])
    assert np.array_equal(np.random.rand(3), expected[1])
    assert random.random() == expected[2]


def test_new_checkpoint_replaces_old_and_leaves_no_temporaries(tmp_path):
    _, opt = _adam()
    for step in (1, 2):
        save_checkpoint(tmp_path, {"w": torch.full((2,), float(step))}, opt.state_dict(),
                        {"step": step}, {})
    assert sorted(p.name for p in tmp_path.iterdir()) == [CHECKPOINT]
    assert load_checkpoint(find_checkpoint(tmp_path)).state["step"] == 2
    remove_checkpoints(tmp_path)
    assert find_checkpoint(tmp_path) is None


def test_swap_cut_short_falls_back_to_the_complete_checkpoint(tmp_path):
    _, opt = _adam()
    save_checkpoint(tmp_path, {"w": torch.ones(2)}, opt.state_dict(), {"step": 1}, {})
    # killed after moving the old checkpoint aside, before the new one was renamed in
    os.replace(tmp_path / CHECKPOINT, tmp_path / ".checkpoint.old")
    (tmp_path / ".checkpoint.tmp").mkdir()
    (tmp_path / ".checkpoint.tmp" / "sae.safetensors").write_bytes(b"half")
    assert load_checkpoint(find_checkpoint(tmp_path)).state["step"] == 1
    # killed while a fresh directory named like the checkpoint was still incomplete
    os.replace(tmp_path / CHECKPOINT, tmp_path / ".checkpoint.old")
    (tmp_path / CHECKPOINT).mkdir()
    assert load_checkpoint(find_checkpoint(tmp_path)).state["step"] == 1
    save_checkpoint(tmp_path, {"w": torch.ones(2)}, opt.state_dict(), {"step": 2}, {})
    assert sorted(p.name for p in tmp_path.iterdir()) == [CHECKPOINT]


def test_unreadable_checkpoint_is_a_clear_error(tmp_path):
    _, opt = _adam()
    path = save_checkpoint(tmp_path, {"w": torch.ones(2)}, opt.state_dict(), {"step": 1}, {})
    (path / "optimizer.safetensors").write_bytes(b"garbage")
    with pytest.raises(ThinksaeError, match="cannot read checkpoint"):
        load_checkpoint(path)


SAVER = r'''
import sys, torch
from thinksae.train.checkpoint import save_checkpoint
p = torch.nn.Parameter(torch.zeros(256, 256))
opt = torch.optim.Adam([p])
p.grad = torch.ones_like(p)
opt.step()
step = 0
while True:
    step += 1
    save_checkpoint(sys.argv[1], {"w": torch.full((256, 256), float(step))}, opt.state_dict(),
                    {"step": step}, {"c": torch.full((1000,), step)})
'''


@pytest.mark.slow
def test_sigkill_during_saves_always_leaves_a_whole_checkpoint(tmp_path):
    script = tmp_path / "saver.py"
    script.write_text(SAVER)
    for delay in (0.05, 0.3, 0.55):
        proc = subprocess.Popen([sys.executable, str(script), str(tmp_path / "run")])
        deadline = time.monotonic() + 30
        while not (tmp_path / "run" / CHECKPOINT).exists() and time.monotonic() < deadline:
            time.sleep(0.005)
        time.sleep(delay)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        ck = load_checkpoint(find_checkpoint(tmp_path / "run"))
        step = ck.state["step"]
        assert torch.equal(ck.sae["w"], torch.full((256, 256), float(step)))
        assert torch.equal(ck.tensors["c"], torch.full((1000,), step))
        assert json.loads((ck.path / "manifest.json").read_text())["step"] == step
