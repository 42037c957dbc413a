"""Feature absorption: the per-word formula on planted latents and probe directions, the main-latent
rule, the per-letter and aggregate means by hand, the vocabulary and prompts of the real R1
tokenizer, a bad vocabulary refused before any model pass, and an end-to-end run on the tiny
model."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from thinksae import ThinksaeError
from thinksae.evaluate.saebench.absorption import AbsorptionOptions, absorption_eval
from thinksae.evaluate.saebench.absorption_score import (
    SAEBENCH,
    Thresholds,
    WordAbsorption,
    aggregate_letters,
    grow_main_latents,
    letter_absorption,
    word_absorption,
)
from thinksae.evaluate.saebench.letters import (
    LETTERS,
    LetterWord,
    check_vocabulary,
    first_letter_prompts,
    letter_vocabulary,
    split_words,
)
from thinksae.evaluate.saebench.probes import binary_f1
from thinksae.sae import Sae, SaeConfig

COS = torch.tensor([0.9, 0.5, 0.05, 0.3, -0.2])
"""cos(p̂, d_i) of five latents; latent 0 is the letter's main latent."""


def _word(projection, acts: dict[int, float], main=(0,), t=SAEBENCH):
    ids = torch.tensor(list(acts) + [4])  # a padding slot (activation 0) on latent 4
    values = torch.tensor(list(acts.values()) + [0.0])
    return word_absorption(projection, values, ids, COS, list(main), t)


def test_word_absorption_by_hand():
    # the main latent covers the projection: c0 = 2·0.9 = 1.8 ≥ 1
    assert _word(1.0, {0: 2.0}) == WordAbsorption(0.0, False, pytest.approx(1.8), 0.0)
    # main silent, c1 = 1.6·0.5 = 0.8 and c3 = 0.5·0.3 = 0.15 absorb; c2 = 4·0.05 = 0.2 has
    # cos < 0.1 so does not count. A = 0.95 ≥ 0.4·1, M = 0 → fraction 1; top c1 = 0.8, cos 0.5,
    # 0.8/1 ≥ 0.4 → full
    w = _word(1.0, {1: 1.6, 3: 0.5, 2: 4.0})
    assert (w.fraction, w.full) == (1.0, True) and w.absorber_projection == pytest.approx(0.95)
    # partial: M = 0.5·0.9 = 0.45, A = 1.2·0.5 + 1·0.3 = 0.9, proj 1.5: m = min(0.9, 1.05) = 0.9
    w = _word(1.5, {0: 0.5, 1: 1.2, 3: 1.0})
    assert w.fraction == pytest.approx(0.9 / (0.9 + 0.45)) and not w.full  # the main latent fired
    # only the top max_absorbers count: with 1, A = 0.6 → 0.6 / 1.05
    w = _word(1.5, {0: 0.5, 1: 1.2, 3: 1.0}, t=Thresholds(max_absorbers=1))
    assert w.fraction == pytest.approx(0.6 / 1.05)
    # m capped by what the main latents leave: A = 1.0, proj − M = 0.55 → 0.55 / (0.55 + 0.45)
    assert _word(1.0, {0: 0.5, 1: 2.0}).fraction == pytest.approx(0.55)
    # absorbers too weak: A = 0.3 < 0.4·1
    assert _word(1.0, {0: 0.5, 3: 1.0}).fraction == 0.0
    # a latent of cos 0.05 carries it all: full (cos ≥ 0.025, 0.5 ≥ 0.4) but no fraction
    w = _word(1.0, {2: 10.0})
    assert (w.fraction, w.full) == (0.0, True)
    # an anti-aligned latent (c < 0) absorbs nothing, and is never the full absorber
    assert _word(1.0, {4: 3.0}) == WordAbsorption(0.0, False, 0.0, 0.0)
    # a non-positive projection is no absorption
    assert _word(0.0, {1: 5.0}) == WordAbsorption(0.0, False, 0.0, pytest.approx(2.5))
    assert _word(-1.0, {1: 5.0}).full is False


