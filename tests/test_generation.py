"""One generation config (`thinksae.generation.GenerationConfig`), nested in the corpus, steer and
monitor configs as ``generation`` and flat for users: CLI flags, pipeline sections, saved configs
and stage hashes read as they did before the nesting. No model runs here."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import yaml

from thinksae.cli import build_parser
from thinksae.config import config_fields, nest, to_dict
from thinksae.corpus import CorpusConfig
from thinksae.errors import ThinksaeError
from thinksae.generation import GenerationConfig
from thinksae.monitor import MonitorConfig
from thinksae.pipeline import resolve
from thinksae.pipeline.context import build_config
from thinksae.steer import SteerConfig

GEN = [f.name for f in dataclasses.fields(GenerationConfig)]
# The options of each config as the version before the nesting declared them (its field order),
# plus `run` (added later, first; left out of stage hashes while None: pipeline ADDED_LATER).
BEFORE = {
    CorpusConfig: ["model", "prompts", "traces", "split", "out", "limit", "samples", "batch_size",
                   "engine", "max_new_tokens", "do_sample", "temperature", "top_p", "seed",
                   "system_prompt", "think_prefill", "answer_tokens", "device", "dtype",
                   "progress"],
    SteerConfig: ["run", "sae", "feature", "sweep", "max_from", "hookpoint", "model", "tokenizer",
                  "prompt", "prompts_file", "limit", "start", "end", "max_new_tokens",
                  "batch_size", "do_sample", "temperature", "top_p", "seed", "system_prompt",
                  "think_prefill", "kl", "show", "out", "device", "dtype", "progress"],
    MonitorConfig: ["run", "sae", "prompt", "serve", "features", "rules", "value", "hookpoint", "model",
                    "tokenizer", "max_new_tokens", "do_sample", "temperature", "top_p", "seed",
                    "system_prompt", "think_prefill", "alert_log", "live", "host", "port",
                    "device", "dtype"],
}
ROOT = Path(__file__).resolve().parents[1]


def _make(cls, **kw):
    return cls(sae="s", **kw) if cls is not CorpusConfig else cls(**kw)


def test_the_three_configs_nest_one_generation_config():
    assert GEN == ["max_new_tokens", "do_sample", "temperature", "top_p", "seed", "system_prompt",
                   "think_prefill"]
    for cls in BEFORE:
        cfg = _make(cls)
        assert isinstance(cfg.generation, GenerationConfig) and cfg.generation == GenerationConfig()
        assert not set(GEN) & {f.name for f in dataclasses.fields(cls)}  # declared once


@pytest.mark.parametrize("cls", list(BEFORE))
def test_saved_configs_and_hashes_stay_flat(cls):
    cfg = _make(cls, generation=GenerationConfig(max_new_tokens=7, do_sample=True, seed=2))
    d = to_dict(cfg)
    assert sorted(d) == sorted(BEFORE[cls]) == sorted(config_fields(cls))
    assert "generation" not in d and (d["max_new_tokens"], d["do_sample"], d["seed"]) == (7, True, 2)
    if cls is not SteerConfig:  # steer: batch_size now comes before the generation options
        assert list(d) == BEFORE[cls] == config_fields(cls)
    assert cls(**nest(cls, d)) == cfg  # the flat dict builds the same config


def test_nest_keeps_a_group_given_whole_and_refuses_it_twice():
    gen = GenerationConfig(seed=9)
    assert nest(CorpusConfig, {"generation": gen, "limit": 2}) == {"generation": gen, "limit": 2}
    assert nest(CorpusConfig, {"seed": 9})["generation"] == gen
    with pytest.raises(ThinksaeError, match="give seed either flat or inside generation"):
        nest(CorpusConfig, {"generation": gen, "seed": 1})


@pytest.mark.parametrize("argv", [["corpus"], ["steer", "--sae", "SAE"], ["monitor", "--sae", "SAE"]])
def test_cli_flags_keep_their_names(argv, capsys):
    flags = ["--max_new_tokens", "7", "--do_sample", "true", "--temperature", "0.9", "--top_p",
             "0.5", "--seed", "4", "--system_prompt", "Think.", "--think_prefill", "true"]
    cfg = build_parser().parse_args(argv + flags).cfg
    assert cfg.generation == GenerationConfig(7, True, 0.9, 0.5, 4, "Think.", True)
    with pytest.raises(SystemExit):
        build_parser().parse_args([argv[0], "--help"])
    help_text = capsys.readouterr().out
    assert all(f"--{name} " in help_text for name in GEN)
    assert "--generation" not in help_text and "--generation." not in help_text


def test_generation_options_are_checked_in_one_line():
    GenerationConfig(max_new_tokens=1, do_sample=True, temperature=0.1, top_p=1.0).check()
    for bad, message in ((dict(max_new_tokens=0), r"--max_new_tokens must be at least 1 \(got 0\)"),
                         (dict(do_sample=True, temperature=0.0), "--temperature must be > 0"),
                         (dict(do_sample=True, top_p=1.5), r"--top_p in \(0, 1\]")):
        with pytest.raises(ThinksaeError, match=message):
            GenerationConfig(**bad).check()
    GenerationConfig(temperature=0.0).check()  # greedy: the sampling options are not used


def test_monitor_refuses_bad_sampling_before_loading_anything():
    from thinksae.monitor import build_monitor

    cfg = MonitorConfig(sae="no/such/sae", prompt="Q?", features="1",
                        generation=GenerationConfig(do_sample=True, top_p=0.0))
    with pytest.raises(ThinksaeError, match="--temperature must be > 0 and --top_p in"):
        build_monitor(cfg)


def _spec(tmp_path: Path, **sections):
    spec = {"name": "t", "out": str(tmp_path / "run"), "model": "m", "hookpoint": "layers.1",
            "steer": None, "monitor": None, **sections}
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    return str(path)


def test_pipeline_sections_give_generation_options_flat(tmp_path):
    spec = resolve(_spec(tmp_path, corpus={"max_new_tokens": 9, "seed": 4},
                         steer={"sweep": ["0"], "max_new_tokens": 5, "do_sample": True},
                         monitor={"max_new_tokens": 6, "think_prefill": True}))
    corpus = build_config("corpus", spec, False, {"out": "t.jsonl"})
    assert corpus.generation == GenerationConfig(max_new_tokens=9, seed=4)
    steer = build_config("steer", spec, False, {"sae": "s"})
    assert steer.generation == GenerationConfig(max_new_tokens=5, do_sample=True)
    monitor = build_config("monitor", spec, False, {"sae": "s"})
    assert monitor.generation == GenerationConfig(max_new_tokens=6, think_prefill=True)
    for bad, message in (({"generation": {"seed": 1}}, "unknown option corpus.generation"),
                         ({"max_tokens": 1}, "unknown option corpus.max_tokens")):
        with pytest.raises(ThinksaeError, match=message):
            resolve(_spec(tmp_path, corpus=bad))


def test_presets_and_the_findings_config_still_read(tmp_path):
    demo = resolve(None, "offline-demo", {"out": str(tmp_path)})
    gen = build_config("corpus", demo, False, {"out": "t.jsonl"}).generation
    assert (gen.max_new_tokens, gen.think_prefill) == (128, True)
    assert gen.system_prompt.startswith("Think step by step inside <think>")
    findings = resolve(str(ROOT / "configs" / "offline-findings.yaml"), None, {"out": str(tmp_path)})
    gen = build_config("corpus", findings, False, {"out": "t.jsonl"}).generation
    assert (gen.max_new_tokens, gen.do_sample, gen.think_prefill) == (384, True, True)
    assert build_config("steer", findings, False, {"sae": "s"}).generation.max_new_tokens == 320
