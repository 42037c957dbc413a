"""`thinksae explain` on the tiny fixture: a scripted explainer (set text) and a real forward of the
tiny model as scorer. Prompts, held-out contexts, scores by hand, cache/resume, <think> stripping,
dashboard/card, delphi files, bad input (one line, exit 2)."""

from __future__ import annotations

import json
import random
import shutil

import numpy as np
import pytest
import torch
from helpers_explain import ScriptedModel

from thinksae.annotations import find_annotations, refresh_dashboard
from thinksae.cli import main
from thinksae.errors import ThinksaeError
from thinksae.explain import ExplainConfig, explain, read_explanations
from thinksae.explain.contexts import heldout_contexts, shown_contexts
from thinksae.explain.delphi import read_delphi
from thinksae.explain.prompts import (
    Context,
    detection_prompt,
    explainer_prompt,
    parse_explanation,
    render,
    strip_think,
)
from thinksae.explain.scorers import (
    DetectionScorer,
    FuzzingScorer,
    HeldOut,
    LMJudge,
    auroc,
    balanced_accuracy,
)
from thinksae.features import AnalyzeConfig, analyze
from thinksae.sae import Sae, SaeConfig
from thinksae.sae.formats import load_sparsify, save_sparsify
from thinksae.store import ActivationStore, HarvestConfig, harvest

pytestmark = pytest.mark.usefixtures("one_thread")
QUIET = dict(progress=False, device="cpu", dtype="float32")


@pytest.fixture(scope="module")
def built(tmp_path_factory, corpus_path, tiny_model, tokenizer):
    root = tmp_path_factory.mktemp("explain")
    (store,) = harvest(HarvestConfig(model="tiny", corpus=str(corpus_path), hookpoint="layers.1",
                                     out=str(root / "store"), device="cpu", dtype="float32",
                                     progress=False), tiny_model, tokenizer)
    torch.manual_seed(3)
    save_sparsify(Sae(64, SaeConfig(num_latents=24, k=4)), root / "sae" / "layers.1")
    out = analyze(AnalyzeConfig(sae=str(root / "sae"), store=str(store), out=str(root / "analysis"),
                                top_n=4, window=3, progress=False, device="cpu"),
                  model=tiny_model, tokenizer=tokenizer)
    return root, out, store


@pytest.fixture
def analysis(built, tmp_path):
    """A fresh copy of the analysis directory (explain writes into it)."""
    dst = tmp_path / "analysis"
    shutil.copytree(built[1], dst)
    return dst


def _cfg(analysis, **kw):
    base = dict(analysis=str(analysis), top=3, by="fires", n_score=6, bins=3, batch_size=2,
                explainer="scripted")
    return ExplainConfig(**(base | QUIET | kw))


def _strings(analysis):
    return json.loads((analysis / "vocab.json").read_text())


def test_render_marks_tokens_and_joins_adjacent_marks():
    ctx = Context(["a", " b", " c", "\n", " d"], [0, 1, 2, 0, 3], 2, 0, 7, 1)
    assert render(ctx) == "a b c↵ d"
    assert render(ctx, {1, 2, 4}) == "a<< b c>>↵<< d>>"


def test_prompt_holds_the_marked_top_contexts(analysis):
    rows = [json.loads(x) for x in (analysis / "features.jsonl").read_text().splitlines()]
    f = max(rows, key=lambda r: r["fires"])["feature"]
    ctxs, det = shown_contexts(analysis / "stats.safetensors", f, _strings(analysis), 10)
    assert len(ctxs) == 4
    prompt = explainer_prompt(f, ctxs, rows[f], det)
    for c in ctxs:  # the trigger token sits inside its marks, the context is whole
        assert c.acts[c.centre] > 0 and render(c, {j for j, a in enumerate(c.acts) if a > 0}) in prompt
    assert f"Feature {f}." in prompt and "Explanation:" in prompt
    assert repr(det["tokens"][0]["text"].replace("\n", "↵")) in prompt  # trigger-token shares
    assert "think" in prompt and "logit lens" in prompt  # regions, lens


