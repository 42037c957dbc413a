"""`thinksae validate --protocol ma2026|both` on a hand-made run directory (the tiny fixture, an SAE
at the embeddings with a planted " Wait" detector): ours and Ma et al.'s verdicts side by side
through the command line, the agreement counts and level table on hand-made cases, bad inputs
(one line, exit 2, nothing written, no model loaded), and the validate stage hash of old run
directories."""

from __future__ import annotations

import dataclasses
import json
import shutil

import pytest
import torch

from thinksae.cli import main
from thinksae.config import to_dict
from thinksae.features import AnalyzeConfig, analyze
from thinksae.pipeline.markers import stage_hash
from thinksae.sae import Sae, SaeConfig
from thinksae.sae.formats import save_sparsify
from thinksae.store import ActivationStore, HarvestConfig, harvest
from thinksae.validate import ValidateConfig
from thinksae.validate.ma2026 import PAPER
from thinksae.validate.side_by_side import agreement, levels_rows, side_by_side_rows

WAIT = 13824  # " Wait" in the R1 tokenizer
DETECTOR = 0
QUIET = ["--progress", "false", "--device", "cpu", "--dtype", "float32"]
THEIRS = ["--n_texts", "40", "--n_injection_texts", "8", "--max_tokens", "16",
          "--top_candidates", "2", "--strategies", "prepend,replace", "--top_tokens", "4",
          "--texts_per_batch", "32"]
OURS = ["--top", "1", "--features", "0", "--max_traces", "1", "--max_length", "32", "--prompts",
        "1", "--bootstrap", "20", "--attribution_top", "1"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, corpus_path, tiny_model, tiny_model_dir, tokenizer, one_thread):
    """A run directory as `thinksae run` lays it out: run_config.json, corpus/traces.jsonl,
    store/embed_tokens, sae/embed_tokens (8 latents, latent 0 fires 2.0 on " Wait"), features/."""
    root = tmp_path_factory.mktemp("protocols") / "run"
    (root / "corpus").mkdir(parents=True)
    shutil.copy(corpus_path, root / "corpus" / "traces.jsonl")
    (root / "run_config.json").write_text(json.dumps({"hookpoint": "embed_tokens",
                                                      "model": str(tiny_model_dir)}))
    store_dir, = harvest(HarvestConfig(model="tiny", corpus=str(root / "corpus" / "traces.jsonl"),
                                       hookpoint="embed_tokens", out=str(root / "store"),
                                       device="cpu", dtype="float32", batch_size=3, progress=False),
                         tiny_model, tokenizer)
    emb = tiny_model.get_input_embeddings().weight.detach()
    torch.manual_seed(0)
    sae = Sae(emb.shape[1], SaeConfig(num_latents=8, k=4))
    with torch.no_grad():
        sae.b_dec.zero_()
        e = emb[WAIT]
        sae.encoder.weight[DETECTOR] = 10 * e / e.norm() ** 2  # 10 on " Wait"
        sae.encoder.bias[DETECTOR] = -8.0  # fires (2.0) on it alone
    sae_dir = root / "sae" / "embed_tokens"
    save_sparsify(sae, sae_dir)
    (sae_dir / "thinksae.json").write_text(json.dumps({
        "hookpoint": "embed_tokens", "training": {"holdout": 0.5},
        "data": {"hash": ActivationStore(store_dir).hash, "heldout_traces": ["t0", "t2", "t4"]}}))
    analyze(AnalyzeConfig(sae=str(sae_dir), store=str(store_dir), out=str(root / "features"),
                          min_fires=1, logit_lens=False, progress=False, device="cpu",
                          dashboard=False), tokenizer=tokenizer)
    return root


@pytest.fixture(scope="module")
def both(run_dir):
    """`thinksae validate --run DIR --protocol both` with tiny sizes (the run's thinking makes
    fewer than 40 reasoning pieces: all are used, with a warning)."""
    with pytest.warns(UserWarning, match=r"reasoning set: \d+ texts, fewer than --n_texts 40"):
        assert main(["validate", "--run", str(run_dir), "--protocol", "both", *OURS, *THEIRS,
                     *QUIET]) == 0
    out = run_dir / "cli" / "validate"
    return out, json.loads((out / "validation.json").read_text())


