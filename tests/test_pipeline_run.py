"""`thinksae run` end to end on the tiny model: every stage, the report, skipping finished stages,
re-running what a config change touches, and the same report after interruptions anywhere."""

from __future__ import annotations

import json
import re
import shutil
import sys
from pathlib import Path

import pytest
import yaml

import thinksae.pipeline.run as run_module
from thinksae.cli import main
from thinksae.features.report import read_feature_row
from thinksae.pipeline import Pipeline, resolve
from thinksae.store import ActivationStore

REPORT_FILES = ("index.html", "report.json", "summary.md")


def tiny_config(out: Path, model_dir: Path) -> dict:
    return {
        "name": "tiny", "out": str(out), "model": str(model_dir), "hookpoint": "layers.1",
        "device": "cpu", "dtype": "float32",
        "corpus": {"prompts": "builtin", "limit": 6, "max_new_tokens": 10, "batch_size": 3,
                   "think_prefill": True, "answer_tokens": 4},
        "harvest": {"batch_size": 4, "docs_per_shard": 2},
        "train": {"sae": {"num_latents": 128, "k": 8}, "batch_size": 32, "lr_warmup_steps": 2,
                  "epochs": 3, "save_every": 4, "log_every": 2, "holdout": 0.34},
        "eval": {"split": "heldout"},
        "splice": {"split": "heldout", "max_tokens": 48, "batch_size": 2,
                   "splice_regions": "prompt,think,answer"},
        "analyze": {"min_fires": 2, "top_n": 5},
        "steer": {"sweep": ["0", "x2", "2max"], "limit": 2, "max_new_tokens": 5,
                  "start": "prompt", "end": "none", "max_from": "analysis"},
        "monitor": {"max_new_tokens": 6, "rule": {"threshold": 0.0, "feature": "top:freq"}},
    }


def run_config(path: Path, config: dict, capsys=None) -> str:
    path.write_text(yaml.safe_dump(config))
    if capsys is not None:
        capsys.readouterr()
    assert main(["run", str(path), "--progress", "false"]) == 0
    return capsys.readouterr().out if capsys is not None else ""


def report_bytes(out: Path) -> dict[str, bytes]:
    return {name: (out / name).read_bytes() for name in REPORT_FILES}


@pytest.fixture(scope="module")
def reference(tmp_path_factory, tiny_model_dir):
    """One uninterrupted run: (config, run directory, report files)."""
    root = tmp_path_factory.mktemp("pipeline")
    config = tiny_config(root / "run", tiny_model_dir)
    run_config(root / "run.yaml", config)
    return config, root / "run", report_bytes(root / "run")