def test_strip_think_and_parse():
    assert strip_think("<think>a\nb</think>\nFine") == "\nFine"
    assert strip_think("still thinking", opened=True) == ""
    assert strip_think("<think>never closed") == ""
    assert parse_explanation("<think>x</think>\nblah\nExplanation: \"the word wait\"") == "the word wait"
    assert parse_explanation("counting words\nmore") == "counting words"
    with pytest.raises(ThinksaeError, match="no answer after its thinking"):
        parse_explanation("reasoning…", opened_think=True)


def test_metrics_by_hand():
    labels = [True, True, False, False]
    # pairs (pos, neg): 3>2, 3>0, 1<2, 1>0 -> 3 of 4
    assert auroc(labels, [3.0, 1.0, 2.0, 0.0]) == 0.75
    assert auroc(labels, [1.0, 1.0, 1.0, 0.0]) == 0.75  # ties count 1/2: (0.5 + 1) * 2 / 4
    # predictions score > 0: TPR 2/2, TNR 1/2 (2.0 > 0 is a false yes; 0.0 is a no)
    assert balanced_accuracy(labels, [3.0, 1.0, 2.0, 0.0]) == 0.75
    assert auroc([True], [1.0]) is None and balanced_accuracy([False], [1.0]) is None


class WordJudge:
    """A judge that says yes iff the explanation's word is in the excerpt (or at random)."""

    def __init__(self, rng=None):
        self.forwards, self.rng = 0, rng

    def yes_scores(self, prompt):
        word = prompt.prefix.split("Description: ")[1].split()[-1]
        self.forwards += len(prompt.suffixes)
        if self.rng is not None:
            return [self.rng.gauss(0, 1) for _ in prompt.suffixes]
        return [1.0 if word in s.split("Excerpt: ")[1].split("\n")[0] else -1.0 for s in prompt.suffixes]


def _toy_heldout():
    act = [Context(["x", " wait", " y"], [0.0, 2.0 + i, 0.0], 1, i, 1, 1) for i in range(10)]
    non = [Context(["x", " so", " y"], [0.0, 0.0, 0.0], 1, 10 + i, 1, 0) for i in range(10)]
    return HeldOut(act, non)


def test_perfect_explanation_scores_one_and_random_one_half():
    held = _toy_heldout()
    det = DetectionScorer(WordJudge()).score("fires on wait", held)
    assert (det.auroc, det.balanced_accuracy, det.n_pos, det.n_neg) == (1.0, 1.0, 10, 10)
    fuzz = FuzzingScorer(WordJudge()).score("fires on <<", held)  # marks around the right token
    assert fuzz.n_pos == fuzz.n_neg == 10
    assert all(("<< wait>>" in s.text) == s.activating for s in fuzz.samples)
    rng = random.Random(0)
    draws = [DetectionScorer(WordJudge(rng)).score("x", held).auroc for _ in range(300)]
    assert abs(np.mean(draws) - 0.5) < 0.03


def test_prefix_cache_gives_the_plain_forward(tiny_model, tokenizer):
    p = detection_prompt("the word wait", ["Wait, let me check.", "so", "12 apples and 3 pears here"])
    cached = LMJudge(tiny_model, tokenizer, batch_size=2).yes_scores(p)
    plain = []
    for s in p.suffixes:  # one whole sequence at a time, no cache
        ids = tokenizer.encode(p.prefix) + tokenizer.encode(s, add_special_tokens=False)
        with torch.no_grad():
            logp = torch.log_softmax(tiny_model(torch.tensor([ids])).logits[0, -1], -1)
        judge = LMJudge(tiny_model, tokenizer)
        plain.append(float(torch.logsumexp(logp[judge.yes], 0) - torch.logsumexp(logp[judge.no], 0)))
    assert np.allclose(cached, plain, atol=1e-4)