def test_word_absorption_with_planted_decoder_directions():
    """d0 = p̂ (main), d1 at 60° to p̂, d2 ⟂ p̂: x = 1.2·p̂ + noise ⟂ p̂, main silent, d1 fires."""
    p = torch.tensor([3.0, 4.0, 0.0])  # ‖p‖ = 5
    p_hat = p / 5
    ortho = torch.tensor([-4.0, 3.0, 0.0]) / 5
    decoder = torch.stack([2 * p_hat, 0.5 * p_hat + math.sqrt(3) / 2 * ortho, torch.tensor([0, 0, 1.0])])
    cos = F.normalize(decoder, dim=-1) @ F.normalize(p, dim=0)
    assert cos.tolist() == pytest.approx([1.0, 0.5, 0.0], abs=1e-6)
    x = 1.2 * p_hat + 0.7 * ortho
    w = word_absorption(float(x @ p_hat), torch.tensor([2.0, 1.0]), torch.tensor([1, 2]), cos, [0])
    # c1 = 2·0.5 = 1.0 ≥ 0.4·1.2; M = 0 → fraction 1; 1.0/1.2 ≥ 0.4 → full
    assert (w.fraction, w.full, w.absorber_projection) == (1.0, True, pytest.approx(1.0))
    w = word_absorption(float(x @ p_hat), torch.tensor([0.3, 2.0]), torch.tensor([0, 1]), cos, [0])
    # M = 0.3, A = 1.0, proj − M = 0.9 → 0.9 / 1.2
    assert w.fraction == pytest.approx(0.9 / 1.2) and not w.full


def test_main_latents_grow_while_f1_jumps():
    nested = [[3], [3, 7], [3, 7, 1], [3, 7, 1, 2]]
    assert grow_main_latents([0.5, 0.6, 0.62, 0.9], nested) == [3, 7]  # 0.62 ≤ 0.6 + 0.03: stop
    assert grow_main_latents([0.5, 0.51, 0.9, 0.95], nested) == [3]
    assert grow_main_latents([0.1, 0.2, 0.3, 0.4], nested) == [3, 7, 1, 2]
    assert grow_main_latents([0.0], [[5]]) == [5]  # k = 1 always counts
    assert grow_main_latents([], []) == []


def test_letter_and_aggregate_means_by_hand():
    words = [WordAbsorption(1.0, True, 0, 1), WordAbsorption(0.5, False, 0, 1),
             WordAbsorption(0.0, False, 1, 0)]
    a = letter_absorption("a", 0.9, [0.8, 0.85], [3, 7], words)
    assert (a.true_positives, a.split_features) == (3, 1)
    assert a.mean_absorption_fraction == pytest.approx(0.5) and a.full_absorption_rate == pytest.approx(1 / 3)
    b = letter_absorption("b", 0.7, [0.6], [2], [WordAbsorption(0.2, False, 0, 0)])
    c = letter_absorption("c", 0.6, [0.5], [1], [WordAbsorption(1.0, True, 0, 1)])  # F1 not > 0.6
    d = letter_absorption("d", 0.95, [0.9], [4], [])  # no true positive
    assert d.mean_absorption_fraction is None
    agg = aggregate_letters([a, b, c, d], min_probe_f1=0.6, min_letters=2)
    assert agg["letters_evaluated"] == ["a", "b"]
    assert agg["mean_absorption_fraction"] == pytest.approx((0.5 + 0.2) / 2)
    assert agg["std_absorption_fraction"] == pytest.approx(math.sqrt((0.15 ** 2) * 2))
    assert agg["mean_full_absorption_rate"] == pytest.approx((1 / 3 + 0) / 2)
    assert agg["mean_main_latents"] == 1.5 and agg["mean_split_features"] == 0.5
    assert aggregate_letters([a, b], 0.6, min_letters=3)["mean_absorption_fraction"] is None