def test_every_stage_runs_and_the_report_links_resolve(reference):
    config, out, _ = reference
    for stage in ("corpus", "store", "sae", "eval", "splice", "features", "steer", "monitor"):
        marker = json.loads((out / stage / "stage.json").read_text())
        assert marker["status"] == "done" and len(marker["hash"]) == 16
    html = (out / "index.html").read_text()
    links = re.findall(r'(?:href|src)="([^"#]+)"', html)
    assert "features/dashboard/index.html" in links and "sae/layers.1/thinksae.json" in links
    assert any(link.endswith(".png") for link in links)
    missing = [link for link in links if not (out / link).exists()]
    assert not missing, missing
    report = json.loads((out / "report.json").read_text())
    regions = {g["group"]: g for g in report["eval"]["groups"]}
    assert {"all", "region prompt", "region think"} <= set(regions)
    assert regions["region answer"]["tokens"] > 0  # the forced answers after </think>
    corpus = report["corpus"]  # random weights never close the thinking: every answer forced
    assert (corpus["traces"], corpus["forced_answer"], corpus["closed_thinking"]) == (6, 6, 0)
    assert corpus["graded"] == 6 and 0 <= corpus["correct"] <= 6
    assert sum(report["store"]["regions"].values()) == report["store"]["num_tokens"]
    # evaluated on the two held-out traces (of 6 questions), which training never read
    store = ActivationStore(out / "store/layers.1")
    held = store.split_docs(0.34, "heldout")
    assert len(held) == 2 and report["eval"]["split"] == "heldout" and report["eval"]["traces"] == 2
    assert regions["all"]["tokens"] + regions["all"]["sinks"] == len(store.token_indices(docs=held))
    assert "2 held-out traces" in (out / "summary.md").read_text()
    splice = report["splice"]["groups"][0]
    assert splice["group"] == "all" and splice["tokens"] + splice["sinks"] == 48
    assert splice["kl_spliced"] >= 0
    assert report["splice"]["split"] == "heldout"
    assert "replaced at prompt,think,answer tokens only" in (out / "summary.md").read_text()
    feats = report["features"]
    assert sum(feats["labels"].values()) == 128
    assert feats["formatting"] + feats["content"] + feats["labels"]["dead"] \
        + feats["labels"]["rare"] == 128
    top = feats["top"]["freq"][0]
    assert top["tokens"] and 0 < top["tokens"][0]["share"] <= 1 and top["page"]
    assert [r["label"] for r in report["steer"]["runs"]] == ["baseline", "0", "x2", "2max"]
    steered = json.loads((out / "steer/steer.json").read_text())  # 2max from the analysis' max
    (feature, top), = steered["max_activation"].items()
    assert steered["max_activation_from"] == str(out / "features")
    assert top == read_feature_row(out / "features", int(feature))["max_act"] > 0
    summary_md = (out / "summary.md").read_text()
    assert "max activation over the analysed tokens" in summary_md
    assert ").\n\n| run | new tokens |" in summary_md  # a Markdown table needs the blank line
    assert report["monitor"]["tokens"] and report["monitor"]["rule"]["threshold"] == 0.0
    rows = [json.loads(line) for line in (out / "features/features.jsonl").read_text().splitlines()]
    content = [r for r in rows if r["label"] in ("monosemantic", "narrow", "polysemantic")]
    most = max(content, key=lambda r: (r["freq"], -r["feature"]))["feature"]
    assert report["monitor"]["feature"] == most and "highest freq" in report["monitor"]["why"]
    assert report["monitor"]["alerts"], "a threshold of 0 alerts on the first token"
    card = json.loads((out / "sae/layers.1/thinksae.json").read_text())
    assert card["eval"]["metrics"]["all"]["fvu"] == report["eval"]["groups"][0]["fvu"]
    assert card["eval_spliced"]["metrics"]["all"]["kl_spliced"] == splice["kl_spliced"]
    # the exact config is saved and runs again as it is
    saved = json.loads((out / "run_config.json").read_text())
    assert saved.pop("versions")["thinksae"]  # the stack that made the run, not a setting
    assert resolve(str(out / "run_config.json")).to_dict() == saved
    assert saved["train"]["sae"] == {"num_latents": 128, "k": 8}


def test_a_rerun_skips_every_stage_and_a_change_reruns_what_depends_on_it(
        reference, tmp_path, capsys):
    config, ref_out, ref_report = reference
    out = tmp_path / "run"
    shutil.copytree(ref_out, out)
    config = {**config, "out": str(out)}
    log = run_config(tmp_path / "run.yaml", config, capsys)
    assert log.count("skipped") == 8 and "loading model" not in log
    changed = {**config, "monitor": {**config["monitor"], "rule": {"threshold": 0.5}}}
    log = run_config(tmp_path / "run.yaml", changed, capsys)  # the rule is not a config field
    assert "[run] monitor: config changed" in log and "[run] steer: done before" in log
    assert json.loads((out / "monitor/monitor.json").read_text())["rule"]["threshold"] == 0.5
    changed = {**config, "eval": {"chunk_tokens": 64}}
    log = run_config(tmp_path / "run.yaml", changed, capsys)
    assert "[run] eval: config changed" in log
    assert "[run] analyze: done before" in log and "[run] train: done before" in log
    changed["train"] = {**config["train"], "epochs": 2}
    log = run_config(tmp_path / "run.yaml", changed, capsys)
    for stage in ("train", "eval", "splice", "analyze", "steer", "monitor"):
        assert f"[run] {stage}: config changed" in log
    assert "[run] corpus: done before" in log and "[run] harvest: done before" in log
    card = json.loads((out / "sae/layers.1/thinksae.json").read_text())
    assert card["training"]["epochs"] == 2