def test_heldout_contexts_avoid_shown_ones_and_match_the_sae(built, analysis):
    root, _, store_path = built
    store = ActivationStore(store_path)
    sae = load_sparsify(root / "sae" / "layers.1")
    rows = [json.loads(x) for x in (analysis / "features.jsonl").read_text().splitlines()]
    f = max(rows, key=lambda r: r["fires"])["feature"]
    ctxs, _ = shown_contexts(analysis / "stats.safetensors", f, _strings(analysis), 10)
    shown = [(c.doc, c.position) for c in ctxs]
    held = heldout_contexts(store, sae, [f], {f: shown}, _strings(analysis), 3, 6, 3, 0)[f]
    assert len(held.activating) == 6 and len(held.non_activating) == 6
    assert [c.quantile for c in held.activating] == [1, 1, 2, 2, 3, 3]  # 2 per activation bin
    assert min(c.act for c in held.activating[:2]) >= max(c.act for c in held.activating[4:])
    doc, pos = store.labels("doc_index"), store.labels("positions")
    with torch.no_grad():
        dense = sae.dense_acts(store.gather(np.arange(store.num_tokens)))[:, f]
    for c in held.activating + held.non_activating:
        assert all(not (c.doc == d and abs(c.position - p) <= 6) for d, p in shown)
        i = int(np.flatnonzero((doc == c.doc) & (pos == c.position))[0])
        want = dense[i - c.centre : i - c.centre + len(c.acts)]
        assert np.allclose(c.acts, want.numpy(), atol=1e-4)
    assert all(c.act > 0 for c in held.activating)
    assert all(max(c.acts) == 0 for c in held.non_activating)


def _lines(path):
    return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []


def test_explain_end_to_end_caches_and_resumes(analysis, tiny_model, tokenizer):
    before = (analysis / "features.jsonl").read_bytes()
    stub = ScriptedModel(tiny_model, tokenizer, fail_after=2)
    with pytest.raises(KeyboardInterrupt):  # interrupted after the first batch of two
        explain(_cfg(analysis), stub, tokenizer)
    done = _lines(analysis / "explain" / "explanations.jsonl")
    assert len(done) == 2 and all(r["explanation"] == f"says {r['feature']}" for r in done)
    stub = ScriptedModel(tiny_model, tokenizer)
    res = explain(_cfg(analysis), stub, tokenizer)
    assert len(stub.prompts) == 1  # only the feature left undone
    rows = [json.loads(x) for x in (analysis / "features.jsonl").read_text().splitlines()]
    top = [r["feature"] for r in sorted(rows, key=lambda r: (-r["fires"], r["feature"]))[:3]]
    assert [r["feature"] for r in res.rows] == top
    for r in res.rows:  # <think> stripped; every score in [0, 1]; baseline scored the same way
        assert r["explanation"] == f"says {r['feature']}" and r["baseline"].startswith("fires on: ")
        for src in ("llm", "baseline"):
            for key in ("detection_auroc", "detection_balanced_accuracy", "fuzzing_auroc"):
                assert 0 <= r[f"{src}_{key}"] <= 1
    scores = _lines(analysis / "explain" / "scores.jsonl")
    assert len(scores) == 3 * 2 * 2
    det = next(s for s in scores if s["scorer"] == "detection")
    assert det["n_pos"] == det["n_neg"] == 6 and det["forwards"] == 12 + 1  # + the shared prefix
    assert res.timing["scorer_forwards_per_feature"] == pytest.approx(sum(
        s["forwards"] for s in scores) / 3)
    # a third run reuses everything: no generation, no scorer forward, no new line
    stub = ScriptedModel(tiny_model, tokenizer)
    again = explain(_cfg(analysis), stub, tokenizer)
    assert stub.prompts == [] and again.timing["scorer_forwards"] == 0
    assert len(_lines(analysis / "explain" / "scores.jsonl")) == len(scores)
    assert again.rows == res.rows
    # the analysis is only read: read_explanations serves the dashboard, card and report
    assert (analysis / "features.jsonl").read_bytes() == before
    assert read_explanations(analysis)[top[1]]["llm_detection_auroc"] == res.rows[1]["llm_detection_auroc"]