def test_binary_f1_by_hand():
    pred = torch.tensor([1, 1, 0, 0, 1], dtype=torch.bool)
    truth = torch.tensor([1, 0, 1, 0, 1], dtype=torch.bool)
    assert binary_f1(pred, truth) == pytest.approx(2 * 2 / (2 * 2 + 1 + 1))  # TP 2, FP 1, FN 1
    assert binary_f1(torch.zeros(3, dtype=torch.bool), torch.ones(3, dtype=torch.bool)) == 0.0


def test_vocabulary_split_and_prompts_of_the_r1_tokenizer(tokenizer):
    words = letter_vocabulary(tokenizer)
    by_text = {w.text: w for w in words}
    assert " cat" in by_text and by_text[" cat"].letter == LETTERS.index("c")
    assert all(w.text.lstrip(" ").isalpha() and w.text.lstrip(" ").isascii() for w in words)
    assert not any(w.text.startswith("  ") for w in words) and len(words) > 20_000
    check_vocabulary(words, 5)
    split = split_words(words, 6, 0.2, seed=1)
    assert split == split_words(words, 6, 0.2, seed=1)
    assert {w.token_id for w in split.train}.isdisjoint(w.token_id for w in split.test)
    for ell in range(26):  # per letter: 6 words, round(1.2) = 1 held out
        assert sum(w.letter == ell for w in split.test) == 1
        assert sum(w.letter == ell for w in split.train) == 5
    (prompt,) = first_letter_prompts([by_text[" cat"]], [by_text[" dog"], by_text["Apple"]],
                                     tokenizer, "{word} has the first letter:", 2, seed=0)
    assert prompt.ids[prompt.position] == by_text[" cat"].token_id
    text = tokenizer.decode(prompt.ids)
    assert text.startswith("<｜begin▁of▁sentence｜>\n") and text.endswith("\n cat has the first letter:")
    assert " dog has the first letter: D\n" in text and "Apple has the first letter: A\n" in text


class _SmallVocab:
    """A tokenizer with too few letter words: only a-words and one b-word."""

    all_special_ids = [0]

    def get_vocab(self):
        return {"<s>": 0, "ant": 1, "Ġaxe": 2, "b": 3, "42": 4}

    def convert_tokens_to_string(self, tokens):
        return "".join(tokens).replace("Ġ", " ")


def test_too_few_words_per_letter_is_refused_before_the_model_runs():
    with pytest.raises(ThinksaeError, match=r"too few letter-only tokens.*a \(2\), b \(1\), c \(0\)"):
        absorption_eval(None, _SmallVocab(), None, "layers.1")  # no model: it must not be touched
    with pytest.raises(ThinksaeError, match="min_words_per_letter must be >= 2"):
        absorption_eval(None, _SmallVocab(), None, "layers.1", AbsorptionOptions(min_words_per_letter=1))
    with pytest.raises(ThinksaeError, match="contain {word} once"):
        absorption_eval(None, _SmallVocab(), None, "layers.1", AbsorptionOptions(prompt_template="x"))
    words = [LetterWord(i, "a", 0) for i in range(3)]
    with pytest.raises(ThinksaeError, match="use a model with a larger vocabulary"):
        check_vocabulary(words, 2)