def test_interrupted_anywhere_the_next_run_gives_the_same_report(reference, monkeypatch, capsys):
    """Ctrl-C inside corpus, harvest and train, and between every stage's output and its marker;
    each time the same command again; the final report is byte-identical to an uninterrupted
    run's (the same run directory, so paths match too)."""
    config, out, ref_report = reference
    saved = out.with_name("reference-copy")
    shutil.copytree(out, saved)
    shutil.rmtree(out)
    path = out.with_name("interrupted.yaml")
    import thinksae.corpus.generate as generate
    import thinksae.store.run as harvest_mod
    from thinksae.train.trainer import Trainer

    def once(target, name, wrapper):
        original = getattr(target, name)
        state = {"fired": False}

        def patched(*args, **kwargs):
            if state["fired"]:
                return original(*args, **kwargs)
            return wrapper(state, original, *args, **kwargs)
        monkeypatch.setattr(target, name, patched)

    def after_first_call(state, original, *args, **kwargs):
        original(*args, **kwargs)
        state["fired"] = True
        raise KeyboardInterrupt

    def stop_at_step_3(state, original, self, x):
        original(self, x)
        if self.step == 3:
            state["fired"] = True
            self.stop_requested = True  # what the SIGINT handler sets

    real_run_stage = run_module.run_stage

    def interrupt_after(stage):
        def fake(name, stage_dir, cfg, digest, action, log):
            if name != stage:
                return real_run_stage(name, stage_dir, cfg, digest, action, log)

            def action_then_ctrl_c():
                action()
                raise KeyboardInterrupt  # output written, marker not yet "done"
            return real_run_stage(name, stage_dir, cfg, digest, action_then_ctrl_c, log)
        monkeypatch.setattr(run_module, "run_stage", fake)

    plans = [
        lambda: once(generate, "append_traces", after_first_call),
        lambda: interrupt_after("corpus"),
        lambda: once(harvest_mod, "write_shard", after_first_call),
        lambda: once(Trainer, "train_step", stop_at_step_3),
        lambda: interrupt_after("train"),
        lambda: interrupt_after("eval"),
        lambda: interrupt_after("splice"),
        lambda: interrupt_after("analyze"),
        lambda: interrupt_after("steer"),
        lambda: interrupt_after("monitor"),
    ]
    path.write_text(yaml.safe_dump(config))
    for plan in plans:
        monkeypatch.undo()
        plan()
        capsys.readouterr()
        assert main(["run", str(path), "--progress", "false"]) == 130
    monkeypatch.undo()
    assert main(["run", str(path), "--progress", "false"]) == 0
    assert report_bytes(out) == ref_report
    assert (out / "features/features.jsonl").read_bytes() == \
        (saved / "features/features.jsonl").read_bytes()
    assert (out / "corpus/traces.jsonl").read_bytes() == (saved / "corpus/traces.jsonl").read_bytes()
    shutil.rmtree(out)
    shutil.move(saved, out)