def test_a_changed_explainer_setting_is_a_new_cache_entry(analysis, tiny_model, tokenizer):
    explain(_cfg(analysis, top=1, scorers=""), ScriptedModel(tiny_model, tokenizer), tokenizer)
    stub = ScriptedModel(tiny_model, tokenizer, reply=lambda f: "Explanation: other")
    res = explain(_cfg(analysis, top=1, scorers="", max_new_tokens=64), stub, tokenizer)
    assert len(stub.prompts) == 1 and res.rows[0]["explanation"] == "other"


def test_unfinished_thinking_is_reported_not_cached(analysis, tiny_model, tokenizer):
    stub = ScriptedModel(tiny_model, tokenizer, reply=lambda f: "<think>\nstill going")
    res = explain(_cfg(analysis, top=1, scorers="detection"), stub, tokenizer)
    assert len(res.errors) == 1 and "no answer after its thinking" in res.errors[0]
    assert res.rows[0]["explanation"] is None and res.rows[0]["baseline_detection_auroc"] is not None
    assert _lines(analysis / "explain" / "explanations.jsonl") == []


def test_dashboard_and_card_show_the_explanation(analysis, tiny_model, tokenizer, capsys):
    res = explain(_cfg(analysis, top=2, scorers="detection"), ScriptedModel(tiny_model, tokenizer),
                  tokenizer)  # no fuzzing columns: the page shows "–" for them
    f = res.rows[0]["feature"]
    assert f"says {f}" not in (analysis / "dashboard" / "index.html").read_text()  # explain: own files
    assert refresh_dashboard(analysis) == analysis / "dashboard" / "index.html"  # what the CLI does
    index = (analysis / "dashboard" / "index.html").read_text()
    assert '["explanation", "explanation"]' in index and f"says {f}" in index
    page = (analysis / "dashboard" / f"feature-{f}.html").read_text()
    assert 'id="explanation"' in page and f"<b>says {f}</b>" in page
    assert main(["feature", str(f), "--analysis", str(analysis)]) == 0
    out = capsys.readouterr().out
    assert f"explanation: says {f}" in out and "baseline" in out


def test_out_folder_leaves_the_analysis_alone(analysis, tiny_model, tokenizer, tmp_path):
    files = {p: p.read_bytes() for p in analysis.rglob("*") if p.is_file()}
    out = tmp_path / "run" / "explain"
    res = explain(_cfg(analysis, top=1, scorers="", out=str(out)), ScriptedModel(tiny_model, tokenizer),
                  tokenizer)
    assert res.out == out and (out / "summary.json").is_file()
    assert {p: p.read_bytes() for p in analysis.rglob("*") if p.is_file()} == files
    f = res.rows[0]["feature"]
    assert read_explanations(out)[f]["explanation"] == f"says {f}" and read_explanations(analysis) == {}
    assert find_annotations(analysis, explain_dir=out).explanations[f]["explanation"] == f"says {f}"


def test_dashboard_and_card_show_annotations_passed_as_data(analysis, capsys):
    """write_dashboard and feature_card read no later stage's files: the verdict and the
    explanation come in as arguments."""
    from rich.console import Console

    from thinksae.features.card import feature_card
    from thinksae.features.dashboard import write_dashboard
    from thinksae.features.report import read_features
    from thinksae.features.stats import FeatureStats

    rows = read_features(analysis)
    f = max(rows, key=lambda r: r["fires"])["feature"]
    numbers = [f"{t}{end}" for t in ("context_ratio", "injection_ratio", "ablate_dlogp", "clamp_dlogp")
               for end in ("", "_lo", "_hi")] + ["ablate_kl", "clamp_kl", "clamp_value", "attribution"]
    verdicts = {f: {**dict.fromkeys(numbers, 0.5), "feature": f, "verdict": "token detector",
                    "context_ratio": 1.25, "trigger_text": [" the"], "context_passed": False}}
    explanations = {f: {"feature": f, "explanation": "the word the", "baseline": "fires on: ' the'",
                        "llm_detection_auroc": 0.875, "baseline_detection_auroc": 0.625}}
    write_dashboard(analysis, rows, FeatureStats.load(analysis / "stats.safetensors"),
                    _strings(analysis), verdicts=verdicts, explanations=explanations)
    index = (analysis / "dashboard" / "index.html").read_text()
    assert '["verdict", "verdict"]' in index and '"verdict": "token detector"' in index
    assert '["explanation", "explanation"]' in index and "the word the" in index
    page = (analysis / "dashboard" / f"feature-{f}.html").read_text()
    assert 'id="verdict"' in page and "Validation: token detector" in page
    assert 'id="explanation"' in page and "<b>the word the</b>" in page and "0.875" in page
    console = Console(width=200, record=True)
    console.print(feature_card(analysis, f, verdicts=verdicts, explanations=explanations))
    text = console.export_text()
    assert "verdict: token detector" in text and "context_ratio 1.25" in text
    assert "explanation: the word the" in text and "0.625" in text
    bare = Console(width=200, record=True)
    bare.print(feature_card(analysis, f))
    assert "verdict" not in bare.export_text() and "explanation" not in bare.export_text()


