"""`build_corpus`: generate (resumable, settings checked) or import, config saved beside."""

from __future__ import annotations

import json

import pytest
from helpers_corpus import r1_tokenizer, tiny_qwen2  # noqa: F401  (fixtures)

from thinksae.corpus import (
    CorpusConfig,
    Problem,
    Trace,
    build_corpus,
    question_of,
    read_traces,
    repeat_problems,
    write_traces,
)
from thinksae.errors import ThinksaeError


@pytest.fixture(scope="module")
def model(r1_tokenizer):  # noqa: F811
    return tiny_qwen2(len(r1_tokenizer))


def test_generate_resume_and_settings_check(tmp_path, model, r1_tokenizer, monkeypatch):  # noqa: F811
    out = tmp_path / "c" / "traces.jsonl"
    cfg = CorpusConfig(out=str(out), limit=3, max_new_tokens=4, batch_size=2, progress=False)
    assert build_corpus(cfg, model, r1_tokenizer) == out
    traces = read_traces(out)
    assert len(traces) == 3 and all(t.reference_answer for t in traces)
    saved = json.loads((tmp_path / "c" / "traces.jsonl.config.json").read_text())
    assert saved["limit"] == 3 and saved["prompts"] == "builtin"

    def no_generate(**kw):
        raise AssertionError("nothing should be generated again")

    monkeypatch.setattr(model, "generate", no_generate)
    build_corpus(cfg, model, r1_tokenizer)
    assert read_traces(out) == traces
    monkeypatch.undo()

    cfg.limit = 4  # a larger limit extends the corpus
    build_corpus(cfg, model, r1_tokenizer)
    assert read_traces(out)[:3] == traces and len(read_traces(out)) == 4

    cfg.seed = 1
    with pytest.raises(ThinksaeError, match="other seed"):
        build_corpus(cfg, model, r1_tokenizer)


def test_several_samples_per_question(tmp_path, model, r1_tokenizer):  # noqa: F811
    out = tmp_path / "s.jsonl"
    cfg = CorpusConfig(out=str(out), limit=2, samples=3, do_sample=True, temperature=1.0,
                       max_new_tokens=6, batch_size=4, progress=False)
    build_corpus(cfg, model, r1_tokenizer)
    traces = read_traces(out)
    assert [t.id for t in traces] == [f"math-{q:03d}#{n}" for q in (1, 2) for n in range(3)]
    assert len({t.question for t in traces[:3]}) == 1 and traces[0].question != traces[3].question
    assert len({t.completion for t in traces[:3]}) > 1  # sampled, not three copies
    assert {question_of(t.id) for t in traces} == {"math-001", "math-002"}
    cfg.samples = 2
    with pytest.raises(ThinksaeError, match="other samples"):
        build_corpus(cfg, model, r1_tokenizer)


def test_bad_generation_options_fail_before_the_model_loads(tmp_path, monkeypatch):
    import thinksae.models as models

    monkeypatch.setattr(models, "load_model", lambda *a, **k: pytest.fail("model loaded"))
    for bad, message in ((dict(answer_tokens=-1), "answer_tokens must be >= 0"),
                         (dict(samples=0), "samples must be at least 1"),
                         (dict(samples=2), "needs --do_sample")):
        cfg = CorpusConfig(out=str(tmp_path / "t.jsonl"), limit=1, progress=False, **bad)
        with pytest.raises(ThinksaeError, match=message):
            build_corpus(cfg)
    assert not list(tmp_path.iterdir())  # nothing written


def test_samples_need_sampling_and_at_least_one():
    problems = [Problem("a", "Q?")]
    assert repeat_problems(problems, 1, False) == problems
    with pytest.raises(ThinksaeError, match="needs --do_sample"):
        repeat_problems(problems, 2, False)
    with pytest.raises(ThinksaeError, match="at least 1"):
        repeat_problems(problems, 0, True)
    assert question_of("gsm8k-00012#3") == "gsm8k-00012" and question_of("a#b") == "a#b"


def test_model_loaded_lazily(tmp_path, model, r1_tokenizer, monkeypatch):  # noqa: F811
    import thinksae.models as models

    calls = []

    def fake_load_model(spec, device="auto", dtype="auto", progress=True):
        calls.append((spec, device, dtype))
        return model, r1_tokenizer

    monkeypatch.setattr(models, "load_model", fake_load_model)
    cfg = CorpusConfig(model="some/model", out=str(tmp_path / "t.jsonl"), limit=1,
                       max_new_tokens=2, device="cpu", dtype="float32", progress=False)
    build_corpus(cfg)
    assert calls == [("some/model", "cpu", "float32")]
    assert len(read_traces(tmp_path / "t.jsonl")) == 1


def test_import_traces(tmp_path, r1_tokenizer):  # noqa: F811
    src = tmp_path / "in.jsonl"
    write_traces([Trace(f"t{i}", "p", "<think>\nx\n</think>\n\ny") for i in range(3)], src)
    out = tmp_path / "out.jsonl"
    cfg = CorpusConfig(traces=str(src), out=str(out), limit=2)
    assert build_corpus(cfg) == out  # no tokenizer needed: prompts are already templated
    assert [t.id for t in read_traces(out)] == ["t0", "t1"]
    assert json.loads((tmp_path / "out.jsonl.config.json").read_text())["traces"] == str(src)

    qa = tmp_path / "qa.jsonl"
    qa.write_text(json.dumps({"question": "Q?", "thinking": "hm", "answer": "1"}) + "\n")
    build_corpus(CorpusConfig(traces=str(qa), out=str(out)), tokenizer=r1_tokenizer)
    (t,) = read_traces(out)
    assert t.full_text.endswith("<｜User｜>Q?<｜Assistant｜><think>\nhm\n</think>\n\n1")


def test_cli_options():
    from thinksae.cli import build_parser

    args = build_parser().parse_args(
        ["corpus", "--limit", "5", "--do_sample", "true", "--system_prompt", "Think."])
    assert isinstance(args.cfg, CorpusConfig)
    assert (args.cfg.limit, args.cfg.do_sample, args.cfg.system_prompt) == (5, True, "Think.")
    assert args.cfg.traces is None and args.cfg.prompts == "builtin"