@pytest.mark.parametrize("edit, message", [
    ({"colour": 1}, "unknown key 'colour'"),
    ({"train": {"epoch": 2}}, "unknown option train.epoch"),
    ({"train": {"sae": {"latents": 8}}}, "unknown option train.sae.latents"),
    ({"harvest": {"out": "x"}}, "harvest.out is set by `thinksae run` itself"),
    ({"analyze": None}, "stage 'analyze' cannot be turned off"),
    ({"eval": [1]}, "'eval' must be a mapping"),
    ({"steer": {"limit": 2}}, "steer needs `sweep`"),
    ({"steer": {"sweep": ["0"], "feature": "top:lens"}}, "steer.feature 'top:lens': use top:<score>"),
    ({"monitor": {"rule": {"feature": "top:x"}}}, "monitor.rule.feature 'top:x'"),
    ({"model": None}, "`model` is required"),
])
def test_bad_configs_fail_in_one_line_before_anything_is_written(
        tmp_path, tiny_model_dir, capsys, edit, message):
    config = {**tiny_config(tmp_path / "run", tiny_model_dir), **edit}
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(config))
    assert main(["run", str(path)]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    assert not (tmp_path / "run").exists()


def test_unreadable_configs_and_presets(tmp_path, capsys):
    (tmp_path / "list.yaml").write_text("- 1\n")
    (tmp_path / "broken.yaml").write_text("name: [\n")
    cases = [([str(tmp_path / "missing.yaml")], "cannot read config"),
             ([str(tmp_path / "list.yaml")], "expected a mapping"),
             ([str(tmp_path / "broken.yaml")], "is not valid YAML"),
             (["--preset", "nope"],
              "unknown preset 'nope' (presets: offline-demo, r1-distill-1.5b, seed-study)"),
             ([], "give a config file or --preset")]
    for argv, message in cases:
        assert main(["run", *argv]) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1


@pytest.mark.parametrize("preset", ["offline-demo", "r1-distill-1.5b"])
def test_presets_resolve_and_show_config_round_trips(preset, tmp_path, capsys):
    assert main(["run", "--preset", preset, "--show_config", "--out", str(tmp_path / "o")]) == 0
    shown = capsys.readouterr().out
    path = tmp_path / "shown.yaml"
    path.write_text(shown)
    spec = resolve(str(path))
    assert spec.to_dict() == yaml.safe_load(shown) and spec.out == str(tmp_path / "o")
    assert spec.hookpoint == "layers.10" and not (tmp_path / "o").exists()
    if preset == "r1-distill-1.5b":
        assert spec.model == "deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B"
    else:
        assert spec.model == "offline"
    # a config file that builds on the preset changes only what it names
    path.write_text(yaml.safe_dump({"preset": preset, "train": {"epochs": 3}}))
    over = resolve(str(path))
    assert over.stages["train"]["epochs"] == 3
    assert over.stages["train"]["sae"] == spec.stages["train"]["sae"]


def test_pick_feature_prefers_think_specific_content():
    from thinksae.pipeline import pick_feature

    def row(i, label, **kw):
        return {"feature": i, "label": label, "freq": 0.1, "think_specific": False,
                "think_rate_ratio": 1.0, "think_rate_ratio_lo": 0.5, "reason_score": 0.0, **kw}
    rows = [row(0, "formatting", think_specific=True, think_rate_ratio=9, think_rate_ratio_lo=8),
            row(1, "narrow", think_specific=True, think_rate_ratio=3, think_rate_ratio_lo=2),
            row(2, "polysemantic", think_specific=True, think_rate_ratio=5, think_rate_ratio_lo=1.5),
            row(3, "monosemantic", reason_score=0.4)]
    assert pick_feature(rows)[0] == 1
    assert pick_feature(rows[3:])[0] == 3
    assert pick_feature([row(4, "narrow", freq=0.2), row(5, "narrow", freq=0.3)])[0] == 5
    with pytest.raises(Exception, match="no live content feature"):
        pick_feature([row(6, "dead"), row(7, "formatting")])
    assert pick_feature(rows, "top:reason_score")[0] == 3
    assert pick_feature(rows, "top:think_rate_ratio")[0] == 2  # formatting feature 0 left out
    with pytest.raises(Exception, match="no live content feature has a lens"):
        pick_feature(rows, "top:lens")


def test_pipeline_api_matches_the_cli(reference, tmp_path):
    config, out, ref_report = reference
    copy = tmp_path / "run"
    shutil.copytree(out, copy)
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({**config, "out": str(copy)}))
    index = Pipeline(resolve(str(path)), progress=False).run()
    assert index == copy / "index.html" and index.read_text().count("<h2") >= 5


