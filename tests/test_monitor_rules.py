"""Monitor rules: validation (one-line errors naming rule and field), files, and evaluation."""

from __future__ import annotations

import json

import pytest

from thinksae.errors import ThinksaeError
from thinksae.monitor import RuleEngine, load_rules, parse_rules, watched_features


def rule(**kw):
    return {"name": "r", "feature": 3, "threshold": 1.0, **kw}


def run(rules, stream, region="think"):
    """Steps at which each rule fires over ``stream`` (one {feature: value} per token, or
    (region, values) pairs)."""
    engine = RuleEngine(parse_rules(rules))
    fired = []
    for step, item in enumerate(stream):
        reg, acts = item if isinstance(item, tuple) else (region, item)
        fired += [(step, r.name) for r, _ in engine.step(reg, acts)]
    return fired


def test_threshold_fires_on_rising_edges():
    stream = [{3: v} for v in (0.5, 1.5, 2.0, 0.1, 1.0)]
    assert run([rule()], stream) == [(1, "r"), (4, "r")]
    assert run([rule(once=True)], stream) == [(1, "r")]
    assert run([rule(below=True, threshold=0.2)], stream) == [(3, "r")]


def test_consecutive_tokens():
    stream = [{3: v} for v in (2, 2, 0, 2, 2, 2, 2)]
    assert run([rule(consecutive=3)], stream) == [(5, "r")]


def test_window_mean():
    stream = [{3: v} for v in (3, 0, 0, 0, 0, 1, 1, 1)]
    # means over 3 tokens: -, -, 1.0, 0, 0, .33, .67, 1.0
    assert run([rule(window=3)], stream) == [(2, "r"), (7, "r")]


def test_any_and_all_of_a_set():
    stream = [{1: 2, 2: 0}, {1: 0, 2: 0}, {1: 2, 2: 2}]
    base = {"name": "s", "features": [1, 2], "threshold": 1.0}
    assert run([{**base, "match": "any"}], stream) == [(0, "s"), (2, "s")]
    assert run([{**base, "match": "all"}], stream) == [(2, "s")]


def test_region_filter_skips_and_resets():
    stream = [("think", {3: 2}), ("answer", {3: 2}), ("answer", {3: 2}), ("think", {3: 2}),
              ("think", {3: 2})]
    assert run([rule(region="answer", consecutive=2)], stream) == [(2, "r")]
    assert run([rule(region="think", consecutive=2)], stream) == [(4, "r")]
    assert run([rule(region="any", consecutive=2)], stream) == [(1, "r")]


def test_value_field():
    assert [r.value for r in parse_rules([rule(name="a"), rule(name="b", value="TopK"),
                                          rule(name="c", value="pre")])] == [None, "topk", "pre"]
    assert "value" not in parse_rules([rule()])[0].to_dict()
    assert parse_rules([rule(value="pre")])[0].to_dict()["value"] == "pre"
    with pytest.raises(ThinksaeError, match="field 'value': 'act' is now called 'pre'"):
        parse_rules([rule(value="act")])


def test_actions_parse():
    rules = parse_rules([rule(name="a", action="stop"), rule(name="b", action={"steer": "3=0, 4=x2"}),
                         rule(name="c")])
    assert [(r.action, r.steer) for r in rules] == [("stop", None), ("steer", "3=0,4=x2"),
                                                    ("none", None)]
    assert parse_rules([r.to_dict() for r in rules]) == rules
    assert watched_features(rules, [9, 3]) == [9, 3]
    assert watched_features([parse_rules([{"name": "x", "features": [5, 6], "threshold": 0}])[0]],
                            [6]) == [6, 5]


