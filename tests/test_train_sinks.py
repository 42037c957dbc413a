"""Training-side sink rule, auto schedule and BatchTopK threshold calibration, on hand numbers."""

from __future__ import annotations

import inspect
import json

import numpy as np
import pytest
import torch

from thinksae import atomic
from thinksae.errors import ThinksaeError
from thinksae.sae import SaeConfig, make_sae
from thinksae.store import ActivationStore
from thinksae.store.shard_parts import FORMAT, MANIFEST
from thinksae.store.shards import write_shard
from thinksae.train import SyntheticActivations, TrainConfig, train
from thinksae.train.calibrate import calibrate, calibrated_threshold, has_batch_threshold
from thinksae.train.checks import check_config
from thinksae.train.config import resolve_schedule
from thinksae.train.sink_rows import sink_keep_mask

REGIONS = ["prompt", "think", "answer", "special"]


def _store(path, x: torch.Tensor, regions: list[int], labels: bool = True):
    """One-shard store of rows ``x`` with the given region codes, one document per 4 rows."""
    n = len(x)
    tensors = {"activations": x.float()}
    if labels:
        tensors.update({
            "token_ids": torch.arange(100, 100 + n, dtype=torch.int32),
            "regions": torch.tensor(regions, dtype=torch.uint8),
            "behaviours": torch.zeros(n, dtype=torch.uint8),
            "doc_index": (torch.arange(n) // 4).to(torch.int32),
            "positions": (torch.arange(n) % 4).to(torch.int32)})
    write_shard(path / "shard-00000.safetensors", tensors)
    atomic.write_json(path / MANIFEST, {
        "format": FORMAT, "model": "tiny", "hookpoint": "layers.1", "tokenizer_hash": "t",
        "corpus_hash": "c", "dtype": "float32", "d_in": x.shape[1], "num_tokens": n,
        "shards": [{"file": "shard-00000.safetensors", "num_tokens": n}], "complete": True,
        "regions": REGIONS})
    return path


def test_norm_multiple_option():
    check_config(TrainConfig(store="s", sink_norm_multiple=None))
    check_config(TrainConfig(store="s", sink_norm_multiple=3.5))
    for bad in (1, 0.5, "1", float("inf"), True):
        with pytest.raises(ThinksaeError, match="norm multiple") as err:
            check_config(TrainConfig(store="s", sink_norm_multiple=bad))
        assert "\n" not in str(err.value)


def test_sink_keep_mask_by_hand(tmp_path):
    # norms 5, 5, 10, 50 (non-special) and 500 (special); lower median of [5, 5, 10, 50] = 5,
    # so with m = 4 the threshold is 20: row 3 is a sink by norm, row 4 by being special
    x = torch.tensor([[3.0, 4.0], [0.0, 5.0], [6.0, 8.0], [30.0, 40.0], [300.0, 400.0]])
    store = ActivationStore(_store(tmp_path / "s", x, [0, 1, 1, 0, 3]))
    keep, rec = sink_keep_mask(store, 4.0, np.arange(5))
    assert keep.tolist() == [True, True, True, False, False]
    assert rec["median_norm"] == 5.0 and rec["threshold"] == 20.0
    assert (rec["tokens"], rec["sinks"], rec["special"], rec["by_norm"]) == (5, 2, 1, 1)
    assert rec["by_norm_tokens"] == [{"id": 103, "count": 1}]
    keep, rec = sink_keep_mask(store, None, np.arange(5))  # special tokens only
    assert keep.tolist() == [True, True, True, True, False] and rec["threshold"] is None
    # the median is the store's (every non-special row), whatever the pool: rows 2..3 alone would
    # give 10; the store's lower median 5 with m = 1.5 → threshold 7.5, counted over the pool
    keep, rec = sink_keep_mask(store, 1.5, np.arange(2, 4))
    assert rec["median_norm"] == 5.0 and keep.tolist() == [True, True, False, False, False]
    assert (rec["tokens"], rec["sinks"], rec["by_norm"]) == (2, 2, 2)


def test_training_drops_sinks_and_records_them(tmp_path):
    src = SyntheticActivations(d_in=8, num_tokens=256, seed=1)
    x = src.data.clone()
    x[::32] *= 1000  # 8 rows far above 10 x the median norm
    regions = [3 if i % 64 == 1 else 1 for i in range(256)]  # 4 special rows
    store = _store(tmp_path / "s", x, regions)
    cfg = dict(store=str(store), batch_size=16, sae=SaeConfig(num_latents=16, k=2), lr=1e-2,
               dtype="float32", device="cpu", progress=False)
    card = json.loads((train(TrainConfig(out=str(tmp_path / "a"), **cfg)) / "thinksae.json")
                      .read_text())["training"]
    assert card["steps"] == (256 - 12) // 16
    sinks = card["sinks"]
    assert sinks["dropped"] and (sinks["sinks"], sinks["special"], sinks["by_norm"]) == (12, 4, 8)
    assert sinks["norm_multiple"] == 10.0 and sinks["median_norm"] > 0
    kept = json.loads((train(TrainConfig(out=str(tmp_path / "b"), drop_sinks=False, **cfg))
                       / "thinksae.json").read_text())["training"]
    assert kept["steps"] == 256 // 16 and kept["sinks"] == {"dropped": False}


def test_sink_errors_before_training(tmp_path):
    x = torch.randn(64, 4)
    bare = _store(tmp_path / "bare", x, [1] * 64, labels=False)
    with pytest.raises(ThinksaeError, match="has no token ids") as err:
        train(TrainConfig(store=str(bare), out=str(tmp_path / "r"), batch_size=16,
                          sae=SaeConfig(num_latents=8, k=2), device="cpu", progress=False))
    assert "\n" not in str(err.value) and not (tmp_path / "r").exists()
    with pytest.raises(ThinksaeError, match="--nodrop_sinks"):
        check_config(TrainConfig(store="s", regions="think,special"))
    with pytest.raises(ThinksaeError, match="finite number > 1"):
        check_config(TrainConfig(store="s", sink_norm_multiple=1.0))
    check_config(TrainConfig(store="s", regions="special", drop_sinks=False))


def test_auto_schedule_scales_with_the_run_and_refuses_what_cannot_fit():
    cfg = TrainConfig(store="s", batch_size=256)
    assert resolve_schedule(cfg, 352) == (18, 9011)   # round(0.05·352); int(0.1·352·256)
    assert resolve_schedule(cfg, 10**6).warmup_steps == 1000
    assert resolve_schedule(cfg, 10**6).dead_feature_threshold == 10_000_000
    assert resolve_schedule(cfg, 3).dead_feature_threshold == 256  # at least one batch
    fixed = TrainConfig(store="s", lr_warmup_steps=40, dead_feature_threshold=1000)
    assert resolve_schedule(fixed, 41) == (40, 1000)
    with pytest.raises(ThinksaeError, match="lr_warmup_steps 40 does not fit this run of 40"):
        resolve_schedule(fixed, 40)
    for bad in ("soon", -1, 2.5):
        with pytest.raises(ThinksaeError, match="auto or a whole number"):
            check_config(TrainConfig(store="s", lr_warmup_steps=bad))


def _hand_batchtopk():
    sae = make_sae(2, SaeConfig(num_latents=3, k=1, architecture="batchtopk"))
    with torch.no_grad():
        sae.encoder.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]))
        sae.encoder.bias.zero_()
        sae.b_dec.zero_()
    return sae