def test_validate_and_explain_stages_reach_the_report_and_the_dashboard(
        tmp_path, tiny_model_dir, monkeypatch):
    """A run with `validate:` and `explain:` sections (a scripted explainer around the tiny model,
    the tiny model as scorer): both sections in report.json and summary.md, the run's verdicts
    and explanations on the analysis dashboard, and features.jsonl untouched by them."""

    sys.path.insert(0, str(Path(__file__).parent))
    from helpers_explain import ScriptedModel

    from thinksae.explain import run as explain_run
    from thinksae.explain.explainers import LocalExplainer

    def scripted(cfg, get_model):
        model, tok = get_model(cfg.explainer)
        return LocalExplainer(ScriptedModel(model, tok), tok, name=cfg.explainer,
                              max_new_tokens=cfg.max_new_tokens, batch_size=cfg.batch_size)

    monkeypatch.setattr(explain_run, "_explainer", scripted)
    config = tiny_config(tmp_path / "run", tiny_model_dir)
    # trained on every token as before the sink rule: with special tokens left out, the two most
    # frequent features of the tiny random model can lack held-out activating or silent excerpts
    # (explain scores AUROC None without both classes)
    config = {**config, "train": {**config["train"], "drop_sinks": False}, "splice": None,
              "steer": None, "monitor": None,
              "validate": {"top": 2, "bootstrap": 20, "batch_size": 2, "max_traces": 2},
              "explain": {"explainer": str(tiny_model_dir), "top": 2, "by": "fires", "min_fires": 1,
                          "n_score": 4, "bins": 2, "batch_size": 2, "scorers": "detection"}}
    run_config(tmp_path / "run.yaml", config)
    out = tmp_path / "run"
    report = json.loads((out / "report.json").read_text())
    verdicts = report["validate"]["rows"]
    assert len(verdicts) == report["validate"]["features"] > 0
    x = report["explain"]
    assert x["features"] == 2 and x["scorers"] == ["detection"]
    for row in x["rows"]:
        assert row["explanation"] == f"says {row['feature']}" and row["baseline"].startswith("fires on")
        assert 0 <= row["llm_detection_auroc"] <= 1 and 0 <= row["baseline_detection_auroc"] <= 1
    c = x["compare"]["detection"]
    mean = sum(r["llm_detection_auroc"] for r in x["rows"]) / 2
    assert c["n"] == 2 and c["llm"] == pytest.approx(mean) and c["llm_better"] == (c["llm"] > c["baseline"])
    summary = (out / "summary.md").read_text()
    assert "## Explanations: LLM vs the no-LLM baseline" in summary
    assert ("the LLM beat the baseline" if c["llm_better"] else "did not beat") in summary
    assert 'id="explain"' in (out / "index.html").read_text()
    index = (out / "features/dashboard/index.html").read_text()
    assert f'"verdict": "{verdicts[0]["verdict"]}"' in index
    assert f"says {x['rows'][0]['feature']}" in index
    page = out / f"features/dashboard/feature-{x['rows'][0]['feature']}.html"
    assert page.is_file() and 'id="explanation"' in page.read_text()
    assert not (out / "features/explain").exists() and not (out / "features/validate").exists()
    assert all("explanation" not in json.loads(line)
               for line in (out / "features/features.jsonl").read_text().splitlines())


def test_every_stage_command_takes_the_run_directory(reference, tiny_model_dir, capsys):
    """`thinksae <stage> --run DIR` with no other path: the SAE, store, analysis and model come
    from the run's run_config.json, and each command writes into DIR/cli/<command> (the run's own
    stage folders stay as `thinksae run` left them)."""
    _, out, _ = reference
    import torch

    for record in (out / "run_config.json", out / "sae" / "layers.1" / "thinksae.json"):
        versions = json.loads(record.read_text())["versions"]  # the stack that made the run
        assert versions["torch"] == torch.__version__ and versions["python"].count(".") == 2
    run = ["--run", str(out)]
    quiet = ["--progress", "false", "--device", "cpu", "--dtype", "float32"]
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
    commands = {
        "eval": ["eval", *run, *quiet],
        "analyze": ["analyze", *run, "--min_fires", "2", "--top_n", "3", "--max_pages", "2", *quiet],
        "validate": ["validate", *run, "--top", "1", "--max_traces", "1", "--max_length", "32",
                     "--prompts", "2", "--bootstrap", "20", "--attribution_top", "2", *quiet],
        "explain": ["explain", *run, "--explainer", str(tiny_model_dir), "--top", "1",
                    "--contexts", "2", "--n_score", "2", "--max_new_tokens", "4",
                    "--scorers", "detection", *quiet],
        "steer": ["steer", *run, "--feature", "3=0", "--limit", "1", "--max_new_tokens", "3",
                  "--show", "0", *quiet],
        "monitor": ["monitor", *run, "--features", "3", "--prompt", "What is 2+2?",
                    "--max_new_tokens", "3", "--nolive", "--alert_log", "", "--device", "cpu",
                    "--dtype", "float32"],
    }
    for name, argv in commands.items():
        capsys.readouterr()
        assert main(argv) == 0, (name, capsys.readouterr().err)
    written = {p.relative_to(out / "cli").parts[0] for p in (out / "cli").rglob("*") if p.is_file()}
    assert written == {"eval", "analyze", "validate", "explain", "steer"}  # monitor only prints
    assert json.loads((out / "cli" / "eval" / "eval.json").read_text())["sae"] == \
        str(out / "sae" / "layers.1")
    changed = [str(p) for p, t in before.items() if p.stat().st_mtime_ns != t]
    assert changed == [str(out / "sae" / "layers.1" / "thinksae.json")]  # eval's report card only
    capsys.readouterr()
    assert main(["steer", "--feature", "3=0"]) == 2
    assert "give --sae (an SAE directory) or --run" in capsys.readouterr().err