def test_end_to_end_on_the_tiny_model(tiny_model, tokenizer, one_thread):
    torch.manual_seed(0)
    sae = Sae(64, SaeConfig(expansion_factor=4, k=8))
    opts = AbsorptionOptions(words_per_letter=5, icl_examples=2, probe_epochs=5, max_k=3,
                             min_probe_f1=0.0, min_letters=1, batch_size=32)
    result = absorption_eval(tiny_model, tokenizer, sae, "layers.1", opts)
    assert (result.train_words + result.sink_words <= 26 * 4 and result.test_words <= 26
            and result.train_words + result.test_words + result.sink_words == 26 * 5)
    assert [x.letter for x in result.letters] == list(LETTERS)
    for x in result.letters:
        assert 1 <= len(x.main_latents) <= 3 and x.split_features == len(x.main_latents) - 1
        assert len(x.sparse_probe_f1) == 3 and all(0 <= f <= 1 for f in x.sparse_probe_f1)
        assert len(set(x.main_latents)) == len(x.main_latents)
        assert 0 <= x.true_positives <= 1 and 0 <= x.probe_f1 <= 1
        if x.true_positives:
            assert 0 <= x.mean_absorption_fraction <= 1 and 0 <= x.full_absorption_rate <= 1
    agg = result.aggregate
    evaluated = [x for x in result.letters if x.probe_f1 > 0 and x.true_positives]
    assert agg["letters_evaluated"] == [x.letter for x in evaluated]
    if evaluated:
        assert agg["mean_absorption_fraction"] == pytest.approx(
            sum(x.mean_absorption_fraction for x in evaluated) / len(evaluated))
    d = result.to_dict()
    assert d["options"]["words_per_letter"] == 5 and len(d["letters"]) == 26


def test_one_letter_with_a_planted_main_latent_and_absorber():
    """Letter a: latent 0 (= e0) is its main latent; latent 1 (cos 0.8 with the probe e0) fires
    instead of it on one test word. Ground-truth probe logit = x·e0 − 0.5."""
    from thinksae.evaluate.saebench.absorption import _letter
    from thinksae.evaluate.saebench.probes import sparse_latents

    eye = torch.eye(4)
    decoder = F.normalize(torch.stack([eye[0], 0.8 * eye[0] + 0.6 * eye[1], eye[2], eye[3]]), dim=-1)
    weight, bias = torch.zeros(26, 4), torch.full((26,), -0.5)
    weight[0] = eye[0]
    # training words: 6 a-words fire latent 0; 6 others fire latent 2 or 3
    train_acts = torch.tensor([[1.0]] * 12)
    train_ids = torch.tensor([[0]] * 6 + [[2]] * 3 + [[3]] * 3)
    y_train = torch.tensor([0] * 6 + [1] * 6)
    # test: a-word 1 fires its main latent (x = e0), a-word 2 fires the absorber only
    # (x = 0.8 e0 + 0.6 e1), then two b-words on latent 2 (x = e2)
    test_acts, test_ids = torch.tensor([[1.0], [1.0], [1.0], [1.0]]), torch.tensor([[0], [1], [2], [2]])
    x_test = torch.stack([eye[0], 0.8 * eye[0] + 0.6 * eye[1], eye[2], eye[2]])
    data = {"y_train": y_train, "y_test": torch.tensor([0, 0, 1, 1]), "x_test": x_test,
            "test_latents": (test_acts, test_ids),
            "codes_train": sparse_latents(train_acts, train_ids, 4),
            "codes_test": sparse_latents(test_acts, test_ids, 4)}
    opts = AbsorptionOptions(max_k=2)
    result = _letter(0, opts, (weight, bias), torch.tensor([0, 2]), data, decoder)
    # k = 1 (latent 0): predicts a-word 1 only → F1 = 2/(2 + 1) = 2/3; k = 2 adds latent 2, which
    # tells nothing more about a → no jump → main = [0]
    assert result.sparse_probe_f1[0] == pytest.approx(2 / 3)
    assert result.main_latents == [0] and result.split_features == 0
    # both a-words have logits 0.5 and 0.3 > 0: true positives; probe F1 = 1 (b-words at −0.5)
    assert (result.true_positives, result.probe_f1) == (2, 1.0)
    # word 1: M = 1 ≥ proj 1 → 0; word 2: M = 0, c1 = 1·0.8 = proj 0.8 → fraction 1, full
    assert result.mean_absorption_fraction == pytest.approx(0.5)
    assert result.full_absorption_rate == pytest.approx(0.5)