def test_calibrated_threshold_by_hand():
    # pre-activations: [1, 2] → (1, 2, 3); [0.5, 0] → (0.5, 0, 0.5); positives 3, 2, 1, .5, .5
    sae = _hand_batchtopk()
    assert has_batch_threshold(sae) and not has_batch_threshold(make_sae(2, SaeConfig(
        num_latents=3, k=1)))
    x = torch.tensor([[1.0, 2.0], [0.5, 0.0]])
    # k = 1, N = 2: the 3rd largest is 1, and exactly 2 values (3, 2) lie above it
    assert calibrated_threshold(sae, [x], 1, 2) == 1.0
    assert calibrated_threshold(sae, [x[:1], x[1:]], 1, 2) == 1.0  # streamed in two chunks
    assert calibrated_threshold(sae, [x], 1.5, 2) == 0.5  # the 4th largest
    assert calibrated_threshold(sae, [x], 3, 2) == 0.0   # 7 wanted, only 5 positive
    with pytest.raises(ValueError, match="expected 3 rows, got 2"):
        calibrated_threshold(sae, [x], 1, 3)


def test_calibrate_keeps_the_larger_of_the_two_thresholds():
    x = torch.tensor([[1.0, 2.0], [0.5, 0.0]])  # θ_k = 1 at k = 1 (test above)
    for running, expected in ((0.5, 1.0), (2.5, 2.5), (-1.0, 1.0)):  # -1: never trained
        sae = _hand_batchtopk()
        sae.threshold.fill_(running)
        rec = calibrate(sae, [x], 1, 2)
        assert float(sae.threshold) == expected == rec["threshold"]
        assert (rec["threshold_k"], rec["threshold_running"]) == (1.0, running)