def test_both_protocols_through_the_command_line(both, run_dir):
    out, summary = both
    assert {p.name for p in out.iterdir()} == {"verdicts.jsonl", "validation.json", "ma2026.json",
                                               "ma2026.md", "side_by_side.md"}
    ours = {json.loads(line)["feature"]: json.loads(line)["verdict"]
            for line in (out / "verdicts.jsonl").read_text().splitlines()}
    assert DETECTOR in ours and summary["protocol"] == "both" and summary["counts"]
    m = summary["ma2026"]
    store = ActivationStore(run_dir / "store" / "embed_tokens")
    assert m["median_norm"] == pytest.approx(store.sink_rule.median_norm) and m["mask"] == "sinks"
    assert m["sources"]["reasoning"]["path"] == str(run_dir / "corpus" / "traces.jsonl")
    assert m["sources"]["nonreasoning_packaged"] is True
    assert m["texts"]["nonreasoning"] == 40 and m["texts"]["injection"] == 8
    assert 0 < m["texts"]["reasoning"] < 40 and "fewer than --n_texts 40" in m["notes"][0]
    theirs = {f["feature"]: f for f in json.loads((out / "ma2026.json").read_text())["features"]}
    assert set(ours) <= set(theirs)  # their protocol judged every candidate of ours ...
    assert all("named" in theirs[f]["why"] for f in ours)
    assert any(w.startswith("selected") for w in theirs[DETECTOR]["why"])  # ... and selected this
    assert theirs[DETECTOR]["top_tokens"][0]["text"] == " Wait"
    effects = theirs[DETECTOR]["strategies"]
    assert set(effects) == {"prepend", "replace"} and all(e["n"] == 8 for e in effects.values())
    assert theirs[DETECTOR]["best_strategy"] == max(effects, key=lambda s: effects[s]["d"])
    judged = sum(1 for f in theirs.values() if f["strategies"])
    assert m["forward_texts"] == m["texts"]["reasoning"] + 40 + 8 * (2 + 2 * judged)
    side = summary["side_by_side"]
    assert [r["feature"] for r in side["rows"]] == sorted(ours)
    for r in side["rows"]:
        assert r["ours"] == ours[r["feature"]] and r["theirs"] == theirs[r["feature"]]["verdict"]
    assert side["agreement"] == agreement(side["rows"])
    assert m["levels"]["ours"]["judged"] == sum(1 for f in ours if theirs[f]["verdict"])
    md = (out / "side_by_side.md").read_text()
    assert f"| {DETECTOR} | {ours[DETECTOR]} | {theirs[DETECTOR]['verdict']} |" in md
    assert "| token-driven at some level |" in md and "77%–95%" in md


def test_their_protocol_beside_earlier_verdicts_and_both_masks(both, run_dir, tmp_path):
    """--protocol ma2026 --our_verdicts: our tests do not run again; the earlier verdicts and
    their numbers are carried over; --compare_masking counts the verdicts the mask changes."""
    out, first = both
    again = tmp_path / "again"
    with pytest.warns(UserWarning, match="fewer than --n_texts"):
        assert main(["validate", "--run", str(run_dir), "--protocol", "ma2026", "--our_verdicts",
                     str(out), "--compare_masking", "--out", str(again), *THEIRS, *QUIET]) == 0
    summary = json.loads((again / "validation.json").read_text())
    assert summary["protocol"] == "ma2026" and summary["ours_from"] == str(out)
    assert summary["counts"] == first["counts"] and summary["traces"] == first["traces"]
    assert (again / "verdicts.jsonl").read_text() == (out / "verdicts.jsonl").read_text()
    cmp = json.loads((again / "ma2026_masking.json").read_text())
    assert summary["ma2026"]["masking"]["changed"] == cmp["changed"] == sum(
        r["sinks"] != r["ma2026"] for r in cmp["rows"])
    # the same options and seed: the sinks run judges our candidates as the first command did
    before = {r["feature"]: r["theirs"] for r in first["side_by_side"]["rows"]}
    assert {r["feature"]: r["theirs"] for r in summary["side_by_side"]["rows"]} == before
    assert f"changes {cmp['changed']} of" in (again / "side_by_side.md").read_text()


