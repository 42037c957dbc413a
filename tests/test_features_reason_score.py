"""ReasonScore: the formula by hand, the vocabulary windows, and the score through a whole pass."""

from __future__ import annotations

import json
import math

import pytest
import torch

from thinksae.errors import ThinksaeError
from thinksae.features import FeatureCollector, ReasonMatcher, TokenInfo, read_vocab
from thinksae.features.reason_score import REASON_VOCAB, REFERENCE_TOKENS, reason_score
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


def test_formula_keeps_the_authors_epsilons_and_one_group():
    # the authors divide by (sum + 1e-12) and set h = 1 when |G| = 1: with activations of 1e-12
    # the share of feature 0 is 1e-12 / (2e-12 + 1e-12) = 1/3, not 1/2
    tiny = torch.tensor([1e-12, 1e-12], dtype=torch.float64)
    rs, h = reason_score(tiny, torch.zeros(2), tiny[:, None], alpha=0.7)
    assert h.tolist() == [1.0, 1.0] and rs.tolist() == pytest.approx([1 / 3, 1 / 3], rel=1e-9)
    # a feature with no activation on any group: p = 0, H = 0 (0 log 0 = 0), only its mu- counts
    rs, h = reason_score(torch.zeros(2), torch.tensor([1.0, 3.0]), torch.zeros(2, 3))
    assert h.tolist() == [0.0, 0.0] and rs.tolist() == pytest.approx([-0.25, -0.75])


AUTHORS_TOKENS = [  # extraction/reason_tokens.json of AIRI-Institute/SAE-Reasoning, in its order
    "alternatively", " alternatively", "Alternatively", " Alternatively", "hmm", " hmm", "Hmm",
    " Hmm", "maybe", " maybe", "Maybe", " Maybe", "wait", " wait", "Wait", " Wait", "perhaps",
    " perhaps", "Perhaps", " Perhaps", "let me", " let me", "Let me", " Let me", "therefore",
    " therefore", "Therefore", " Therefore", "however", " however", "However", " However", "But",
    "Another"]


def test_default_vocabulary_is_the_authors_34_strings(tokenizer):
    assert list(REFERENCE_TOKENS) == AUTHORS_TOKENS
    vocab = read_vocab(None)
    assert list(vocab) == list(REASON_VOCAB) and len(vocab) == 10
    assert vocab["but"] == ["But"] and vocab["another"] == ["Another"]
    assert vocab["let me"] == ["let me", " let me", "Let me", " Let me"]
    m = ReasonMatcher.from_tokenizer(tokenizer)
    assert m.groups == list(REASON_VOCAB) and (m.before, m.after) == (1, 2) and not m.boundaries
    want = sorted((REASON_VOCAB.index(s.lstrip().lower()),
                   tuple(tokenizer.encode(s, add_special_tokens=False))) for s in AUTHORS_TOKENS)
    assert sorted((g, ids) for g, ids, _ in m.variants) == want
    wide = ReasonMatcher.from_tokenizer(tokenizer, match="wide")
    forms = {tokenizer.decode(list(ids)) for g, ids, _ in wide.variants if wide.groups[g] == "wait"}
    assert {"wait", "Wait", " wait", " Wait", "WAIT", " WAIT"} <= forms and wide.boundaries
    with pytest.raises(ThinksaeError, match="reason_vocab_match"):
        read_vocab(None, "loose")


FIXED = ("Wait, but maybe not. Hmm, let me see.\nAnother way: 2 * 3 WAIT, no.\n"
         "Butterfly (therefore 6). Alternatively x")
# The R1 tokens of FIXED with, by hand, the groups whose window [p-1, p+2] around a matched token
# covers each: Wait; maybe; Hmm; let+me; Another (no space, at a line start); But (start of
# "Butterfly": no word test); there+fore (the no-space "therefore" is two tokens); Alternatively.
# Lower-case " but" and " WAIT" are not in the authors' list.
FIXED_REFERENCE = [
    ("Wait", {"wait"}), (",", {"wait"}), (" but", {"wait", "maybe"}), (" maybe", {"maybe"}),
    (" not", {"maybe"}), (".", {"maybe", "hmm"}), (" Hmm", {"hmm"}), (",", {"hmm", "let me"}),
    (" let", {"hmm", "let me"}), (" me", {"let me"}), (" see", {"let me"}),
    (".\n", {"let me", "another"}), ("Another", {"another"}), (" way", {"another"}),
    (":", {"another"}), (" ", set()), ("2", set()), (" *", set()), (" ", set()), ("3", set()),
    (" WAIT", set()), (",", set()), (" no", set()), (".\n", {"but"}), ("But", {"but"}),
    ("ter", {"but"}), ("fly", {"but"}), (" (", {"therefore"}), ("there", {"therefore"}),
    ("fore", {"therefore"}), (" ", {"therefore"}), ("6", {"therefore"}),
    (").", {"alternatively"}), (" Alternatively", {"alternatively"}), (" x", {"alternatively"}),
]


