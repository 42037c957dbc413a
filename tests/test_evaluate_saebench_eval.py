"""SAEBench's metrics in `thinksae eval`: eval.json's `saebench` (each family equal to the metric
functions called directly with the store's sink rule), the options on the command line, one line
for each bad option before any model loads, the definitions, the run report and the stage hash."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch

from thinksae.cli import main
from thinksae.config import nest
from thinksae.evaluate import EvalConfig, evaluate
from thinksae.evaluate.config import SaebenchConfig
from thinksae.evaluate.saebench import (
    ProbingOptions,
    core_eval_store,
    store_probing,
)
from thinksae.evaluate.saebench.core import CoreMetrics
from thinksae.evaluate.saebench.definitions import ABSORPTION, CORE, CORE_SHOWN, PROBING
from thinksae.sae import Sae, SaeConfig, write_report_card
from thinksae.sae.formats import load_sparsify, save_sparsify
from thinksae.store import ActivationStore, HarvestConfig, harvest

OFF = ["--progress", "false"]


@pytest.fixture(scope="module")
def store_dir(tmp_path_factory, corpus_path, tiny_model, tokenizer) -> Path:
    cfg = HarvestConfig(model="tiny", corpus=str(corpus_path), hookpoint="layers.1",
                        out=str(tmp_path_factory.mktemp("bench_store")), device="cpu",
                        dtype="float32", docs_per_shard=3, batch_size=3, progress=False)
    (path,) = harvest(cfg, tiny_model, tokenizer)
    return path


@pytest.fixture(scope="module")
def untagged_store(tmp_path_factory, tiny_model, tokenizer) -> Path:
    """Three traces without any behaviour phrase: the behaviour labels have one class."""
    root = tmp_path_factory.mktemp("untagged")
    traces = []
    for i, (q, a) in enumerate([("What is 2 plus 3?", "5"), ("What is 4 times 2?", "8"),
                                ("What is 9 minus 1?", "8")]):
        prompt = tokenizer.apply_chat_template([{"role": "user", "content": q}],
                                               add_generation_prompt=True, tokenize=False)
        traces.append({"id": f"u{i}", "prompt": prompt, "question": q, "reference_answer": a,
                       "completion": f"<think>\nI add up the numbers given.\n</think>\n\n{a}.",
                       "meta": {}})
    corpus = root / "plain.jsonl"
    corpus.write_text("".join(json.dumps(t) + "\n" for t in traces))
    cfg = HarvestConfig(model="tiny", corpus=str(corpus), hookpoint="layers.1", out=str(root / "s"),
                        device="cpu", dtype="float32", progress=False)
    (path,) = harvest(cfg, tiny_model, tokenizer)
    return path


def _sae(path: Path) -> Path:
    torch.manual_seed(0)
    save_sparsify(Sae(64, SaeConfig(expansion_factor=2, k=4)), path)
    return path


def _cfg(**kw) -> EvalConfig:
    return EvalConfig(**nest(EvalConfig, {"progress": False, "update_card": False, **kw}))


def test_store_mode_saebench_is_the_metric_functions_with_the_store_rule(tmp_path, store_dir,
                                                                         capsys):
    sae_dir = _sae(tmp_path / "run" / "layers.1")
    write_report_card(sae_dir, {"hookpoint": "layers.1"})
    assert main(["eval", "--sae", str(sae_dir), "--store", str(store_dir), *OFF]) == 0
    printed = capsys.readouterr().out
    result = json.loads((sae_dir / "eval.json").read_text())
    assert json.loads((sae_dir / "thinksae.json").read_text())["eval"]["saebench"] == result["saebench"]
    bench = result["saebench"]
    store, sae = ActivationStore(store_dir), load_sparsify(sae_dir)

    direct = core_eval_store(store, sae, store.sink_rule).to_dict()
    assert bench["core"].keys() == direct.keys()
    for key, value in direct.items():
        assert bench["core"][key] == (pytest.approx(value, rel=1e-6) if isinstance(value, float)
                                      else value), key
    assert bench["core"]["explained_variance"] == pytest.approx(1 - result["metrics"]["all"]["fvu"])
    assert bench["core"]["ce_loss_score"] is None  # no model: the reconstruction half

    regions = store_probing(store, sae, ProbingOptions(), store.sink_rule, None, None,
                            families=("regions",))
    probing = bench["probing"]
    assert probing["regions"] == json.loads(json.dumps(regions.regions.to_dict()))
    assert probing["behaviour_units"].startswith("think windows")  # no tokenizer loaded
    assert "behaviours" in probing["skipped"] and probing["behaviours"] is None
    assert bench["absorption"] is None
    assert bench["definitions"] == {"core": CORE, "probing": PROBING, "absorption": ABSORPTION}
    assert "SAEBench core (" in printed and "SAEBench k-sparse probing, regions" in printed
    assert "probing, behaviours: skipped" in printed and "sinks (left out of every metric)" in printed


def test_definitions_cover_every_reported_number():
    from thinksae.evaluate.saebench.absorption_score import aggregate_letters
    from thinksae.evaluate.saebench.sparse_probing import mean_accuracies

    numbers = {f.name for f in dataclasses.fields(CoreMetrics)} - {"sinks", "feature_density"}
    assert numbers == set(CORE)
    assert set(CORE_SHOWN) <= set(CORE)
    assert set(PROBING) == set(mean_accuracies([]))
    assert set(ABSORPTION) <= set(aggregate_letters([], 0.6, 1))


def test_cli_options_turn_families_off_and_set_probing(tmp_path, store_dir):
    sae_dir = _sae(tmp_path / "layers.1")
    out = tmp_path / "off.json"
    assert main(["eval", "--sae", str(sae_dir), "--store", str(store_dir), "--core", "false",
                 "--probing", "false", "--out", str(out), "--noupdate_card", *OFF]) == 0
    result = json.loads(out.read_text())
    assert result["saebench"]["core"] is None and result["saebench"]["probing"] is None
    assert result["config"]["core"] is False and result["config"]["probing"] is False
    out = tmp_path / "probe.json"
    assert main(["eval", "--sae", str(sae_dir), "--store", str(store_dir), "--probe_families",
                 "regions", "--probe_ks", "1,3", "--probe_window_tokens", "16",
                 "--probe_max_traces", "5", "--out", str(out), "--noupdate_card", *OFF]) == 0
    probing = json.loads(out.read_text())["saebench"]["probing"]
    assert probing["options"]["ks"] == [1, 3] and probing["options"]["window_tokens"] == 16
    assert probing["traces"] == 5 and probing["skipped"] == {}
    assert set(probing["regions"]["mean"]["sae"]) == {"1", "3"}


def test_probing_a_one_class_label(tmp_path, untagged_store, tiny_model_dir, monkeypatch, capsys):
    """Unset: the family is skipped with why; --probing true: one line, before the model loads."""
    import thinksae.binding as binding

    sae_dir = _sae(tmp_path / "layers.1")
    result = evaluate(_cfg(sae=str(sae_dir), store=str(untagged_store),
                           out=str(tmp_path / "e.json")))
    assert result.saebench["probing"]["skipped"]["behaviours"].startswith("one class only (no "
                                                                          "behaviour tag")
    monkeypatch.setattr(binding, "load_model", lambda *a, **k: pytest.fail("model loaded"))
    capsys.readouterr()
    assert main(["eval", "--sae", str(sae_dir), "--store", str(untagged_store), "--model",
                 str(tiny_model_dir), "--probing", "true", "--probe_families", "behaviours",
                 "--out", str(tmp_path / "x.json"), *OFF]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "probing behaviours: one class only" in err
    assert not (tmp_path / "x.json").exists()


def test_bad_saebench_options_one_line_before_a_model_loads(tmp_path, store_dir, tiny_model_dir,
                                                           corpus_path, monkeypatch, capsys):
    import thinksae.binding as binding

    monkeypatch.setattr(binding, "load_model", lambda *a, **k: pytest.fail("model loaded"))
    sae_dir = _sae(tmp_path / "layers.1")
    store = ["--store", str(store_dir)]
    model = ["--model", str(tiny_model_dir), "--device", "cpu", "--dtype", "float32"]
    cases = {
        "ks zero": (store + ["--probe_ks", "0,2"], "--probe_ks must be positive integers"),
        "ks words": (store + ["--probe_ks", "a"], "--probe_ks must be positive integers"),
        "one trace": (store + ["--probe_max_traces", "1"], "--probe_max_traces must be >= 2"),
        "window": (store + ["--probe_window_tokens", "0"], "--probe_window_tokens must be >= 1"),
        "family": (store + ["--probe_families", "regions,tags"], "unknown --probe_families"),
        "letters": (store + model + ["--absorption", "true", "--absorption_min_letters", "30"],
                    "--absorption_min_letters must be in 1..26"),
        "words": (store + model + ["--absorption", "true", "--absorption_min_words_per_letter",
                                   "1"], "min_words_per_letter must be >= 2"),
        "absorption without model": (store + ["--absorption", "true"], "--absorption needs --model"),
        "probing without store": (model + ["--corpus", str(corpus_path), "--probing", "true"],
                                  "--probing needs --store"),
        "core keeps sinks": (store + model + ["--noexclude_sinks"],
                             "--core with --model needs --exclude_sinks"),
        "vocabulary": (store + model + ["--absorption", "true",
                                        "--absorption_min_words_per_letter", "100000",
                                        "--absorption_words_per_letter"],
                       "too few letter-only tokens for the first-letter task"),
    }
    for name, (args, message) in cases.items():
        capsys.readouterr()
        out = tmp_path / f"{name}.json"
        assert main(["eval", "--sae", str(sae_dir), *args, "--out", str(out), *OFF]) == 2, name
        err = capsys.readouterr().err.strip()
        assert err.startswith("thinksae: error: ") and "\n" not in err, (name, err)
        assert message in err, (name, err)
        assert not out.exists(), name


def test_absorption_in_model_mode(tmp_path, store_dir, tiny_model, tokenizer, capsys):
    sae_dir = _sae(tmp_path / "layers.1")
    result = evaluate(_cfg(sae=str(sae_dir), store=str(store_dir), max_tokens=40, core=False,
                           probing=False, mean_ablation=False, absorption=True,
                           absorption_words_per_letter=5, absorption_min_letters=1,
                           out=str(tmp_path / "a.json")), tiny_model, tokenizer)
    absorption = result.saebench["absorption"]
    assert absorption["options"]["words_per_letter"] == 5
    assert absorption["options"]["min_letters"] == 1
    assert [x["letter"] for x in absorption["letters"]] == list("abcdefghijklmnopqrstuvwxyz")
    assert absorption["train_words"] + absorption["test_words"] + absorption["sink_words"] == 130
    assert "SAEBench absorption (" in capsys.readouterr().out


def test_run_report_shows_the_core_metrics_with_definitions(tmp_path, store_dir):
    from thinksae.pipeline.report import write_report

    root = tmp_path / "run"
    sae_dir = _sae(root / "sae" / "layers.1")
    evaluate(_cfg(sae=str(sae_dir), store=str(store_dir), out=str(root / "eval" / "eval.json")))
    write_report(root, sae_dir)
    section = json.loads((root / "report.json").read_text())["eval"]
    result = json.loads((root / "eval" / "eval.json").read_text())
    core = section["saebench"]["core"]
    assert [row["key"] for row in core] == [k for k in CORE_SHOWN
                                            if result["saebench"]["core"][k] is not None]
    assert all(row["definition"] == CORE[row["key"]] for row in core)
    assert section["saebench"]["probing"][0]["family"] == "regions"
    assert section["sinks"]["sinks"] == section["groups"][0]["sinks"] > 0
    html = (root / "index.html").read_text()
    assert "SAEBench core metrics" in html and CORE["l2_ratio"] in html
    summary = (root / "summary.md").read_text()
    assert "| explained variance |" in summary and "sinks (left out of every metric)" in summary

    del result["saebench"], result["sinks"]  # an eval.json from before: the report still renders
    (root / "eval" / "eval.json").write_text(json.dumps(result))
    write_report(root, sae_dir)
    section = json.loads((root / "report.json").read_text())["eval"]
    assert section["saebench"] is None and section["sinks_line"] is None


def test_old_run_directories_hash_as_before_with_the_new_fields_at_their_old_values():
    from thinksae.pipeline.markers import stage_hash

    new = {f.name for f in dataclasses.fields(SaebenchConfig)} | {"exclude_sinks", "saebench"}
    old_fields = [(f.name, f.type, dataclasses.field(default=f.default))
                  for f in dataclasses.fields(EvalConfig) if f.name not in new]
    OldEvalConfig = dataclasses.make_dataclass("OldEvalConfig", old_fields)
    paths = dict(sae="s", store="t", out="o")
    for stage in ("eval", "splice"):
        old = stage_hash(stage, OldEvalConfig(**paths), ["x"], version=2)
        as_before = EvalConfig(**paths, exclude_sinks=False,
                               saebench=SaebenchConfig(core=False, probing=False))
        assert stage_hash(stage, as_before, ["x"], version=2) == old
        assert stage_hash(stage, EvalConfig(**paths), ["x"], version=2) != old