@pytest.mark.parametrize("bad, needle", [
    (rule(threshold="high"), "rule 1 ('r'): field 'threshold'"),
    (rule(threshold=float("nan")), "field 'threshold' must be a finite number"),
    ({"name": "r", "feature": 3}, "field 'threshold' is missing"),
    (rule(colour="red"), "unknown field 'colour'"),
    (rule(features=[1]), "exactly one of the fields 'feature' or 'features'"),
    ({"name": "r", "features": [], "threshold": 1}, "field 'features' must be a non-empty list"),
    ({"name": "r", "features": [1, 1], "threshold": 1}, "more than once"),
    (rule(feature=-1), "field 'feature' must be an integer >= 0"),
    (rule(feature=999), "feature 999 is not a latent of the SAE (0..255)"),
    (rule(consecutive=0), "field 'consecutive' must be an integer >= 1"),
    (rule(window=True), "field 'window'"),
    (rule(region="thinking"), "field 'region' must be one of any, think, answer"),
    (rule(severity="fatal"), "field 'severity'"),
    (rule(value="acts"), "field 'value' must be one of topk, pre"),
    (rule(value="act"), "field 'value': 'act' is now called 'pre'"),
    (rule(match="most"), "field 'match'"),
    (rule(once="yes"), "field 'once' must be true or false"),
    (rule(action="explode"), "field 'action' must be none, stop"),
    (rule(action={"steer": "3=banana"}), "field 'action': steer"),
    (rule(action={"steer": "3=2max"}), "field 'action'"),
    (rule(action={"steer": "999=0"}), "unknown feature"),
    ({"feature": 3, "threshold": 1}, "rule 1: field 'name' is missing"),
    ("just text", "rule 1: a rule must be an object"),
])
def test_bad_rule_is_one_line_naming_rule_and_field(bad, needle):
    with pytest.raises(ThinksaeError) as e:
        parse_rules([bad], "rules.yaml", num_latents=256)
    msg = str(e.value)
    assert needle in msg and "\n" not in msg and msg.startswith("rules.yaml: ")


def test_document_level_errors():
    with pytest.raises(ThinksaeError, match="field 'name' repeats"):
        parse_rules([rule(), rule()])
    with pytest.raises(ThinksaeError, match="unknown top-level key 'rule'"):
        parse_rules({"rule": []})
    with pytest.raises(ThinksaeError, match="expected a list of rules"):
        parse_rules("nope")
    assert parse_rules({"rules": [rule()]})[0].name == "r"


def test_rule_files_yaml_and_json(tmp_path):
    yml = tmp_path / "rules.yaml"
    yml.write_text("rules:\n  - name: backtrack\n    feature: 7\n    threshold: 2.5\n"
                   "    consecutive: 2\n    region: think\n    severity: critical\n"
                   "    action: stop\n")
    js = tmp_path / "rules.json"
    js.write_text(json.dumps([{"name": "backtrack", "feature": 7, "threshold": 2.5,
                               "consecutive": 2, "region": "think", "severity": "critical",
                               "action": "stop"}]))
    assert load_rules(yml) == load_rules(js)
    r = load_rules(yml)[0]
    assert (r.features, r.threshold, r.consecutive, r.region, r.severity, r.action) == (
        (7,), 2.5, 2, "think", "critical", "stop")


@pytest.mark.parametrize("name, text, needle", [
    ("bad.yaml", "rules: [\n  {name: a", "not valid YAML (line"),
    ("bad.json", "[{\"name\": ", "not valid JSON (line 1"),
    ("typo.yml", "- name: a\n  feature: 1\n  treshold: 2\n", "rule 1 ('a'): unknown field 'treshold'"),
    ("second.yaml", "- {name: a, feature: 1, threshold: 1}\n- {name: b, feature: x, threshold: 1}\n",
     "rule 2 ('b'): field 'feature'"),
])
def test_bad_rule_files_one_line(tmp_path, name, text, needle):
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(ThinksaeError) as e:
        load_rules(path, num_latents=256)
    assert needle in str(e.value) and "\n" not in str(e.value) and str(path) in str(e.value)


def test_missing_rule_file(tmp_path):
    with pytest.raises(ThinksaeError, match="cannot read rules file"):
        load_rules(tmp_path / "nope.yaml")
