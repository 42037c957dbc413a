"""`thinksae monitor`: the terminal view end to end, the web app's bind address, and one-line
errors (before the model is loaded)."""

from __future__ import annotations

import pytest
from rich.console import Console
from test_monitor_helpers import HOOKPOINT, QUESTION, saved_sae, tiny_sae

from thinksae.cli import main
from thinksae.monitor import Monitor, read_alerts
from thinksae.monitor.terminal import View, run_terminal

RULES_YAML = """\
rules:
  - name: f5-high
    feature: 5
    threshold: 0.0
    once: true
    severity: critical
"""


@pytest.fixture(scope="module")
def sae_dir(tmp_path_factory):
    return saved_sae(tmp_path_factory.mktemp("sae"))


def args(sae_dir, model_dir, *extra):
    return ["monitor", "--sae", str(sae_dir), "--model", str(model_dir), "--device", "cpu", "--dtype",
            "float32", "--max_new_tokens", "4", *extra]


def test_terminal_run_prints_tokens_and_alerts(tmp_path, sae_dir, tiny_model_dir, capsys):
    rules = tmp_path / "rules.yaml"
    rules.write_text(RULES_YAML)
    log = tmp_path / "log" / "alerts.jsonl"
    rc = main(args(sae_dir, tiny_model_dir, "--prompt", QUESTION, "--features", "1,2",
                   "--rules", str(rules), "--alert_log", str(log), "--live", "false"))
    out = capsys.readouterr().out
    assert rc == 0
    assert "alerts (1)" in out and "f5-high" in out and "critical" in out
    assert "watching [1, 2, 5] · top-k activation · 4 tokens" in out and "done: max_tokens" in out
    assert "alerts (1) · values: top-k activation" in out
    assert [(a["rule"], a["value"]) for a in read_alerts(log)] == [("f5-high", "topk")]
    rc = main(args(sae_dir, tiny_model_dir, "--prompt", QUESTION, "--features", "1,2",
                   "--value", "pre", "--alert_log", "", "--live", "false"))
    assert rc == 0 and "watching [1, 2] · relu(pre-activation) · 4 tokens" in capsys.readouterr().out


@pytest.mark.parametrize("extra, needle", [
    (("--prompt", "hi", "--rules", "RULES"), "rule 1 ('bad'): field 'threshold'"),
    (("--prompt", "hi", "--features", "1,x"), "--features: 'x' is not a feature index"),
    (("--prompt", "hi", "--features", "999"), "feature 999 is not a latent"),
    (("--prompt", "hi"), "nothing to watch"),
    (("--features", "1"), "give --prompt (terminal view) or --serve"),
    (("--prompt", "hi", "--serve", "true", "--features", "1"), "one of them"),
    (("--prompt", "hi", "--features", "1", "--hookpoint", "layers.2"), "reads hookpoint layers.1"),
    (("--prompt", "hi", "--features", "1", "--value", "act"), "--value must be one of topk, pre"),
    (("--prompt", "hi", "--rules", "PRE"), "rule 'p' is written for value pre, but the monitor "
                                          "watches topk (--value pre to watch it)"),
])
def test_bad_input_is_one_line_exit_2(tmp_path, sae_dir, capsys, extra, needle):
    bad = tmp_path / "rules.yaml"
    bad.write_text("- name: bad\n  feature: 1\n  threshold: high\n")
    pre = tmp_path / "pre.yaml"
    pre.write_text("- name: p\n  feature: 1\n  threshold: 0.5\n  value: pre\n")
    extra = [{"RULES": str(bad), "PRE": str(pre)}.get(e, e) for e in extra]
    # a model path that does not exist: the errors must come before the model is loaded
    rc = main(args(sae_dir, tmp_path / "no-model", *extra))
    err = capsys.readouterr().err
    assert rc == 2 and needle in err and err.startswith("thinksae: error: ")
    assert err.count("\n") == 1


def test_serve_binds_localhost_by_default(sae_dir, tiny_model_dir, monkeypatch, capsys):
    import uvicorn

    seen = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: seen.update(app=app, **kw))
    assert main(args(sae_dir, tiny_model_dir, "--serve", "--alert_log", "")) == 0
    assert seen["host"] == "127.0.0.1" and seen["port"] == 8765
    assert "http://127.0.0.1:8765/" in capsys.readouterr().out


def test_terminal_view_colours_and_underlines(tiny_model, tokenizer):
    mon = Monitor(tiny_model, tokenizer, tiny_sae(), HOOKPOINT, [1, 2, 5],
                  [{"name": "a", "feature": 5, "threshold": 0.0, "once": True}])
    console = Console(record=True, width=100, force_terminal=True, color_system="truecolor")
    events = run_terminal(mon, QUESTION, console=console, live=True, max_new_tokens=5)
    assert events[-1].type == "done"
    text = console.export_text()
    assert "alerts (1)" in text and "done: max_tokens" in text
    view = View([1, 2, 5])
    for e in events:
        view.add(e)
    spans = view.text().spans
    assert any("underline" in str(s.style) for s in spans)
    assert any("on rgb" in str(s.style) for s in spans) or all(
        view.level(t) < 0.05 for t in view.tokens)