def test_their_protocol_alone(run_dir, tmp_path):
    """--protocol ma2026 with no verdicts of ours: their files and validation.json only (no
    verdicts.jsonl, no side-by-side table); the named feature is judged; the report shows
    their levels and no table of ours."""
    out = tmp_path / "run" / "validate"
    with pytest.warns(UserWarning, match="fewer than --n_texts"):
        assert main(["validate", "--run", str(run_dir), "--protocol", "ma2026", "--features", "3",
                     "--mask", "ma2026", "--out", str(out), *THEIRS, *QUIET]) == 0
    assert {p.name for p in out.iterdir()} == {"validation.json", "ma2026.json", "ma2026.md"}
    summary = json.loads((out / "validation.json").read_text())
    assert summary["protocol"] == "ma2026" and "counts" not in summary
    assert "side_by_side" not in summary and summary["ma2026"]["levels"]["ours"] is None
    assert summary["ma2026"]["mask"] == "ma2026"
    theirs = json.loads((out / "ma2026.json").read_text())
    assert theirs["options"]["mask"] == "ma2026" and theirs["options"]["features"] == [3]
    assert "named" in next(f for f in theirs["features"] if f["feature"] == 3)["why"]
    (out / "stage.json").write_text('{"status": "done", "hash": "x"}')
    md, html = _render(out.parent)
    assert "### Ma et al.'s token injection" in md and "| their selection (n = " in md
    assert "| feature | verdict |" not in md and "<h3>Our verdicts" not in html


def _render(root) -> tuple[str, str]:
    """The pipeline report's validate section of the run directory ``root`` (summary.md, index.html
    parts), rendered as `write_report` renders it."""
    from jinja2 import Environment, PackageLoader, select_autoescape

    from thinksae.pipeline import report

    env = Environment(loader=PackageLoader("thinksae.pipeline", "templates"),
                      autoescape=select_autoescape(["html"]), trim_blocks=True, lstrip_blocks=True)
    env.filters["num"], env.filters["tok"] = report._num, report._token
    data = {"validate": report._validate_section(root)}
    return tuple(env.get_template(name).render(r=data) for name in ("validate.md.j2",
                                                                     "validate.html.j2"))


def test_the_pipeline_report_shows_both(both, tmp_path):
    out, summary = both
    root = tmp_path / "run"
    shutil.copytree(out, root / "validate")
    (root / "validate" / "stage.json").write_text('{"status": "done", "hash": "x"}')
    md, html = _render(root)
    a = summary["side_by_side"]["agreement"]
    assert "## Validation: reasoning feature or token detector?" in md
    assert f"{summary['features']} candidates on {summary['traces']} traces" in md  # ours
    assert "### Ma et al.'s token injection" in md and "[ma2026.md](validate/ma2026.md)" in md
    assert "| token-driven at some level |" in md and "| 77%–95% |" in md
    assert (f"of the features they find context-dependent, {a['context_dependent_token_detector']['k']}"
            f" of {a['context_dependent_token_detector']['n']} are token detectors") in md
    for r in summary["side_by_side"]["rows"]:
        assert f"| {r['feature']} | {r['ours']} | {r['theirs']} |" in md
        assert f"<tr><td>{r['feature']}</td><td>{r['ours']}</td><td>{r['theirs']}</td>" in html
    levels = md.split("| level |")[1].split("###")[0].strip()
    assert "<th>paper</th>" in html and "\n\n" not in levels  # one Markdown table: no blank line
    summary = {k: v for k, v in summary.items() if k not in ("ma2026", "side_by_side")}
    (root / "validate" / "validation.json").write_text(json.dumps(summary))  # ours alone
    md, html = _render(root)
    assert "Ma et al." not in md and "side by side" not in html and "| feature | verdict |" in md


