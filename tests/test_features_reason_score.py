"""ReasonScore: the formula by hand, the vocabulary windows, and the score through a whole pass."""

from __future__ import annotations

import json
import math

import pytest
import torch

from thinksae.errors import ThinksaeError
from thinksae.features import FeatureCollector, ReasonMatcher, TokenInfo, read_vocab, reason_score
from thinksae.features.reason_score import REASON_VOCAB
from thinksae.features.scores import reason_scores


@pytest.fixture(scope="module")
def info(tokenizer):
    return TokenInfo.from_tokenizer(tokenizer)


def test_formula_by_hand():
    # feature 0: group means [3, 1] -> p = [.75, .25], H = 0.562335 nats, H / ln 2 = 0.811278,
    # (H / ln 2) ** 0.7 = 0.863808; mu+ share 1/4, mu- share 0.5/2 -> RS = 0.215952 - 0.25
    # feature 1: one group only -> H = 0 -> RS = -0 share of mu-: 0
    # feature 2: never on reasoning words -> RS = 0 - 1.5/2
    pos = torch.tensor([1.0, 2.0, 1.0])
    neg = torch.tensor([0.5, 0.0, 1.5])
    groups = torch.tensor([[3.0, 1.0], [2.0, 0.0], [0.0, 0.0]])
    rs, h = reason_score(pos, neg, groups, alpha=0.7)
    assert rs.tolist() == pytest.approx([-0.034048, 0.0, -0.75], abs=1e-6)
    assert h.tolist() == pytest.approx([0.811278, 0.0, 0.0], abs=1e-6)
    # alpha = 0 ignores the spread over groups (only where there is any)
    rs0, _ = reason_score(pos, neg, groups, alpha=0.0)
    assert rs0[0] == pytest.approx(0.25 - 0.25) and rs0[1] == pytest.approx(0.5)


def test_default_vocabulary_is_the_papers_ten_groups(tokenizer):
    m = ReasonMatcher.from_tokenizer(tokenizer)
    assert m.groups == list(REASON_VOCAB) and len(m.groups) == 10
    assert (m.before, m.after) == (1, 2)
    forms = {tokenizer.decode(list(ids)) for g, ids, _ in m.variants if m.groups[g] == "wait"}
    assert {"wait", "Wait", " wait", " Wait", "WAIT", " WAIT"} <= forms


def _positives(tokenizer, info, texts):
    ids, docs = [], []
    for d, text in enumerate(texts):
        t = tokenizer(text, add_special_tokens=False).input_ids
        ids += t
        docs += [d] * len(t)
    tokens = torch.tensor(ids)
    groups = ReasonMatcher.from_tokenizer(tokenizer).positives(tokens, torch.tensor(docs), info)
    names = list(REASON_VOCAB)
    return [(tokenizer.decode([i]), {names[g] for g in range(10) if groups[j, g]})
            for j, i in enumerate(ids)]


def test_window_is_one_before_two_after_at_word_boundaries(tokenizer, info):
    got = _positives(tokenizer, info, ["Butterfly but not. Hmmm, hmm. Waiting wait"])
    assert got == [
        ("But", set()), ("ter", set()),  # "Butterfly" is not the word "but"
        ("fly", {"but"}), (" but", {"but"}), (" not", {"but"}), (".", {"but"}),
        (" H", set()), ("mmm", set()),  # "Hmmm" is not "hmm"
        (",", {"hmm"}), (" hmm", {"hmm"}), (".", {"hmm"}), (" Waiting", {"hmm", "wait"}),
        (" wait", {"wait"}),  # " Waiting" itself is not "wait": only the window of " wait"
    ]


def test_multi_token_words_and_document_boundaries(tokenizer, info):
    got = _positives(tokenizer, info, ["So let me see it now", "End"])
    assert got == [("So", {"let me"}), (" let", {"let me"}), (" me", {"let me"}),
                   (" see", {"let me"}), (" it", {"let me"}), (" now", set()), ("End", set())]
    got = _positives(tokenizer, info, ["It is fine, but", "Next one"])
    # the window stops at the end of its document
    assert got[-4:] == [(",", {"but"}), (" but", {"but"}), ("Next", set()), (" one", set())]


def test_vocabulary_file(tmp_path, tokenizer):
    path = tmp_path / "vocab.json"
    path.write_text(json.dumps({"doubt": ["wait", "hmm"], "Conclude": ["therefore"]}))
    vocab = read_vocab(path)
    assert vocab == {"doubt": ["wait", "hmm"], "conclude": ["therefore"]}
    assert ReasonMatcher.from_tokenizer(tokenizer, vocab).groups == ["doubt", "conclude"]
    path.write_text(json.dumps(["Wait", "hmm"]))
    assert read_vocab(path) == {"wait": ["wait"], "hmm": ["hmm"]}
    for bad in ("{}", "[]", '{"a": []}', '{"a": [1]}', "nope"):
        path.write_text(bad)
        with pytest.raises(ThinksaeError):
            read_vocab(path)


def test_reason_score_through_a_pass(tokenizer, info):
    text = "Wait, so x. Then maybe y is 3 and the end is here now."
    ids = [tokenizer.bos_token_id, *tokenizer(text, add_special_tokens=False).input_ids,
           tokenizer.eos_token_id]
    words = [tokenizer.decode([i]) for i in ids]
    n = len(ids)
    # feature 0 fires 2.0 on "Wait" and " maybe"; feature 1 fires 1.0 on " end"; 2 never
    acts = torch.zeros(n, 1)
    idx = torch.full((n, 1), 2)
    for word, f, a in (("Wait", 0, 2.0), (" maybe", 0, 2.0), (" end", 1, 1.0)):
        acts[words.index(word), 0], idx[words.index(word), 0] = a, f
    matcher = ReasonMatcher.from_tokenizer(tokenizer)
    c = FeatureCollector(3, info, matcher, behaviours=["none"], top_n=2, window=2)
    zeros = torch.zeros(n, dtype=torch.long)
    c.update({"token_ids": torch.tensor(ids), "regions": zeros, "behaviours": zeros,
              "doc_index": zeros, "positions": torch.arange(n), "acts": acts, "idx": idx})
    stats = c.finish()
    positive = ["Wait", ",", " so", " Then", " maybe", " y", " is"]
    n_pos, n_neg = len(positive), n - len(positive) - 2  # BOS and EOS are in neither set
    assert stats.meta["reason_pos_tokens"] == n_pos and stats.meta["reason_neg_tokens"] == n_neg
    # group means of feature 0: "wait" 2/3 (Wait , so), "maybe" 2/4 (Then maybe y is)
    p = [(2 / 3) / (2 / 3 + 2 / 4), (2 / 4) / (2 / 3 + 2 / 4)]
    h = -sum(q * math.log(q) for q in p) / math.log(10)
    rs = reason_scores(stats)
    assert rs["reason_pos_mean"].tolist() == pytest.approx([4 / n_pos, 0, 0])
    assert rs["reason_neg_mean"].tolist() == pytest.approx([0, 1 / n_neg, 0])
    assert rs["reason_score"].tolist() == pytest.approx([h ** 0.7, -1.0, 0.0])
    assert rs["reason_entropy"][0] == pytest.approx(h)