def test_batchtopk_training_calibrates_its_threshold(tmp_path):
    src = SyntheticActivations(d_in=16, num_tokens=1024, num_features=64, active=4, seed=2)
    cfg = TrainConfig(out=str(tmp_path / "r"), sae=SaeConfig(num_latents=64, k=4,
                      architecture="batchtopk"), batch_size=128, epochs=3, lr=1e-2,
                      dtype="float32", device="cpu", progress=False, seed=0)
    sae_dir = train(cfg, source=src)
    card = json.loads((sae_dir / "thinksae.json").read_text())["training"]
    cal = card["threshold_calibration"]
    assert cal["calibration_tokens"] == 1024 and cal["threshold_k"] != cal["threshold_running"]
    assert cal["threshold"] == max(cal["threshold_k"], cal["threshold_running"])
    from thinksae.sae import load_sae

    sae = load_sae(sae_dir)
    assert float(sae.threshold) == pytest.approx(cal["threshold"])
    l0 = (sae.pre_acts(src.data).relu() > cal["threshold_k"]).sum(-1).float().mean().item()
    assert l0 == pytest.approx(4.0, abs=1e-3)  # θ_k: k latents per training token on average
    assert card["lr_warmup_steps"] == round(0.05 * 24) and card["lr_warmup_steps_option"] == "auto"


def test_store_batches_honour_a_keep_mask(tmp_path):
    x = torch.arange(40.0)[:, None].repeat(1, 2)  # row i holds (i, i)
    store = ActivationStore(_store(tmp_path / "s", x, [1] * 40))
    keep = np.ones(40, dtype=bool)
    keep[[3, 17, 30]] = False
    seen = torch.cat(list(store.iter_batches(4, seed=1, keep=keep)))[:, 0].long().tolist()
    assert len(seen) == 36 and not {3, 17, 30} & set(seen)
    assert store.num_batches(4, keep=keep) == 9
    with pytest.raises(ThinksaeError, match="keep mask of shape"):
        store.token_indices(keep=np.ones(5, dtype=bool))


def test_help_states_the_auto_values():
    """The CLI help (the field docstrings) says what auto means in numbers, and those are the
    constants resolve_schedule uses."""
    from thinksae.train import config

    src = " ".join(inspect.getsource(config.TrainConfig).split())
    assert "auto = 0.05 x the run's steps, at most 1000" in src
    assert "auto = 0.1 x the run's tokens, at most 10,000,000" in src
    assert (config.WARMUP_FRACTION, config.WARMUP_MAX_STEPS) == (0.05, 1000)
    assert (config.DEAD_FRACTION, config.DEAD_MAX_TOKENS) == (0.1, 10_000_000)
