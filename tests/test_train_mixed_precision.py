"""bfloat16 compute with float32 master weights ends within 2 % (relative) of a float32 run."""

from __future__ import annotations

import pytest
import torch

from thinksae.sae import Sae, SaeConfig
from thinksae.sae.formats import load_sparsify
from thinksae.train import SyntheticActivations, TrainConfig, train


def _final(tmp_path, dtype: str, src: SyntheticActivations) -> tuple[float, Sae]:
    cfg = TrainConfig(out=str(tmp_path / dtype), sae=SaeConfig(expansion_factor=4, k=8),
                      batch_size=256, epochs=4, lr=5e-3, lr_warmup_steps=5, dtype=dtype,
                      device="cpu", progress=False, log_every=1000, save_every=1000)
    sae = load_sparsify(train(cfg, source=src))
    assert sae.dtype == torch.float32  # master weights stay float32
    with torch.no_grad():
        return sae(src.data).fvu.item(), sae


def test_bf16_training_matches_fp32_final_fvu(tmp_path):
    src = SyntheticActivations(d_in=64, num_tokens=4096, num_features=128, active=3, noise=0.05)
    fvu32, sae32 = _final(tmp_path, "float32", src)
    fvu16, sae16 = _final(tmp_path, "bfloat16", src)
    assert fvu32 < 0.5  # it learned something
    assert not torch.equal(sae32.encoder.weight, sae16.encoder.weight)  # bf16 really ran
    assert fvu16 == pytest.approx(fvu32, rel=0.02)