def _tiny_reference(ids: list[int], strings: list[str], tokenizer, ignore: set[int]) -> list[set]:
    """An independent plain-Python reading of the authors' matching, for the cross-check."""
    marks = [set() for _ in ids]
    for s in strings:
        pat = tokenizer.encode(s, add_special_tokens=False)
        for i in range(len(ids) - len(pat) + 1):
            if ids[i : i + len(pat)] == pat:
                for p in range(i, i + len(pat)):
                    for q in range(max(0, p - 1), min(len(ids), p + 3)):
                        marks[q].add(s.lstrip().lower())
    return [set() if t in ignore else m for t, m in zip(ids, marks)]


def test_reference_positive_set_on_a_fixed_text(tokenizer, info):
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    ids = [bos, *tokenizer.encode(FIXED, add_special_tokens=False), eos]
    groups = ReasonMatcher.from_tokenizer(tokenizer).positives(
        torch.tensor(ids), torch.zeros(len(ids), dtype=torch.long), info)
    groups[torch.tensor([0, len(ids) - 1])] = False  # BOS/EOS: the collector leaves them out
    names = list(REASON_VOCAB)
    got = [(tokenizer.decode([t]), {names[g] for g in range(10) if groups[j, g]})
           for j, t in enumerate(ids)][1:-1]
    assert got == FIXED_REFERENCE
    assert sum(bool(g) for _, g in got) == 27  # 1..15 and 24..35 of the 37 tokens
    check = _tiny_reference(ids, AUTHORS_TOKENS, tokenizer, {bos, eos})[1:-1]
    assert check == [g for _, g in FIXED_REFERENCE]
    # the wide option also takes " but" and " WAIT", and not the "But" inside "Butterfly"
    wide = ReasonMatcher.from_tokenizer(tokenizer, match="wide").positives(
        torch.tensor(ids), torch.zeros(len(ids), dtype=torch.long), info)[1:-1].any(1)
    assert wide.nonzero().flatten().tolist() == [*range(15), *range(19, 23), *range(27, 35)]


def _positives(tokenizer, info, texts, match="wide"):
    ids, docs = [], []
    for d, text in enumerate(texts):
        t = tokenizer(text, add_special_tokens=False).input_ids
        ids += t
        docs += [d] * len(t)
    tokens = torch.tensor(ids)
    groups = ReasonMatcher.from_tokenizer(tokenizer, match=match).positives(tokens, torch.tensor(docs), info)
    names = list(REASON_VOCAB)
    return [(tokenizer.decode([i]), {names[g] for g in range(10) if groups[j, g]})
            for j, i in enumerate(ids)]


def test_wide_window_is_one_before_two_after_at_word_boundaries(tokenizer, info):
    got = _positives(tokenizer, info, ["Butterfly but not. Hmmm, hmm. Waiting wait"])
    assert got == [
        ("But", set()), ("ter", set()),  # "Butterfly" is not the word "but"
        ("fly", {"but"}), (" but", {"but"}), (" not", {"but"}), (".", {"but"}),
        (" H", set()), ("mmm", set()),  # "Hmmm" is not "hmm"
        (",", {"hmm"}), (" hmm", {"hmm"}), (".", {"hmm"}), (" Waiting", {"hmm", "wait"}),
        (" wait", {"wait"}),  # " Waiting" itself is not "wait": only the window of " wait"
    ]


def test_multi_token_words_and_document_boundaries(tokenizer, info):
    for match in ("wide", "reference"):
        got = _positives(tokenizer, info, ["So let me see it now", "End"], match)
        assert got == [("So", {"let me"}), (" let", {"let me"}), (" me", {"let me"}),
                       (" see", {"let me"}), (" it", {"let me"}), (" now", set()), ("End", set())]
    got = _positives(tokenizer, info, ["It is fine, but", "Next one"])
    # the window stops at the end of its document
    assert got[-4:] == [(",", {"but"}), (" but", {"but"}), ("Next", set()), (" one", set())]
    got = _positives(tokenizer, info, ["It is fine, but", "Maybe"], "reference")
    # " but" is not matched, and "Maybe"'s window does not reach back into the previous document
    assert got[-3:] == [(",", set()), (" but", set()), ("Maybe", {"maybe"})]


def test_vocabulary_file(tmp_path, tokenizer):
    path = tmp_path / "vocab.json"
    path.write_text(json.dumps({"doubt": ["wait", "hmm"], "Conclude": ["therefore"]}))
    vocab = read_vocab(path, "wide")
    assert vocab == {"doubt": ["wait", "hmm"], "conclude": ["therefore"]}
    assert ReasonMatcher.from_tokenizer(tokenizer, vocab, "wide").groups == ["doubt", "conclude"]
    path.write_text(json.dumps(["Wait", "hmm"]))
    assert read_vocab(path, "wide") == {"wait": ["wait"], "hmm": ["hmm"]}
    # reference: exact strings, grouped by s.lstrip().lower() (the authors' file works as it is)
    path.write_text(json.dumps(["Wait", " wait", "hmm"]))
    assert read_vocab(path) == {"wait": ["Wait", " wait"], "hmm": ["hmm"]}
    path.write_text(json.dumps(AUTHORS_TOKENS))
    assert read_vocab(path) == read_vocab(None)
    for bad in ("{}", "[]", '{"a": []}', '{"a": [1]}', '[" "]', "nope"):
        path.write_text(bad)
        for match in ("wide", "reference"):
            with pytest.raises(ThinksaeError):
                read_vocab(path, match)


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
