"""The stage table of `thinksae run`: run directories made before it still skip every done stage
(same hashes), the table is consistent, and a new stage is one record plus its function. No model
runs here: the stages' actions are left out unless a test runs them."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

import thinksae.pipeline.report as report_module
import thinksae.pipeline.run as run_module
from thinksae import atomic
from thinksae.errors import ThinksaeError
from thinksae.pipeline import Pipeline, Stage, Step, resolve, table

# The hash of every stage of the offline-demo preset as the last released version computed it
# (commit 0178bdd): a run directory made by it must skip the stages whose output is unchanged —
# corpus, harvest (fields added since, e.g. `corpus.engine`, are left out of the hash at their old
# behaviour: stages.ADDED_LATER). Train reruns: its sink rule (`train.drop_sinks`, on by default)
# now leaves the prompt's "\n" sink rows out of training. The stages whose output changed for the same
# config (eval/splice: the mean ablation and the headline row; analyze: ReasonScore matching,
# trace-level think-specificity, max over trained regions; steer: Smax over the window; monitor:
# top-k values) are at version 2, so their hashes moved on purpose and those stages rerun.
OLD_HASHES = {
    "corpus": "4509432971d0c1dc", "harvest": "25a52aaa56a046a9", "train": "094a1e1c8357abef",
    "eval": "c45009f302f676dd", "splice": "c05edf01b5f3a7d7", "analyze": "bff7bfc44db0d9d5",
    "steer": "2c39f790819b745c", "monitor": "abc77d72ee532dcf",
}
KEPT = ("corpus", "harvest")
ROWS = [  # features.jsonl that steer (top:reason_score) and monitor (top:freq) choose from
    {"feature": 0, "label": "formatting", "freq": 0.5, "reason_score": 0.9, "mean_act": 2.0,
     "max_act": 3.0},
    {"feature": 1, "label": "narrow", "freq": 0.1, "reason_score": 0.2, "mean_act": 1.5,
     "max_act": 4.0},
    {"feature": 2, "label": "polysemantic", "freq": 0.3, "reason_score": 0.1, "mean_act": 1.0,
     "max_act": 2.5},
]


def _no_actions(monkeypatch, run: tuple[str, ...] = ()) -> dict[str, str]:
    """Stages outside ``run`` only record their hash; the report is not written."""
    digests: dict[str, str] = {}
    real = run_module.run_stage

    def fake(name, stage_dir, cfg, digest, action, log):
        digests[name] = digest
        if name in run:
            return real(name, stage_dir, cfg, digest, action, log)
        return False
    monkeypatch.setattr(run_module, "run_stage", fake)
    monkeypatch.setattr(run_module, "write_report", lambda root, sae_dir=None: Path(root))
    return digests


@pytest.mark.parametrize("where", ["a", "b/c"])
def test_stage_hashes_of_the_offline_demo_are_those_of_the_previous_version(
        tmp_path, monkeypatch, where):
    out = tmp_path / where
    (out / "features").mkdir(parents=True)
    (out / "features" / "features.jsonl").write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    digests = _no_actions(monkeypatch)
    # the preset's corpus before engine: auto and before it was sized for CPUs without fast bf16
    old_corpus = {"engine": "hf", "batch_size": 16, "max_new_tokens": 192, "answer_tokens": 48}
    Pipeline(resolve(None, "offline-demo", {"out": str(out), "corpus": old_corpus,
                                            "train": {"epochs": 20}}),
             progress=False).run()
    assert {k: digests[k] for k in KEPT} == {k: OLD_HASHES[k] for k in KEPT}
    assert all(digests[k] != OLD_HASHES[k] for k in OLD_HASHES if k not in KEPT)


def test_train_without_the_sink_rule_keeps_the_previous_hash(tmp_path, monkeypatch):
    """`drop_sinks: false` (and no threshold calibration) trains as before: same train hash."""
    out = tmp_path / "a"
    (out / "features").mkdir(parents=True)
    (out / "features" / "features.jsonl").write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    digests = _no_actions(monkeypatch)
    old_corpus = {"engine": "hf", "batch_size": 16, "max_new_tokens": 192, "answer_tokens": 48}
    train = {"epochs": 20, "drop_sinks": False, "calibrate_threshold": False,  # and the preset's
             "lr": 0.001, "lr_warmup_steps": 50, "lr_decay": "cosine",  # schedule of then
             "dead_feature_threshold": 100000}
    Pipeline(resolve(None, "offline-demo", {"out": str(out), "corpus": old_corpus,
                                            "train": train}), progress=False).run()
    assert digests["train"] == OLD_HASHES["train"]


def test_the_table_is_consistent():
    names = [st.name for st in table.TABLE]
    assert len(set(names)) == len(names)
    assert len({st.folder for st in table.TABLE}) == len(names)
    for i, st in enumerate(table.TABLE):
        assert set(st.upstream) <= set(names[:i]), f"{st.name} reads from a later stage"
        fields = {f.name for f in dataclasses.fields(st.config_class)}
        assert set(st.managed) <= fields, f"{st.name}: managed keys must be config fields"
        assert not set(st.extra) & fields, f"{st.name}: extra keys must not be config fields"
        assert not (set(st.extra) & set(st.managed))
        if not st.optional:  # a stage that always runs cannot read from one that may be off
            assert not any(table.stage(u).optional for u in st.upstream), st.name
    with pytest.raises(ThinksaeError, match=r"unknown stage 'nope' \(stages: corpus, harvest"):
        table.stage("nope")


def _spec(tmp_path: Path, **sections) -> dict:
    return {"name": "t", "out": str(tmp_path / "run"), "model": "m", "hookpoint": "layers.1",
            "steer": None, "monitor": None, **sections}


def _resolve(tmp_path: Path, spec: dict):
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    return resolve(str(path))


def test_enabled_false_turns_off_only_an_optional_stage(tmp_path):
    spec = _resolve(tmp_path, _spec(tmp_path, splice={"enabled": True, "max_tokens": 8},
                                    steer={"enabled": False, "sweep": ["0"]}))
    assert spec.stages["splice"] == {"max_tokens": 8} and spec.stages["steer"] is None
    with pytest.raises(ThinksaeError, match="stage 'analyze' cannot be turned off"):
        _resolve(tmp_path, _spec(tmp_path, analyze={"enabled": False}))
    with pytest.raises(ThinksaeError, match=r"unknown option analyze.enabled"):
        _resolve(tmp_path, _spec(tmp_path, analyze={"enabled": True}))


@dataclass
class ToyConfig:
    """A stage that writes what it was given (the `validate`/`explain` shape: optional, after
    analyze, reading its folder)."""

    out: str = ""
    scale: int = 1
    progress: bool = True


def run_toy(p: Pipeline, st: Stage) -> Step:
    cfg = p.config(st, out=str(p.dir(st) / "toy.json"))
    analysis = str(p.dir("analyze"))

    def action():
        atomic.write_json(cfg.out, {"scale": cfg.scale, "analysis": analysis})
    return Step(cfg, action)


TOY = Stage("toy", "toy", f"{__name__}:ToyConfig", run_toy, upstream=("train", "analyze"),
            optional=True, managed=("out",))


@pytest.fixture
def with_toy(monkeypatch):
    at = [st.name for st in table.TABLE].index("analyze") + 1
    monkeypatch.setattr(table, "TABLE", (*table.TABLE[:at], TOY, *table.TABLE[at:]))


def test_a_new_stage_is_one_record_and_its_function(tmp_path, monkeypatch, capsys, with_toy):
    spec = _spec(tmp_path, toy={"scale": 2})
    _no_actions(monkeypatch, run=("toy",))
    Pipeline(_resolve(tmp_path, spec), progress=False).run()
    out = tmp_path / "run" / "toy"
    assert json.loads((out / "toy.json").read_text()) == {
        "scale": 2, "analysis": str(tmp_path / "run" / "features")}
    marker = json.loads((out / "stage.json").read_text())
    assert marker["status"] == "done" and marker["config"]["scale"] == 2
    assert "toy" in json.loads((tmp_path / "run" / "run_config.json").read_text())
    capsys.readouterr()
    Pipeline(_resolve(tmp_path, spec), progress=False).run()
    assert "[run] toy: done before" in capsys.readouterr().out
    # its hash holds its upstream's: a change to analyze runs it again
    Pipeline(_resolve(tmp_path, {**spec, "analyze": {"top_n": 3}}), progress=False).run()
    assert "[run] toy: config changed" in capsys.readouterr().out
    (out / "toy.json").unlink()
    Pipeline(_resolve(tmp_path, {**spec, "toy": None}), progress=False).run()
    assert "toy" not in capsys.readouterr().out and not (out / "toy.json").exists()


def test_the_report_lists_a_new_stage_and_its_section_is_left_out_when_off(
        tmp_path, monkeypatch, with_toy):
    run = tmp_path / "run"
    spec = _spec(tmp_path, toy={})
    (run / "toy").mkdir(parents=True)
    atomic.write_json(run / "toy" / "stage.json", {"stage": "toy", "status": "done", "hash": "h"})
    atomic.write_json(run / "run_config.json", _resolve(tmp_path, spec).to_dict())
    monkeypatch.setitem(report_module.SECTIONS, "toy", lambda r: {"toy": {"dir": str(r.at("toy"))}})
    data = report_module.collect(run)
    assert [s["stage"] for s in data["stages"]] == ["toy"]
    assert data["toy"] == {"dir": str(run / "toy")}
    assert list(data).index("features") < list(data).index("toy") < list(data).index("steer")
    atomic.write_json(run / "run_config.json", _resolve(tmp_path, {**spec, "toy": None}).to_dict())
    data = report_module.collect(run)
    assert data["stages"] == [] and data["toy"] is None


@pytest.mark.parametrize("edit, message", [
    ({"toy": {"colour": 1}}, "unknown option toy.colour (see `thinksae toy --help`)"),
    ({"toy": {"out": "x"}}, "toy.out is set by `thinksae run` itself"),
    ({"toy": [1]}, "'toy' must be a mapping of `thinksae toy` options"),
    ({"splice": {"max_tokens": 8, "colour": 1}}, "unknown option splice.colour (see `thinksae eval"),
])
def test_a_new_stage_s_section_is_checked_from_its_record(tmp_path, with_toy, edit, message):
    with pytest.raises(ThinksaeError, match=message.replace("(", r"\(").replace(")", r"\)")):
        _resolve(tmp_path, _spec(tmp_path, **edit))


def test_a_stage_cannot_run_when_a_stage_it_reads_from_is_off(tmp_path, monkeypatch):
    after = dataclasses.replace(TOY, upstream=("splice",))
    monkeypatch.setattr(table, "TABLE", (*table.TABLE, after))
    with pytest.raises(ThinksaeError, match="stage 'toy' reads from 'splice', which is turned off"):
        _resolve(tmp_path, _spec(tmp_path, splice=None, toy={}))
    assert _resolve(tmp_path, _spec(tmp_path, splice=None, toy=None)).stages["toy"] is None


def test_a_field_added_later_enters_the_hash_once_it_leaves_its_old_behaviour():
    from thinksae.corpus import CorpusConfig
    from thinksae.pipeline.markers import stage_hash

    def digest(**kw):
        return stage_hash("corpus", CorpusConfig(out="t.jsonl", **kw), [])
    assert digest() == digest(engine="hf")
    assert digest(engine="llama.cpp") != digest()
    assert stage_hash("eval", CorpusConfig(out="t.jsonl"), [], version=2) != \
        stage_hash("eval", CorpusConfig(out="t.jsonl"), [])


def test_a_pretrained_sae_with_a_heldout_split_is_refused_before_anything_runs(tmp_path):
    from thinksae.errors import ThinksaeError

    path = tmp_path / "p.yaml"
    path.write_text("preset: seed-study\neval: {split: heldout}\n")
    with pytest.raises(ThinksaeError, match="eval.split 'heldout' .* pretrained SAE; use split: all"):
        resolve(str(path))
    assert not any(tmp_path.iterdir() for _ in [0] if False)
