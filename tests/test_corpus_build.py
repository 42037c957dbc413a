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
    config_path,
    question_of,
    read_traces,
    repeat_problems,
    write_traces,
)
from thinksae.errors import ThinksaeError
from thinksae.generation import GenerationConfig


@pytest.fixture(scope="module")
def model(r1_tokenizer):  # noqa: F811
    return tiny_qwen2(len(r1_tokenizer))


def test_generate_resume_and_settings_check(tmp_path, model, r1_tokenizer, monkeypatch):  # noqa: F811
    out = tmp_path / "c" / "traces.jsonl"
    cfg = CorpusConfig(out=str(out), limit=3, generation=GenerationConfig(max_new_tokens=4),
                       batch_size=2, progress=False)
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

    cfg.generation.seed = 1
    with pytest.raises(ThinksaeError, match="other seed"):
        build_corpus(cfg, model, r1_tokenizer)


def test_kept_traces_copied_in_need_no_engine(tmp_path, model, r1_tokenizer, monkeypatch):  # noqa: F811
    """A corpus whose every trace is already there (e.g. kept traces copied in) opens no engine
    and loads no model: re-deriving a run needs neither llama.cpp nor generation."""
    import thinksae.corpus.run as models

    out = tmp_path / "first.jsonl"
    cfg = CorpusConfig(out=str(out), limit=2, generation=GenerationConfig(max_new_tokens=3),
                       batch_size=2, progress=False)
    build_corpus(cfg, model, r1_tokenizer)
    copy = tmp_path / "run" / "corpus" / "traces.jsonl"
    copy.parent.mkdir(parents=True)
    copy.write_bytes(out.read_bytes())
    monkeypatch.setattr(models, "load_model", lambda *a, **k: pytest.fail("model loaded"))
    again = CorpusConfig(out=str(copy), limit=2, generation=GenerationConfig(max_new_tokens=3),
                         engine="llama.cpp", model="not-a-gguf", progress=False)
    assert build_corpus(again, None, None) == copy
    assert copy.read_bytes() == out.read_bytes() and config_path(copy).is_file()
    with open(copy, "ab") as f:  # a half-written last line is not a trace: generation is needed
        f.write(b'{"id": "math-003"')
    again.limit = 3
    with pytest.raises(ThinksaeError, match="llama.cpp|GGUF|gguf"):
        build_corpus(again, None, None)


def test_several_samples_per_question(tmp_path, model, r1_tokenizer):  # noqa: F811
    out = tmp_path / "s.jsonl"
    cfg = CorpusConfig(out=str(out), limit=2, samples=3, batch_size=4, progress=False,
                       generation=GenerationConfig(6, do_sample=True, temperature=1.0))
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
    import thinksae.corpus.run as models

    monkeypatch.setattr(models, "load_model", lambda *a, **k: pytest.fail("model loaded"))
    for bad, message in ((dict(answer_tokens=-1), "answer_tokens must be >= 0"),
                         (dict(samples=0), "samples must be at least 1"),
                         (dict(samples=2), "needs --do_sample"),
                         (dict(generation=GenerationConfig(max_new_tokens=0)),
                          "--max_new_tokens must be at least 1"),
                         (dict(generation=GenerationConfig(do_sample=True, temperature=0.0)),
                          "--temperature must be > 0")):
        cfg = CorpusConfig(out=str(tmp_path / "t.jsonl"), limit=1, progress=False, **bad)
        with pytest.raises(ThinksaeError, match=message):
            build_corpus(cfg)
    assert not list(tmp_path.iterdir())  # nothing written


def test_a_corpus_written_before_the_generation_options_were_nested_resumes(
        tmp_path, model, r1_tokenizer, monkeypatch):  # noqa: F811
    out = tmp_path / "traces.jsonl"
    cfg = CorpusConfig(out=str(out), limit=2, batch_size=2, progress=False,
                       generation=GenerationConfig(max_new_tokens=4, seed=3))
    build_corpus(cfg, model, r1_tokenizer)
    traces = read_traces(out)
    # `<out>.config.json` as the version before the nesting wrote it: every option flat, in order
    flat = {"model": cfg.model, "prompts": "builtin", "traces": None, "split": "train",
            "out": str(out), "limit": 2, "samples": 1, "batch_size": 2, "engine": "hf",
            "max_new_tokens": 4, "do_sample": False, "temperature": 0.6, "top_p": 0.95, "seed": 3,
            "system_prompt": None, "think_prefill": False, "answer_tokens": 0, "device": "auto",
            "dtype": "auto", "progress": False}
    saved = config_path(out).read_text()
    assert list(json.loads(saved).items()) == list(flat.items())
    old = dict(flat)
    del old["engine"]  # older still: written before the engines
    config_path(out).write_text(json.dumps(old, indent=2) + "\n")

    def no_generate(**kw):
        raise AssertionError("nothing should be generated again")

    monkeypatch.setattr(model, "generate", no_generate)
    build_corpus(cfg, model, r1_tokenizer)  # resumes: all traces there, nothing generated
    assert read_traces(out) == traces and config_path(out).read_text() == saved
    config_path(out).write_text(json.dumps(old))
    cfg.generation.max_new_tokens = 5
    with pytest.raises(ThinksaeError, match=r"other max_new_tokens \(4\); use another --out"):
        build_corpus(cfg, model, r1_tokenizer)


def test_samples_need_sampling_and_at_least_one():
    problems = [Problem("a", "Q?")]
    assert repeat_problems(problems, 1, False) == problems
    with pytest.raises(ThinksaeError, match="needs --do_sample"):
        repeat_problems(problems, 2, False)
    with pytest.raises(ThinksaeError, match="at least 1"):
        repeat_problems(problems, 0, True)
    assert question_of("gsm8k-00012#3") == "gsm8k-00012" and question_of("a#b") == "a#b"


def test_model_loaded_lazily(tmp_path, model, r1_tokenizer, monkeypatch):  # noqa: F811
    import thinksae.corpus.run as models

    calls = []

    def fake_load_model(spec, device="auto", dtype="auto", progress=True):
        calls.append((spec, device, dtype))
        return model, r1_tokenizer

    monkeypatch.setattr(models, "load_model", fake_load_model)
    cfg = CorpusConfig(model="some/model", out=str(tmp_path / "t.jsonl"), limit=1,
                       generation=GenerationConfig(max_new_tokens=2), device="cpu", dtype="float32",
                       progress=False)
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
    gen = args.cfg.generation
    assert (args.cfg.limit, gen.do_sample, gen.system_prompt) == (5, True, "Think.")
    assert args.cfg.traces is None and args.cfg.prompts == "builtin"