def test_agreement_counts_by_hand():
    ours = {1: "reasoning candidate", 2: "reasoning candidate", 3: "reasoning candidate",
            4: "token detector", 5: "token detector", 6: "no measurable effect", 7: "formatting",
            8: "token detector"}
    theirs = {1: {"verdict": "token_driven", "why": ["named"], "best_strategy": "prepend",
                  "best_d": 1.2, "best_p": 1e-4},
              2: {"verdict": "weakly_token_driven", "why": ["selected#1", "named"]},
              3: {"verdict": "context_dependent", "why": ["named"]},
              4: {"verdict": "partially_token_driven", "why": ["named"]},
              5: {"verdict": "context_dependent", "why": ["named"]},
              6: {"verdict": "context_dependent", "why": ["named"]},
              7: {"verdict": "token_driven", "why": ["named"]},
              8: {"verdict": None, "skipped": "2 top tokens (< 3)", "why": ["named"]}}
    rows = side_by_side_rows(ours, theirs)
    assert [r["selected_by_them"] for r in rows] == [False, True] + [False] * 6
    assert rows[0]["best_strategy"] == "prepend" and rows[7]["skipped"] == "2 top tokens (< 3)"
    a = agreement(rows)
    assert a["compared"] == 7  # feature 8: they skipped it
    # reasoning candidates 1, 2, 3: 1 (token_driven) and 2 (weakly) are token-driven at some level
    assert a["reasoning_token_driven"] == {"k": 2, "n": 3, "fraction": pytest.approx(2 / 3)}
    # context-dependent 3, 5, 6: only 5 is a token detector of ours; 3 a reasoning candidate
    assert a["context_dependent_token_detector"] == {"k": 1, "n": 3, "fraction": pytest.approx(1 / 3)}
    assert a["context_dependent_reasoning"] == {"k": 1, "n": 3, "fraction": pytest.approx(1 / 3)}
    # token detectors 4, 5 (8 skipped): 4 is partially token-driven
    assert a["token_detector_token_driven"] == {"k": 1, "n": 2, "fraction": 0.5}
    # "token-driven?" over 1..5: agree on 3 (both no) and 4 (both yes) = 2 of 5
    assert a["agree"] == {"k": 2, "n": 5, "fraction": 0.4}
    assert a["crosstab"]["reasoning candidate"] == {"token_driven": 1, "weakly_token_driven": 1,
                                                    "context_dependent": 1}
    assert sum(sum(v.values()) for v in a["crosstab"].values()) == 7
    none = agreement(side_by_side_rows({1: "token detector"}, {}))
    assert none["compared"] == 0 and none["agree"] == {"k": 0, "n": 0, "fraction": None}


def test_level_table_cells():
    def share(fr, any_level, prepend, judged):
        return {"judged": judged, "fractions": fr, "token_driven_any_level": any_level,
                "best_strategy_share": {"prepend": prepend}}
    sel = share({"token_driven": 0.5, "partially_token_driven": 0.25, "weakly_token_driven": 0.0,
                 "context_dependent": 0.25}, 0.75, 0.5, 4)
    header, rows = levels_rows({"selected": sel, "ours": None, "paper": PAPER})
    assert header == ["level", "their selection (n = 4)", "paper"]
    assert rows[0] == ["token_driven", "50.0%", ""] and rows[3] == ["context_dependent", "25.0%", ""]
    assert rows[4] == ["token-driven at some level", "75.0%", "77%–95%"]
    assert rows[5] == ["prepend the best strategy", "50.0%", "69.7%"]
    empty = share(dict.fromkeys(sel["fractions"]), None, None, 0)
    header, rows = levels_rows({"selected": sel, "ours": empty, "paper": PAPER})
    assert header[2] == "our candidates (n = 0)" and rows[4][2] == "–"


