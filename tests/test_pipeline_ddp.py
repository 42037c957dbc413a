"""`torchrun -m thinksae run`: rank 0 runs every stage, the other ranks join only the training."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import yaml

pytestmark = pytest.mark.slow


def test_torchrun_two_ranks_train_together_and_rank_0_reports(tmp_path, tiny_model_dir,
                                                               corpus_path):
    config = {
        "name": "ddp", "out": str(tmp_path / "run"), "model": str(tiny_model_dir),
        "hookpoint": "layers.1", "device": "cpu", "dtype": "float32",
        "corpus": {"traces": str(corpus_path)},
        "train": {"sae": {"num_latents": 128, "k": 8}, "batch_size": 64, "epochs": 2,
                  "lr_warmup_steps": 2},
        "splice": None, "analyze": {"logit_lens": False, "min_fires": 2}, "steer": None,
        "monitor": None,
    }
    (tmp_path / "ddp.yaml").write_text(yaml.safe_dump(config))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for key in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    done = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         "-m", "thinksae", "run", str(tmp_path / "ddp.yaml"), "--progress", "false"],
        env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    card = json.loads((tmp_path / "run/sae/layers.1/thinksae.json").read_text())
    assert card["training"]["world_size"] == 2
    assert (tmp_path / "run/index.html").is_file()
    assert json.loads((tmp_path / "run/sae/stage.json").read_text())["status"] == "done"
