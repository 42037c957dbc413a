"""The sink rule: special ids, plus norms above a multiple of the median (hand-computed cases)."""

import pytest
import torch

from thinksae.errors import ThinksaeError
from thinksae.sinks import SinkRule, median_norm, sink_summary, special_flags


def test_rule_by_id_and_norm():
    # norms of 6 tokens, token 0 special; non-special norms 1, 2, 3, 50, 4 -> median 3,
    # threshold 10 x 3 = 30: token 4 (norm 50) is a sink by norm, token 0 by id.
    norms = torch.tensor([900.0, 1.0, 2.0, 3.0, 50.0, 4.0])
    special = torch.tensor([True, False, False, False, False, False])
    rule = SinkRule(10.0)
    assert rule.threshold(norms, special) == 30.0
    assert rule.mask(norms, special).tolist() == [True, False, False, False, True, False]
    # a reference median (e.g. the store's) replaces the batch's
    assert SinkRule(10.0, median_norm=6.0).mask(norms, special).tolist() == \
        [True, False, False, False, False, False]
    # no norm test: special only
    assert SinkRule(None).mask(norms, special).tolist() == [True] + [False] * 5


def test_median_and_with_median():
    norms = torch.tensor([[5.0, 1.0], [3.0, 7.0]])
    special = torch.tensor([[True, False], [False, False]])
    assert median_norm(norms, special) == 3.0  # of 1, 3, 7
    assert median_norm(norms, torch.ones_like(special)) is None
    assert SinkRule(4.0).with_median(norms, special) == SinkRule(4.0, 3.0)


@pytest.mark.parametrize("bad", [1, 0.5, -3, float("inf"), True, "10"])
def test_bad_multiple(bad):
    with pytest.raises(ThinksaeError, match="norm multiple"):
        SinkRule(bad)


def test_round_trip_and_unknown_fields():
    rule = SinkRule(8.0, 35.5)
    assert SinkRule.from_dict(rule.to_dict()) == rule
    assert SinkRule.from_dict(None) == SinkRule()
    with pytest.raises(ThinksaeError, match="unknown sink rule fields"):
        SinkRule.from_dict({"multiple": 3})


def test_special_flags_and_summary():
    ids = torch.tensor([7, 1, 2, 1, 9, 1])
    special = special_flags(ids, {7, 9})
    assert special.tolist() == [True, False, False, False, True, False]
    sinks = special | torch.tensor([False, True, False, True, False, False])
    out = sink_summary(sinks, special, ids, decode=lambda i: f"<{i}>")
    assert out == {"tokens": 6, "sinks": 4, "special": 2, "by_norm": 2,
                   "by_norm_tokens": [{"id": 1, "count": 2, "text": "<1>"}]}
