"""TrainConfig: validation of bad options, lr rule and schedule, CLI parsing."""

from __future__ import annotations

import dataclasses
import math

import pytest
from simple_parsing import ArgumentParser

from thinksae.errors import ThinksaeError
from thinksae.sae import SaeConfig
from thinksae.train import SyntheticActivations, TrainConfig, default_lr, train
from thinksae.train.checks import check_config
from thinksae.train.config import (
    config_from_dict,
    differing_fields,
    identity,
    with_later_fields,
)
from thinksae.train.trainer import lr_factor


def _cfg(tmp_path, **kw) -> TrainConfig:
    base = dict(out=str(tmp_path / "run"), sae=SaeConfig(expansion_factor=2, k=4), batch_size=64,
                dtype="float32", device="cpu", progress=False)
    return TrainConfig(**{**base, **kw})


def test_default_lr_follows_width_rule():
    assert default_lr(2**14) == pytest.approx(5e-4)
    assert default_lr(4096) == pytest.approx(1e-3)
    assert default_lr(65536) == pytest.approx(2.5e-4)
    assert default_lr(4 * 65536) == pytest.approx(1.25e-4)


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        (dict(sae=SaeConfig(expansion_factor=2, k=0)), "k must be >= 1"),
        (dict(sae=SaeConfig(expansion_factor=2, k=65)), "more than the 64 latents"),
        (dict(lr=0.0), "learning rate must be > 0"),
        (dict(lr=-1e-3), "learning rate must be > 0"),
        (dict(lr_decay="exponential"), "unknown lr_decay 'exponential'"),
        (dict(b_dec_init="median"), "unknown b_dec_init"),
        (dict(dtype="float16"), "unknown dtype"),
        (dict(batch_size=0), "batch_size must be >= 1"),
        (dict(max_tokens=10), "less than one batch"),
        (dict(auxk_alpha=-0.1), "auxk_alpha"),
        (dict(auxk_norm="variance"), r"unknown auxk_norm 'variance' \(use x, residual\)"),
        (dict(regions=" , "), "--regions ' , ': give some of prompt, think, answer, special"),
        (dict(regions="think,thoughts"), "give some of prompt, think"),
    ],
)
def test_bad_options_fail_with_one_line_and_write_nothing(tmp_path, kw, message):
    source = SyntheticActivations(d_in=32, num_tokens=256)
    with pytest.raises(ThinksaeError, match=message) as err:
        train(_cfg(tmp_path, **kw), source=source)
    assert "\n" not in str(err.value)
    assert not (tmp_path / "run").exists()


def test_batch_not_divisible_by_world_size(tmp_path, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "3")
    with pytest.raises(ThinksaeError, match="not divisible by the world size 3"):
        train(_cfg(tmp_path), source=SyntheticActivations(d_in=32, num_tokens=256))
    assert not (tmp_path / "run").exists()


def test_data_source_must_be_named(tmp_path):
    with pytest.raises(ThinksaeError, match="give --store"):
        check_config(TrainConfig(out=str(tmp_path)))
    with pytest.raises(ThinksaeError, match="either --store or"):
        check_config(TrainConfig(store="s", model="m", corpus="c"))
    with pytest.raises(ThinksaeError, match="needs --hookpoint"):
        check_config(TrainConfig(model="m", corpus="c"))
    check_config(TrainConfig(model="m", corpus="c", hookpoint="layers.1"))


def test_too_little_data_for_one_batch(tmp_path):
    with pytest.raises(ThinksaeError, match="fewer tokens than one batch"):
        train(_cfg(tmp_path), source=SyntheticActivations(d_in=32, num_tokens=32))


def test_lr_schedule_warmup_then_decay():
    f = [lr_factor(s, warmup=4, total=12, decay="linear") for s in range(12)]
    assert f[:4] == [0.25, 0.5, 0.75, 1.0]
    assert f[4] == 1.0 and f[-1] == pytest.approx(1 / 8)
    assert all(a > b for a, b in zip(f[4:], f[5:], strict=False))
    c = [lr_factor(s, warmup=0, total=10, decay="cosine") for s in range(11)]
    assert c[0] == 1.0 and c[5] == pytest.approx(0.5) and c[10] == pytest.approx(0.0)
    assert [lr_factor(s, 2, 10, "none") for s in range(5)] == [0.5, 1.0, 1.0, 1.0, 1.0]
    assert lr_factor(3, 0, 3, "linear") == 0.0 and not math.isnan(lr_factor(0, 0, 0, "cosine"))


def test_warmup_help_states_what_lr_factor_does():
    """The first step runs at lr / lr_warmup_steps (not 0), the last warmup step at lr."""
    parser = ArgumentParser()
    parser.add_arguments(TrainConfig, dest="cfg")
    parser.parse_args(["--store", "st"])  # simple_parsing adds the options when it first parses
    help_text = " ".join(parser.format_help().split())
    start = help_text.rindex("--lr_warmup_steps")  # the option's entry, after the usage line
    doc = help_text[start : help_text.index("--lr_decay", start)]
    assert "from 0" not in doc
    assert "the first step already moves (at lr / lr_warmup_steps)" in doc
    assert "step lr_warmup_steps runs at the full lr" in doc
    warmup = 8
    factors = [lr_factor(s, warmup, 100, "none") for s in range(warmup + 1)]
    assert factors[0] == 1 / warmup and factors[warmup - 1] == 1.0 == factors[warmup]


def test_checkpoints_from_before_auxk_norm_still_match():
    """A saved identity without auxk_norm was trained with the x normalisation."""
    old = {k: v for k, v in identity(TrainConfig(store="s")).items() if k != "auxk_norm"}
    assert differing_fields(with_later_fields(old), identity(TrainConfig(store="s"))) == []
    diff = differing_fields(with_later_fields(old),
                            identity(TrainConfig(store="s", auxk_norm="residual")))
    assert diff == ["auxk_norm: 'x' -> 'residual'"]


def test_identity_ignores_how_it_is_run_and_lists_differences():
    a = TrainConfig(store="s", log_every=1, save_every=7, out="x", progress=False)
    b = TrainConfig(store="s", sae=SaeConfig(k=16), lr=1e-3)
    assert identity(a) == identity(TrainConfig(store="s"))
    diff = differing_fields(identity(a), identity(b))
    assert diff == ["lr: None -> 0.001", "sae.k: 32 -> 16"]


def test_config_round_trips_through_dict():
    cfg = TrainConfig(store="s", sae=SaeConfig(k=8, expansion_factor=4), lr_decay="cosine")
    back = config_from_dict(dataclasses.asdict(cfg))
    assert back == cfg


def test_cli_parses_flattened_sae_fields():
    parser = ArgumentParser()
    parser.add_arguments(TrainConfig, dest="cfg")
    args = parser.parse_args(["--store", "st", "-k", "16", "--expansion_factor", "8",
                              "--lr", "1e-3", "--normalize_inputs", "true", "--noresume"])
    cfg = args.cfg
    assert (cfg.sae.k, cfg.sae.expansion_factor, cfg.lr) == (16, 8, 1e-3)
    assert cfg.normalize_inputs is True and cfg.resume is False
    assert "checkpoint" in parser.format_help()