def test_llm_vs_baseline_by_hand():
    from thinksae.pipeline.report import llm_vs_baseline

    rows = [{"llm_detection_auroc": 0.9, "baseline_detection_auroc": 0.5},
            {"llm_detection_auroc": 0.5, "baseline_detection_auroc": 0.7},
            {"llm_detection_auroc": None, "baseline_detection_auroc": 0.1}]  # not both: left out
    got = llm_vs_baseline(rows, "detection")
    assert got["n"] == 2 and got["llm"] == pytest.approx(0.7) and got["baseline"] == pytest.approx(0.6)
    assert got["llm_better"] is True
    assert llm_vs_baseline(rows, "fuzzing") == {"n": 0, "llm": None, "baseline": None, "llm_better": None}


def test_delphi_files_round_trip(analysis, tiny_model, tokenizer, tmp_path):
    d = tmp_path / "delphi"
    res = explain(_cfg(analysis, top=2, delphi_out=str(d)), ScriptedModel(tiny_model, tokenizer),
                  tokenizer)
    f = res.rows[0]["feature"]
    assert json.loads((d / "explanations" / f"layers.1_latent{f}.txt").read_text()) == f"says {f}"
    items = json.loads((d / "scores" / "detection" / f"layers.1_latent{f}.txt").read_text())
    assert set(items[0]) == {"str_tokens", "activations", "distance", "activating", "prediction",
                             "probability", "correct"}
    back = read_delphi(d, "layers.1")
    for r in res.rows:
        b = back[r["feature"]]
        assert b["explanation"] == r["explanation"]
        assert b["detection_auroc"] == pytest.approx(r["llm_detection_auroc"])
        assert b["fuzzing_balanced_accuracy"] == pytest.approx(r["llm_fuzzing_balanced_accuracy"])
    # delphi's explanations scored next to ours
    (d / "explanations" / f"layers.1_latent{f}.txt").write_text(json.dumps("from delphi"))
    res = explain(_cfg(analysis, top=2, delphi_in=str(d)), ScriptedModel(tiny_model, tokenizer),
                  tokenizer)
    row = next(r for r in res.rows if r["feature"] == f)
    assert row["delphi"] == "from delphi" and row["delphi_detection_auroc"] is not None


@pytest.mark.parametrize("args, message", [
    (["--features", "999"], "out of range"),
    (["--features", "1,x"], "comma-separated integers"),
    (["--by", "nope"], "is not a column"),
    (["--scorers", "detection,simulation"], "unknown scorer"),
    (["--endpoint", "ftp://x"], "http(s) URL"),
    (["--n_score", "0"], "--n_score must be >= 1"),
    (["--features", "1", "--all_firing", "true"], "not both"),
])
def test_bad_input_is_one_line_exit_2(analysis, capsys, args, message):
    rc = main(["explain", "--analysis", str(analysis), "--progress", "false", *args])
    err = capsys.readouterr().err
    assert rc == 2 and message in err and err.count("\n") == 1
    assert not (analysis / "explain").exists()


def test_missing_analysis_is_one_line(tmp_path, capsys):
    assert main(["explain", "--analysis", str(tmp_path / "none")]) == 2
    assert "run `thinksae analyze` first" in capsys.readouterr().err
