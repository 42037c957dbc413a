"""`thinksae steer` end to end on the tiny fixture: a sweep writes JSON + PNG, baseline and steered
runs share batches and seeds, and every bad input is one line, exit 2, nothing written."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch

from thinksae.cli import main
from thinksae.sae import Sae, SaeConfig
from thinksae.sae.formats import save_sparsify

QUESTIONS = ["What is 2+2?", "Tom has 7 apples and eats 2. How many are left?",
             "A pencil costs 3 dollars. How much do 4 pencils cost?"]


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def sae_dir(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("steer_sae") / "layers.1"
    torch.manual_seed(1)
    save_sparsify(Sae(64, SaeConfig(expansion_factor=2, k=4)), path)
    return path


def _args(sae_dir, model_dir, out, *extra):
    return ["steer", "--sae", str(sae_dir), "--model", str(model_dir), "--device", "cpu", "--dtype",
            "float32", "--max_new_tokens", "6", "--out", str(out), "--progress", "false", *extra]


def test_sweep_writes_json_and_png(tmp_path, sae_dir, tiny_model_dir, capsys):
    out = tmp_path / "steer"
    prompts = [a for q in QUESTIONS for a in ("--prompt", q)]
    rc = main(_args(sae_dir, tiny_model_dir, out, "--feature", "3", "--feature", "5",
                    "--sweep", "x1,+8", "--start", "think", "--think_prefill", "true",
                    "--do_sample", "true", "--batch_size", "2", "--show", "1", *prompts))
    assert rc == 0
    printed = capsys.readouterr().out
    assert "steered +8" in printed and "baseline" in printed and "think tok" in printed
    assert (out / "steer.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    result = json.loads((out / "steer.json").read_text())
    assert result["mode"] == "sweep" and result["hookpoint"] == "layers.1"
    assert result["window"] == {"start": "think", "end": "think_end"}
    assert [r["label"] for r in result["runs"]] == ["x1", "+8"]
    assert [i["spec"] for i in result["runs"][1]["interventions"]] == ["3=+8", "5=+8"]
    assert [q["question"] for q in result["questions"]] == QUESTIONS
    base, ident, strong = (result["baseline"]["traces"], result["runs"][0]["traces"],
                           result["runs"][1]["traces"])
    # same batches and seeds: the identity setting samples exactly the baseline, at KL 0
    assert [t["completion"] for t in ident] == [t["completion"] for t in base]
    assert result["runs"][0]["summary"]["kl_mean"] == 0.0
    assert result["runs"][0]["summary"]["changed"] == 0.0
    assert result["runs"][0]["summary"]["first_change_mean"] is None
    changed = sum(t["new_ids"] != b["new_ids"] for t, b in zip(strong, base))
    assert result["runs"][1]["summary"]["changed"] == changed / 3 > 0
    assert [t["completion"] for t in strong] != [t["completion"] for t in base]
    assert result["runs"][1]["summary"]["kl_mean"] > 0
    for t in strong:  # steered from the prefilled <think> to the end (never closed here)
        assert t["new_tokens"] == 6 and not t["reached_think_end"]
        assert t["think_tokens"] == 7 and t["steered_positions"] == 8
    summary = result["runs"][1]["summary"]
    assert summary["traces"] == 3 and summary["steered_positions"] == 24
    assert set(result["runs"][1]["delta"]) >= {"think_tokens_mean", "accuracy"}
    stats = result["runs"][1]["sae_at_steered_positions"]
    assert stats["steered_positions"] == 3 * 7 and set(stats["features"]) == {"3", "5"}
    assert result["config"]["sweep"] == ["x1,+8"]


def test_single_run_with_prompts_file(tmp_path, sae_dir, tiny_model_dir):
    prompts = tmp_path / "q.jsonl"
    prompts.write_text('{"question": "What is 2+2?", "answer": 4}\n'
                       '{"question": "What is 3+3?", "answer": 6}\n')
    out = tmp_path / "single"
    assert main(_args(sae_dir, tiny_model_dir, out, "--feature", "1=0", "--feature", "2=x4,7=off",
                      "--prompts-file", str(prompts), "--start", "prompt", "--kl", "false",
                      "--show", "0")) == 0
    result = json.loads((out / "steer.json").read_text())
    assert result["mode"] == "single" and result["png"] is None
    assert not (out / "steer.png").exists()
    (run,) = result["runs"]
    assert run["label"] == "1=0 2=x4 7=off"
    assert run["summary"]["graded"] == 2 and run["summary"]["accuracy"] == 0.0
    assert "kl_mean" not in run["summary"]
    assert all(t["steered_positions"] == 7 for t in run["traces"])  # last prompt token + 6
    assert result["max_activation"] is None


@torch.no_grad()
def _window_max(result: dict, sae_dir: Path, feature: int, tokenizer) -> tuple[float, float]:
    """By hand: the feature's max over each baseline trace's positions from its last prompt
    token on (window prompt..think_end, never closed here) and over all of its positions."""
    from thinksae.models import capture
    from thinksae.models.loading import load_model
    from thinksae.sae import load_sae

    model, _ = load_model(result["model"], "cpu", "float32")
    sae = load_sae(sae_dir)
    in_window, everywhere = 0.0, 0.0
    for q, t in zip(result["questions"], result["baseline"]["traces"]):
        prompt = tokenizer(q["prompt"], add_special_tokens=False)["input_ids"]
        ids = torch.tensor([prompt + t["new_ids"][:-1]])  # the last token was never fed
        acts = sae.dense_acts(capture(model, "layers.1", ids)["layers.1"][0])[:, feature]
        in_window = max(in_window, float(acts[len(prompt) - 1:].max()))
        everywhere = max(everywhere, float(acts.max()))
    return in_window, everywhere


def test_smax_from_the_baseline_window_in_the_trained_regions(tmp_path, sae_dir, tiny_model_dir,
                                                                tokenizer):
    """The tiny model generates special tokens only: without a report card (all non-special
    tokens) the window holds nothing to take a max over; an SAE trained on special tokens takes
    it over the window, not over the whole prompt."""
    args = ["--feature", "88=2max", "--prompt", "What is 2+2?", "--prompt", "What is 3+3?",
            "--start", "prompt", "--kl", "false", "--show", "0"]
    out = tmp_path / "plain"
    assert main(_args(sae_dir, tiny_model_dir, out, *args)) == 0
    plain = json.loads((out / "steer.json").read_text())
    assert plain["max_activation"] == {"88": 0.0}
    in_window, everywhere = _window_max(plain, sae_dir, 88, tokenizer)
    assert everywhere > in_window > 0  # the feature fires in the prompt and in the window

    special = tmp_path / "special" / "layers.1"
    special.mkdir(parents=True)
    for f in sae_dir.iterdir():
        (special / f.name).write_bytes(f.read_bytes())
    (special / "thinksae.json").write_text(json.dumps({"training": {"regions": "prompt,special"}}))
    out = tmp_path / "airi"
    assert main(_args(special, tiny_model_dir, out, *args)) == 0
    airi = json.loads((out / "steer.json").read_text())
    assert [t["new_ids"] for t in airi["baseline"]["traces"]] == \
        [t["new_ids"] for t in plain["baseline"]["traces"]]
    assert airi["max_activation"]["88"] == pytest.approx(in_window, rel=1e-4)
    (iv,) = airi["runs"][0]["interventions"]
    assert iv["kind"] == "clamp" and iv["requested"] == "88=2max"
    assert iv["value"] == pytest.approx(2 * airi["max_activation"]["88"])
    assert airi["max_activation_from"] == "baseline" and airi["runs"][0]["label"] == "88=2max"


@pytest.mark.parametrize("extra, message", [
    (["--feature", "123="], "missing value"),
    (["--feature", "x=abc"], "'x' is not a non-negative integer index"),
    (["--feature", "1=nan"], "not finite"),
    (["--feature", "1=x-inf"], "not finite"),
    (["--feature", "999=0"], "--feature 999: unknown feature, the SAE has 128 latents"),
    (["--feature", "1=0", "--start", "20", "--end", "5"], "--start 20 is not before --end 5"),
    (["--feature", "1=0", "--start", "answer"], "--start 'answer'"),
    (["--feature", "1=0", "--sweep", "x0"], "bare feature indices"),
    (["--feature", "1", "--sweep", "x0,abc"], "not a number"),
    ([], "no --feature"),
    (["--feature", "1=0", "--prompt", "hi", "--prompts-file", "q.txt"], "not both"),
    (["--feature", "1=0", "--prompts-file", "/nonexistent/q.jsonl"], "not 'builtin'"),
    (["--feature", "1=0", "--batch_size", "0"], "--batch_size must be at least 1"),
    (["--feature", "1=0", "--hookpoint", "layers.2"], "reads hookpoint layers.1, not layers.2"),
])
def test_bad_input_one_line_exit_2_nothing_written(tmp_path, sae_dir, tiny_model_dir, capsys,
                                                   extra, message):
    out = tmp_path / "never"
    assert main(_args(sae_dir, tiny_model_dir, out, *extra)) == 2
    err = capsys.readouterr().err
    assert err.startswith("thinksae: error: ") and err.count("\n") == 1, err
    assert message in err
    assert not out.exists()


def test_sae_width_mismatch(tmp_path, tiny_model_dir, capsys):
    sae = tmp_path / "layers.1"
    save_sparsify(Sae(32, SaeConfig(expansion_factor=2, k=4)), sae)
    out = tmp_path / "never"
    assert main(_args(sae, tiny_model_dir, out, "--feature", "1=0", "--prompt", "hi")) == 2
    assert "has d_in 32, but the model's layers.1 output has width 64" in capsys.readouterr().err
    assert not out.exists()


def test_think_window_without_think_tokens_is_refused(tmp_path, sae_dir, tiny_model_dir, capsys,
                                                      monkeypatch):
    """Tokenizers where <think> is plain text (Qwen2.5-Coder) cannot open a think window."""
    import thinksae.steer.run as steer_run

    real = steer_run.ThinkMarkers.from_tokenizer

    def plain(tokenizer, stop_ids=(), sentences=True):
        return dataclasses.replace(real(tokenizer, stop_ids, sentences), single_token=False)

    monkeypatch.setattr(steer_run.ThinkMarkers, "from_tokenizer", staticmethod(plain))
    out = tmp_path / "never"
    assert main(_args(sae_dir, tiny_model_dir, out, "--feature", "1=0", "--prompt", "hi",
                      "--start", "think")) == 2
    assert "no single <think>/</think> tokens" in capsys.readouterr().err
    assert not out.exists()
    assert main(_args(sae_dir, tiny_model_dir, out, "--feature", "1=0", "--prompt", "hi",
                      "--start", "prompt", "--end", "none", "--kl", "false")) == 0


def _analysis(path: Path, max_act: list[float], num_latents: int = 128) -> Path:
    path.mkdir(parents=True)
    (path / "analysis.json").write_text(json.dumps(
        {"sae": {"num_latents": num_latents, "d_in": 64, "hookpoint": "layers.1"}}))
    (path / "features.jsonl").write_text(
        "".join(json.dumps({"feature": i, "max_act": m}) + "\n" for i, m in enumerate(max_act)))
    return path


def test_max_from_an_analysis(tmp_path, sae_dir, tiny_model_dir):
    analysis = _analysis(tmp_path / "features", [0.5 + i for i in range(128)])
    out = tmp_path / "steer"
    assert main(_args(sae_dir, tiny_model_dir, out, "--feature", "9", "--sweep", "2max",
                      "--max_from", str(analysis), "--prompt", QUESTIONS[0], "--kl", "false",
                      "--show", "0")) == 0
    result = json.loads((out / "steer.json").read_text())
    assert result["max_activation"] == {"9": 9.5} and result["max_activation_from"] == str(analysis)
    (iv,) = result["runs"][0]["interventions"]
    assert (iv["kind"], iv["value"], iv["requested"]) == ("clamp", 19.0, "9=2max")


@pytest.mark.parametrize("num_latents, message", [
    (256, "analysed another SAE"), (None, "no feature analysis at")])
def test_max_from_a_wrong_or_missing_analysis(tmp_path, sae_dir, tiny_model_dir, capsys,
                                             num_latents, message):
    analysis = tmp_path / "features"
    if num_latents:
        _analysis(analysis, [1.0] * num_latents, num_latents)
    out = tmp_path / "never"
    assert main(_args(sae_dir, tiny_model_dir, out, "--feature", "9=2max", "--max_from",
                      str(analysis), "--prompt", "hi")) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err
    assert not out.exists()
