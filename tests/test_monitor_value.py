"""What the monitor watches: by default the SAE's own top-k activations (`Sae.encode`, 0 outside
the top k), or with value pre the ReLU pre-activations of the watched rows (the old numbers);
which one is labelled in every event and alert record."""

from __future__ import annotations

import re

import pytest
import torch
import yaml
from test_monitor_helpers import HOOKPOINT, QUESTION, tiny_sae

from thinksae.errors import ThinksaeError
from thinksae.models import resolve_hookpoint
from thinksae.monitor import AlertEvent, Monitor, TokenEvent, read_alerts

ALL = list(range(256))
STEPS = 8


@pytest.fixture(scope="module")
def sae():
    return tiny_sae()


def watched(mon, value=None, **kw):
    """(token events, alert events, the hookpoint output the monitor saw per generated token)."""
    seen = []

    def hook(_module, _inputs, output):
        out = output[0] if isinstance(output, (tuple, list)) else output
        seen.append(out[:, -1].detach().clone())

    handle = resolve_hookpoint(mon.model, HOOKPOINT).register_forward_hook(hook)
    try:
        if value is not None:
            kw["value"] = value
        events = list(mon.watch(QUESTION, max_new_tokens=STEPS, **kw))
    finally:
        handle.remove()
    toks = [e for e in events if isinstance(e, TokenEvent)]
    assert len(seen) == len(toks) + 1  # the prompt's forward, then one per generated token
    return toks, [e for e in events if isinstance(e, AlertEvent)], torch.cat(seen[1:])


def table(toks, features=ALL) -> torch.Tensor:
    return torch.tensor([[e.acts[f] for f in features] for e in toks])


def test_default_values_are_sae_encode_exactly_for_every_token(tiny_model, tokenizer, sae):
    toks, _, x = watched(Monitor(tiny_model, tokenizer, sae, HOOKPOINT, ALL))
    assert len(toks) == STEPS
    got = table(toks)
    for row, xi in zip(got, x):
        acts, idx = sae.encode(xi[None])  # one token at a time, as generated
        expected = torch.zeros(sae.num_latents).scatter_(0, idx[0], acts[0])
        assert int((row > 0).sum()) <= sae.cfg.k
        assert torch.equal(row, expected)
        assert set(torch.nonzero(row).flatten().tolist()) == set(idx[0][acts[0] > 0].tolist())
    assert all(e.value == "topk" for e in toks)


def test_value_pre_gives_the_old_numbers(tiny_model, tokenizer, sae):
    toks, _, x = watched(Monitor(tiny_model, tokenizer, sae, HOOKPOINT, ALL, value="pre"))
    assert all(e.value == "pre" for e in toks)
    # the pre-activation as the monitor computed it before (watched encoder rows, one addmm
    # per token)
    rows = torch.tensor(ALL)
    weight, bias = sae.encoder.weight.detach()[rows], sae.encoder.bias.detach()[rows]
    old = torch.cat([torch.addmm(bias, xi[None] - sae.b_dec.detach(), weight.T).relu()
                     for xi in x])
    got = table(toks)
    assert torch.equal(got, old)
    dense = torch.cat([sae.dense_acts(xi[None]) for xi in x]).detach()
    assert torch.equal(got[dense > 0], dense[dense > 0])  # where the SAE keeps a latent


