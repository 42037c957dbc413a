"""Steering specs: the --feature grammar, sweeps, windows, and one clear error per bad input."""

from __future__ import annotations

import pytest

from thinksae.errors import ThinksaeError
from thinksae.steer import (
    Intervention,
    Window,
    check_features,
    parse_intervention,
    parse_interventions,
    parse_sweep,
    parse_value,
    parse_window,
)


@pytest.mark.parametrize("spec, expected", [
    ("123=0", Intervention(123, "clamp", 0.0)),
    ("123=2.5", Intervention(123, "clamp", 2.5)),
    ("7=1e2", Intervention(7, "clamp", 100.0)),
    ("123=x4", Intervention(123, "scale", 4.0)),
    ("123=X0.5", Intervention(123, "scale", 0.5)),
    ("123=*3", Intervention(123, "scale", 3.0)),
    ("123=+2.5", Intervention(123, "add", 2.5)),
    ("123=-1", Intervention(123, "add", -1.0)),
    ("0=off", Intervention(0, "ablate", 0.0)),
    ("0=ablate", Intervention(0, "ablate", 0.0)),
    (" 12 = x2 ", Intervention(12, "scale", 2.0)),
    ("12=2max", Intervention(12, "clamp_max", 2.0)),
    ("12=MAX", Intervention(12, "clamp_max", 1.0)),
])
def test_grammar(spec, expected):
    assert parse_intervention(spec) == expected


@pytest.mark.parametrize("iv, text", [
    (Intervention(1, "clamp", 2.5), "1=2.5"), (Intervention(1, "scale", 4.0), "1=x4"),
    (Intervention(1, "add", -3.0), "1=-3"), (Intervention(1, "add", 2.0), "1=+2"),
    (Intervention(1, "ablate"), "1=off"), (Intervention(1, "clamp_max", 2.0), "1=2max"),
])
def test_canonical_spec_round_trips(iv, text):
    assert iv.spec == text
    assert parse_intervention(iv.spec) == iv


@pytest.mark.parametrize("kind, value, f, expected", [
    ("clamp", 3.0, 1.5, 3.0), ("clamp", 3.0, 0.0, 3.0), ("scale", 4.0, 1.5, 6.0),
    ("scale", 4.0, 0.0, 0.0), ("add", 2.5, 1.5, 4.0), ("add", -2.0, 0.0, -2.0),
    ("ablate", 0.0, 1.5, 0.0),
])
def test_new_value(kind, value, f, expected):
    assert Intervention(0, kind, value).new_value(f) == expected


def test_clamp_max_needs_resolving():
    iv = parse_intervention("4=2max")
    with pytest.raises(ThinksaeError, match="max activation is not known"):
        iv.new_value(1.0)
    assert iv.resolved({4: 1.5}) == Intervention(4, "clamp", 3.0)
    assert Intervention(4, "scale", 2.0).resolved({}) == Intervention(4, "scale", 2.0)


def test_repeated_and_comma_separated():
    ivs = parse_interventions(["1=0,2=x4", "3=off"])
    assert [i.spec for i in ivs] == ["1=0", "2=x4", "3=off"]
    assert parse_interventions("5=+1")[0] == Intervention(5, "add", 1.0)


@pytest.mark.parametrize("specs, message", [
    (["123="], "missing value"),
    (["x=abc"], "'x' is not a non-negative integer index"),
    (["123=abc"], "'abc' is not a number"),
    (["123=x"], "lacks a scale factor"),
    (["123=xabc"], "is not a number"),
    (["123=+"], "lacks an amount"),
    (["123"], "expected FEATURE=VALUE"),
    (["-1=0"], "not a non-negative integer"),
    (["1.5=0"], "not a non-negative integer"),
    (["123=nan"], "not finite"),
    (["123=inf"], "not finite"),
    (["123=x-inf"], "not finite"),
    (["123=+inf"], "not finite"),
    (["123=1e999"], "not finite"),
    (["123=nanmax"], "not finite"),
    (["123=xmax"], "is not a number"),
    (["1=0", "1=x2"], "given more than once"),
    ([], "no --feature"),
    ([" , "], "no --feature"),
])
def test_bad_specs_one_line(specs, message):
    with pytest.raises(ThinksaeError) as e:
        parse_interventions(specs)
    assert message in str(e.value)
    assert "\n" not in str(e.value)


def test_unknown_feature_index():
    ivs = parse_interventions(["3=0", "128=x2"])
    check_features(ivs[:1], 128)
    with pytest.raises(ThinksaeError, match=r"--feature 128: unknown feature, the SAE has 128 "
                                            r"latents \(0..127\)"):
        check_features(ivs, 128)


def test_sweep():
    sets = parse_sweep(["1", "2"], ["0,x2", "+5"])
    assert [[i.spec for i in s] for s in sets] == [["1=0", "2=0"], ["1=x2", "2=x2"],
                                                   ["1=+5", "2=+5"]]
    for features, values, message in [
        (["1=x2"], ["x0"], "bare feature indices"),
        ([], ["x0"], "--sweep needs --feature"),
        (["1"], [","], "holds no values"),
        (["1"], ["x0,nan"], "not finite"),
        (["1", "1"], ["x0"], "more than once"),
        (["a"], ["x0"], "not a non-negative integer"),
    ]:
        with pytest.raises(ThinksaeError, match=message):
            parse_sweep(features, values)


def test_parse_value():
    assert parse_value("x2") == ("scale", 2.0)
    assert parse_value("OFF") == ("ablate", 0.0)


@pytest.mark.parametrize("start, end, expected", [
    ("prompt", "think_end", Window("prompt", "think_end")),
    ("think", "</think>", Window("think", "think_end")),
    ("sentence", "none", Window("sentence", "none")),
    ("5", "20", Window(5, 20)),
    ("0", "think_end", Window(0, "think_end")),
    ("prompt", "3", Window("prompt", 3)),
])
def test_window(start, end, expected):
    assert parse_window(start, end) == expected


@pytest.mark.parametrize("start, end, message", [
    ("20", "5", "--start 20 is not before --end 5"),
    ("5", "5", "not before"),
    ("answer", "think_end", "--start 'answer': expected prompt, think, sentence"),
    ("think", "later", "--end 'later': expected think_end, none"),
    ("-1", "think_end", "--start '-1'"),
    ("think", "0", "--end 0: must be at least 1"),
])
def test_bad_window(start, end, message):
    with pytest.raises(ThinksaeError) as e:
        parse_window(start, end)
    assert message in str(e.value) and "\n" not in str(e.value)
