"""The trainer in one process: outputs, metrics, resume rules, NaN safety, input normalisation."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from thinksae.errors import ThinksaeError
from thinksae.sae import Sae, SaeConfig
from thinksae.sae.formats import load_sparsify
from thinksae.train import SyntheticActivations, TrainConfig, fold_input_scale, train


def _cfg(tmp_path, **kw) -> TrainConfig:
    base = dict(out=str(tmp_path / "run"), sae=SaeConfig(expansion_factor=4, k=4), batch_size=64,
                lr_warmup_steps=4, dtype="float32", device="cpu", log_every=4, save_every=5,
                progress=False)
    return TrainConfig(**{**base, **kw})


class Poisoned(SyntheticActivations):
    """Synthetic data whose batch ``at`` (0-based, first epoch) is multiplied by ``factor``."""

    def __init__(self, at: int, factor: float, **kw):
        super().__init__(**kw)
        self.at, self.factor = at, factor

    def iter_batches(self, batch_size, seed=0, start_batch=0, rank=0, world_size=1):
        it = super().iter_batches(batch_size, seed, start_batch, rank, world_size)
        for b, x in enumerate(it, start=start_batch):
            yield x * self.factor if b == self.at and seed == 0 else x


def _weights(sae_dir):
    return load_file(str(sae_dir / "sae.safetensors"))


def _metrics(sae_dir):
    return [json.loads(line) for line in (sae_dir / "metrics.jsonl").read_text().splitlines()]


def test_training_learns_and_writes_sae_card_config_and_metrics(tmp_path):
    src = SyntheticActivations(d_in=32, num_tokens=2048, num_features=64, active=3)
    sae_dir = train(_cfg(tmp_path, dead_feature_threshold=256, lr=1e-2, log_every=8, epochs=2),
                    source=src)
    assert sae_dir == tmp_path / "run" / "synthetic"
    names = sorted(p.name for p in sae_dir.iterdir())
    assert names == ["cfg.json", "metrics.jsonl", "sae.safetensors", "thinksae.json",
                     "train_config.json"]
    rows = _metrics(sae_dir)
    assert [r["step"] for r in rows] == list(range(8, 65, 8))
    assert rows[-1]["fvu"] < 0.5 * rows[0]["fvu"]
    assert all(0 < r["l0"] <= 4 for r in rows)
    assert rows[0]["lr"] == pytest.approx(1e-2)
    assert {"dead_pct", "auxk", "tokens_per_s", "tokens"} <= set(rows[0])
    card = json.loads((sae_dir / "thinksae.json").read_text())
    assert card["training"]["steps"] == 64 and card["training"]["tokens_seen"] == 4096
    assert card["num_latents"] == 128 and card["k"] == 4 and card["d_in"] == 32
    assert card["data"]["hash"] == src.hash
    assert card["metrics"]["fvu"] == pytest.approx(rows[-1]["fvu"])
    # the saved SAE reconstructs the data as well as the log says
    sae = load_sparsify(sae_dir)
    with torch.no_grad():
        fvu = sae(src.data).fvu.item()
    assert fvu < 0.5 * rows[0]["fvu"]


def test_auxk_and_dead_latents_are_tracked(tmp_path):
    src = SyntheticActivations(d_in=32, num_tokens=2048, num_features=16, active=2)
    sae_dir = train(_cfg(tmp_path, sae=SaeConfig(expansion_factor=8, k=2),
                         dead_feature_threshold=128), source=src)
    rows = _metrics(sae_dir)
    assert any(r["dead_pct"] > 0 for r in rows)
    assert any(r["auxk"] > 0 for r in rows)


def test_rerun_is_a_no_op_and_other_config_is_refused(tmp_path):
    src = SyntheticActivations(d_in=32, num_tokens=512)
    sae_dir = train(_cfg(tmp_path), source=src)
    before = (sae_dir / "sae.safetensors").stat().st_mtime_ns
    assert train(_cfg(tmp_path, log_every=2), source=src) == sae_dir
    assert (sae_dir / "sae.safetensors").stat().st_mtime_ns == before
    with pytest.raises(ThinksaeError, match=r"different config \(lr: None -> 0.01\)"):
        train(_cfg(tmp_path, lr=0.01), source=src)
    with pytest.raises(ThinksaeError, match="trained on other data"):
        train(_cfg(tmp_path), source=SyntheticActivations(d_in=32, num_tokens=512, seed=1))
    with pytest.raises(ThinksaeError, match="has d_in 32 but the data has d_in 16"):
        train(_cfg(tmp_path), source=SyntheticActivations(d_in=16, num_tokens=512))
    train(_cfg(tmp_path, lr=0.01, resume=False), source=src)
    assert json.loads((sae_dir / "train_config.json").read_text())["lr"] == 0.01


def test_nan_input_stops_with_step_and_keeps_last_good_checkpoint(tmp_path):
    src = Poisoned(at=6, factor=float("nan"), d_in=32, num_tokens=1024)
    with pytest.raises(ThinksaeError) as err:
        train(_cfg(tmp_path), source=src)
    ck = tmp_path / "run" / "synthetic" / "checkpoint"
    msg = str(err.value)
    assert msg == (f"non-finite values in the input batch at step 7; last good checkpoint at "
                   f"step 5 kept in {ck}")
    assert json.loads((ck / "manifest.json").read_text())["step"] == 5
    assert not (ck.parent / "sae.safetensors").exists()


def test_non_finite_loss_is_caught_before_the_weights_change(tmp_path):
    src = Poisoned(at=7, factor=1e30, d_in=32, num_tokens=1024)
    with pytest.raises(ThinksaeError, match=r"^non-finite loss at step 8; last good checkpoint "
                                            r"at step 5 kept in"):
        train(_cfg(tmp_path), source=src)


def test_nan_in_first_batch_writes_nothing(tmp_path):
    src = Poisoned(at=0, factor=float("nan"), d_in=32, num_tokens=1024)
    with pytest.raises(ThinksaeError, match="at step 1"):
        train(_cfg(tmp_path), source=src)
    assert not (tmp_path / "run" / "synthetic" / "checkpoint").exists()


def test_resume_after_failure_matches_uninterrupted_run_bit_for_bit(tmp_path, capsys):
    kw = dict(d_in=32, num_tokens=1024)
    cfg = dict(lr_decay="cosine", normalize_inputs=True, dead_feature_threshold=200, epochs=2)
    clean = train(_cfg(tmp_path / "a", **cfg), source=SyntheticActivations(**kw))
    with pytest.raises(ThinksaeError, match="step 12"):
        train(_cfg(tmp_path / "b", **cfg), source=Poisoned(at=11, factor=float("inf"), **kw))
    assert "resuming" not in capsys.readouterr().out  # fresh starts say nothing
    resumed = train(_cfg(tmp_path / "b", **cfg), source=SyntheticActivations(**kw))
    said = [line for line in capsys.readouterr().out.splitlines() if "resuming" in line]
    assert said == [f"thinksae: resuming {resumed} from its checkpoint at step 10 "
                    f"({10 * 64:,} tokens seen)"]
    a, b = _weights(clean), _weights(resumed)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    strip = [{k: v for k, v in r.items() if k not in ("time", "tokens_per_s")}
             for r in _metrics(clean)]
    assert strip == [{k: v for k, v in r.items() if k not in ("time", "tokens_per_s")}
                     for r in _metrics(resumed)]


def test_checkpoint_with_other_config_or_data_is_refused(tmp_path):
    kw = dict(d_in=32, num_tokens=1024)
    with pytest.raises(ThinksaeError):
        train(_cfg(tmp_path), source=Poisoned(at=6, factor=float("nan"), **kw))
    ck = tmp_path / "run" / "synthetic" / "checkpoint"
    with pytest.raises(ThinksaeError, match=rf"^checkpoint in {ck} was made with a different "
                                            r"config \(sae.k: 4 -> 8\)"):
        train(_cfg(tmp_path, sae=SaeConfig(expansion_factor=4, k=8)),
              source=SyntheticActivations(**kw))
    with pytest.raises(ThinksaeError, match="made on other data"):
        train(_cfg(tmp_path), source=SyntheticActivations(d_in=32, num_tokens=1024, seed=5))
    with pytest.raises(ThinksaeError, match="has d_in 32 but the data has d_in 16"):
        train(_cfg(tmp_path), source=SyntheticActivations(d_in=16, num_tokens=1024))
    assert json.loads((ck / "manifest.json").read_text())["step"] == 5


def test_folding_the_input_scale_keeps_reconstructions_on_raw_inputs():
    torch.manual_seed(0)
    sae = Sae(16, SaeConfig(expansion_factor=4, k=3), device="cpu")
    with torch.no_grad():
        sae.encoder.bias.normal_()
        sae.b_dec.normal_()
    x = 40 * torch.randn(256, 16)
    scale = 0.037
    with torch.no_grad():
        scaled = sae(x * scale)
        fold_input_scale(sae, scale)
        raw = sae(x)
    assert torch.equal(raw.latent_indices.sort(-1).values, scaled.latent_indices.sort(-1).values)
    torch.testing.assert_close(raw.sae_out, scaled.sae_out / scale, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(raw.latent_acts, scaled.latent_acts / scale)
    assert raw.fvu.item() == pytest.approx(scaled.fvu.item(), rel=1e-4)


def test_normalize_inputs_makes_training_scale_free(tmp_path):
    small = SyntheticActivations(d_in=32, num_tokens=1024)
    big = SyntheticActivations(d_in=32, num_tokens=1024)
    big.data = big.data * 50.0
    cfg = dict(normalize_inputs=True, log_every=100)
    a = load_sparsify(train(_cfg(tmp_path / "a", **cfg), source=small))
    b = load_sparsify(train(_cfg(tmp_path / "b", **cfg), source=big))
    card = json.loads((tmp_path / "b/run/synthetic/thinksae.json").read_text())
    mean_sq = big.data[:64].pow(2).sum(-1).mean()  # not the batch, but the same magnitude
    assert card["training"]["input_scale"] == pytest.approx((32 / mean_sq).sqrt().item(), rel=0.3)
    with torch.no_grad():
        out_a, out_b = a(small.data), b(big.data)
    torch.testing.assert_close(out_b.sae_out, 50.0 * out_a.sae_out, rtol=1e-3, atol=1e-2)
    assert out_a.fvu.item() < 0.6


def test_logged_lr_is_the_lr_of_each_step(tmp_path):
    src = SyntheticActivations(d_in=32, num_tokens=512)
    sae_dir = train(_cfg(tmp_path, lr=1e-3, lr_warmup_steps=2, lr_decay="linear", log_every=1),
                    source=src)
    lrs = [r["lr"] for r in _metrics(sae_dir)]
    assert lrs == pytest.approx([5e-4, 1e-3, 1e-3, 1e-3 * 5 / 6, 1e-3 * 4 / 6, 1e-3 * 3 / 6,
                                 1e-3 * 2 / 6, 1e-3 * 1 / 6])