def test_a_latent_outside_the_top_k_reads_0_and_raises_no_alert(tiny_model, tokenizer, sae,
                                                                  tmp_path):
    pre, _, _ = watched(Monitor(tiny_model, tokenizer, sae, HOOKPOINT, ALL, value="pre"))
    topk, _, _ = watched(Monitor(tiny_model, tokenizer, sae, HOOKPOINT, ALL))
    pre_t, topk_t = table(pre), table(topk)
    inactive = (pre_t > 0) & (topk_t == 0)
    assert inactive.float().mean() > 0.2  # many pairs: pre-activation > 0, the SAE says 0
    off = inactive.all(0) & (pre_t.min(0).values > 0.02)  # never in the top k, pre > 0.02
    feature = int(torch.nonzero(off)[0])
    rule = [{"name": "inactive", "feature": feature, "threshold": 0.01}]
    log = tmp_path / "alerts.jsonl"
    mon = Monitor(tiny_model, tokenizer, sae, HOOKPOINT, rules=rule, alert_log=log)
    toks, alerts, _ = watched(mon)
    assert [e.acts[feature] for e in toks] == [0.0] * STEPS and alerts == []
    toks, alerts, _ = watched(mon, value="pre")
    assert all(e.acts[feature] > 0.02 for e in toks)
    assert [(a.step, a.value) for a in alerts] == [(0, "pre")]
    assert [(r["rule"], r["value"]) for r in read_alerts(log)] == [("inactive", "pre")]


def test_events_and_alert_records_say_which_value(tiny_model, tokenizer, sae, tmp_path):
    log = tmp_path / "alerts.jsonl"
    rule = [{"name": "any", "feature": 17, "threshold": 0.0, "once": True}]
    mon = Monitor(tiny_model, tokenizer, sae, HOOKPOINT, rules=rule, alert_log=log)
    for value in ("topk", "pre"):
        events = list(mon.watch(QUESTION, max_new_tokens=2, value=value))
        assert [e.to_dict()["value"] for e in events if e.type != "done"] == [value] * 3
    assert [r["value"] for r in read_alerts(log)] == ["topk", "pre"]


def test_rules_written_for_the_other_value_are_refused(tiny_model, tokenizer, sae):
    pre_rule = [{"name": "p", "feature": 3, "threshold": 1.0, "value": "pre"}]
    with pytest.raises(ThinksaeError, match="rule 'p' is written for value pre, but the monitor "
                                            "watches topk"):
        Monitor(tiny_model, tokenizer, sae, HOOKPOINT, rules=pre_rule)
    mon = Monitor(tiny_model, tokenizer, sae, HOOKPOINT, rules=pre_rule, value="pre")
    with pytest.raises(ThinksaeError, match="written for value pre"):
        mon.watch(QUESTION, value="topk")
    topk_rule = [{"name": "t", "feature": 3, "threshold": 1.0, "value": "topk"}]
    assert Monitor(tiny_model, tokenizer, sae, HOOKPOINT, rules=topk_rule).rules[0].value == "topk"
    with pytest.raises(ThinksaeError, match="--value must be one of topk, pre"):
        Monitor(tiny_model, tokenizer, sae, HOOKPOINT, [1], value="act")


@pytest.mark.parametrize("monitor, needle", [
    ({"value": "pre"}, "monitor.rule.threshold auto is calibrated on top-k activations; with "
                       "monitor.value pre give a number"),
    ({"rule": {"value": "pre", "threshold": 0.5}}, "monitor.rule.value 'pre' differs from "
                                                   "monitor.value 'topk'"),
    ({"value": "pre", "rule": {"value": "topk", "threshold": 0.5}}, "differs"),
])
def test_pipeline_threshold_auto_needs_the_top_k_value(tmp_path, monitor, needle):
    from thinksae.pipeline.spec import resolve

    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump({"preset": "offline-demo", "monitor": monitor}))
    with pytest.raises(ThinksaeError, match=re.escape(needle)):
        resolve(str(path))


def test_pipeline_value_pre_with_a_number(tmp_path):
    from thinksae.pipeline.spec import resolve

    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump({"preset": "offline-demo",
                                    "monitor": {"value": "pre", "rule": {"threshold": 0.5}}}))
    options = resolve(str(path)).stages["monitor"]
    assert options["value"] == "pre" and options["rule"]["threshold"] == 0.5
    assert resolve(None, "offline-demo").stages["monitor"]["rule"]["threshold"] == "auto"