def _fails(capsys, args, says):
    capsys.readouterr()
    assert main(["validate", *args, *QUIET]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and says in err, err


def test_bad_inputs_one_line_exit_2_nothing_written_no_model(run_dir, tmp_path, capsys,
                                                             monkeypatch):
    import thinksae.binding

    def no_model(*a, **k):
        raise AssertionError("the model was loaded")
    monkeypatch.setattr(thinksae.binding, "load_model", no_model)
    empty, bad, one = tmp_path / "empty.jsonl", tmp_path / "bad.jsonl", tmp_path / "one.txt"
    empty.write_text("\n")
    bad.write_text('{"text": "fine"}\nnot json\n')
    one.write_text("Only one paragraph of plain prose.\n")
    out = tmp_path / "out"
    common = ["--run", str(run_dir), "--out", str(out), *OURS, *THEIRS]
    for extra, says in ((["--protocol", "nope"], "unknown --protocol 'nope'"),
                        (["--protocol", "both", "--strategies", "prepend,warp"],
                         "unknown injection strategy 'warp'"),
                        (["--protocol", "ma2026", "--mask", "none"], "unknown masking mode"),
                        (["--protocol", "both", "--nonreasoning", str(empty)], "holds no text"),
                        (["--protocol", "both", "--nonreasoning", str(bad)], "bad.jsonl:2: not valid JSON"),
                        (["--protocol", "ma2026", "--nonreasoning", str(one)], "too few texts"),
                        (["--protocol", "ma2026", "--n_texts", "3"], "no latent can reach"),
                        (["--protocol", "both", "--traces", str(tmp_path / "none.jsonl")],
                         "traces not found"),
                        (["--protocol", "thinksae", "--our_verdicts", str(tmp_path)],
                         "--our_verdicts goes with --protocol ma2026"),
                        (["--protocol", "ma2026", "--our_verdicts", str(tmp_path)],
                         "no verdicts.jsonl")):
        _fails(capsys, [*common, *extra], says)
        assert not out.exists()
    out.mkdir()
    (out / "verdicts.jsonl").write_text('{"feature": 0, "verdict": "token detector"}\n')
    _fails(capsys, [*common, "--protocol", "ma2026"], "holds our verdicts of an earlier validation")
    assert [p.name for p in out.iterdir()] == ["verdicts.jsonl"]


def test_old_run_directories_keep_their_validate_hash():
    """The fields added with the protocols hold their old-behaviour values by default: the
    validate stage hash is that of the config before them (pipeline ADDED_LATER)."""
    added = {"protocol", "traces", "nonreasoning", "text_field", "our_verdicts", "compare_masking",
             *(f.name for f in dataclasses.fields(type(ValidateConfig().ma2026)))}
    cfg = ValidateConfig(top=10, max_traces=6, max_length=256, attribution_top=10)
    old = {k: v for k, v in to_dict(cfg).items() if k not in added and k != "run"}
    Old = dataclasses.make_dataclass("Old", [(k, object, dataclasses.field(default=v))
                                             for k, v in old.items()])
    assert stage_hash("validate", cfg, ["a", "b"]) == stage_hash("validate", Old(), ["a", "b"])
    both = dataclasses.replace(cfg, protocol="both")
    assert stage_hash("validate", both, ["a", "b"]) != stage_hash("validate", cfg, ["a", "b"])
    fewer = dataclasses.replace(both, ma2026=dataclasses.replace(both.ma2026, n_texts=128))
    assert stage_hash("validate", fewer, ["a", "b"]) != stage_hash("validate", both, ["a", "b"])


def test_the_pipeline_gives_their_protocol_the_runs_traces(tmp_path, monkeypatch):
    """`validate: {protocol: both}` in a pipeline config: the stage's reasoning set is the run's
    own traces; with the default protocol the stage config (and hash) has no traces."""
    import yaml

    import thinksae.pipeline.run as run_module
    from thinksae.pipeline import Pipeline, resolve

    seen = {}

    def record(name, stage_dir, cfg, digest, action, log):
        seen[name] = cfg
        return False
    monkeypatch.setattr(run_module, "run_stage", record)
    monkeypatch.setattr(run_module, "write_report", lambda root, sae_dir=None: root)
    for section, traces in (({"protocol": "both", "n_texts": 128}, "corpus/traces.jsonl"),
                            ({"top": 3}, None)):
        spec = {"name": "t", "out": str(tmp_path / "run"), "model": "m", "hookpoint": "layers.1",
                "steer": None, "monitor": None, "validate": section}
        (tmp_path / "spec.yaml").write_text(yaml.safe_dump(spec))
        Pipeline(resolve(str(tmp_path / "spec.yaml")), progress=False).run()
        cfg = seen["validate"]
        assert cfg.traces == (str(tmp_path / "run" / traces) if traces else None)
        assert cfg.ma2026.n_texts == section.get("n_texts", 256)
