"""The Ma et al. protocol end to end on the tiny fixture, with planted latents at the embeddings:
a " Wait" detector (their rule must select it and injection must find it token-driven), a
padding detector (selected only when padding positions count, as in their code) and a BOS
detector (the masking modes' per-text max); structure and invariants of the results, the files,
and the two masking modes side by side."""

from __future__ import annotations

import itertools
import json

import pytest
import torch

from thinksae.errors import ThinksaeError
from thinksae.sae import Sae, SaeConfig
from thinksae.sinks import SinkRule
from thinksae.validate.ma2026 import (
    LEVELS,
    Ma2026Options,
    compare_masking,
    markdown,
    run_ma2026,
    write_comparison,
    write_results,
)
from thinksae.validate.ma2026.activations import EncodingCache, Masking, encode_texts, text_max
from thinksae.validate.ma2026.stats import verdict

WAIT, PAD, BOS = 13824, 151654, 151646
DET, PADDER, BOSSER = 0, 1, 2
MAX_TOKENS = 20


def _planted(model) -> Sae:
    """16 latents, k 4: latent 0 fires 2.0 on " Wait", 1 on the pad token, 2 on BOS; the rest
    have small random encoder rows."""
    emb = model.get_input_embeddings().weight.detach()
    torch.manual_seed(0)
    sae = Sae(emb.shape[1], SaeConfig(num_latents=16, k=4))
    with torch.no_grad():
        sae.b_dec.zero_()
        for latent, token in ((DET, WAIT), (PADDER, PAD), (BOSSER, BOS)):
            e = emb[token]
            sae.encoder.weight[latent] = 10 * e / e.norm() ** 2  # 10 on the token
            sae.encoder.bias[latent] = -8.0  # fires (2.0) on it alone
    return sae


def _texts():
    subjects = ["the sum", "the total", "this step", "the answer", "my count", "that value"]
    hedges = ["Hmm", "So", "Okay", "Right", "Well"]
    checks = ["maybe not", "let me check", "that is odd", "recount it"]
    reasoning = [f"{h}, {s} is right. Wait, {c}." for h, s, c in
                 itertools.islice(itertools.product(hedges, subjects, checks), 60)]
    adjectives = ["red", "old", "small", "tall", "quiet", "white"]
    nouns = ["house", "mill", "bakery", "school", "church", "station", "library"]
    other = [f"The {a} {n} stands near the river, and its door is painted green every spring by the "
             "people of the town." for a, n in itertools.product(adjectives, nouns)]
    return reasoning, other


OPTIONS = dict(n_texts=30, n_injection_texts=12, max_tokens=MAX_TOKENS, top_candidates=4,
               strategies="prepend,append,intersperse,replace,comma_list,inject_bigram,"
                          "inject_trigram,bigram_before,bigram_after,trigram,active_trigram",
               texts_per_batch=8)


@pytest.fixture(scope="module")
def world(tiny_model, tokenizer, one_thread):
    reasoning, other = _texts()
    lengths = [len(tokenizer(t)["input_ids"]) for t in reasoning]
    assert max(lengths) < MAX_TOKENS  # reasoning texts end in padding ...
    assert min(len(tokenizer(t)["input_ids"]) for t in other) > MAX_TOKENS  # ... the others never
    sae = _planted(tiny_model)
    cmp = compare_masking(tiny_model, tokenizer, sae, "embed_tokens", reasoning, other,
                          Ma2026Options(**OPTIONS), features=[5])
    return {"sae": sae, "reasoning": reasoning, "other": other, "cmp": cmp}


def test_per_text_max_and_masking_modes(world, tiny_model, tokenizer):
    texts = world["other"][:3]
    sae = world["sae"]

    def maxes(masking):
        batches = list(encode_texts(tiny_model, tokenizer, sae, "embed_tokens", texts, 8, masking, 2))
        return batches, torch.cat([text_max(b, sae.num_latents) for b in batches])

    batches, theirs = maxes(Masking("ma2026", True))
    assert all(b.token_ids.shape[1] == 8 for b in batches)  # padded to max_tokens
    assert theirs[:, BOSSER].tolist() == pytest.approx([2.0] * 3, abs=1e-4)  # BOS counts
    _, ours = maxes(Masking("sinks", True, SinkRule(norm_multiple=None)))
    assert ours[:, BOSSER].tolist() == [0.0] * 3  # BOS is a special id: masked
    assert bool((ours <= theirs + 1e-6).all())  # fewer positions, never a larger max
    tiny = Masking("sinks", True, SinkRule(norm_multiple=2.0, median_norm=1e-6))
    _, none = maxes(tiny)  # every token's norm is above 2 × 1e-6: all sinks
    assert float(none.max()) == 0.0
    batch = next(encode_texts(tiny_model, tokenizer, sae, "embed_tokens", texts, 8, tiny, 3))
    assert batch.dropped == {"special": 3, "by_norm": 21, "padding_counted": 0}


def test_planted_detector_is_selected_and_token_driven(world):
    for result in (world["cmp"].sinks, world["cmp"].ma2026):
        feats = {f.candidate.latent: f for f in result.features}
        det = feats[DET]
        assert det.candidate.selected and det.candidate.d > 0.3 and det.candidate.auc == 1.0
        assert det.candidate.mean_nr == 0.0 and det.candidate.mean_r == pytest.approx(2.0, abs=1e-4)
        assert det.tokens.tokens[0].text == " Wait" and det.tokens.tokens[0].count == 30
        assert det.verdict in LEVELS[:3] and det.verdict != "context_dependent"
        assert det.effects["prepend"].mean_base == 0.0 and det.effects["prepend"].d > 0
        assert det.reasoning_mean == pytest.approx(2.0, abs=1e-4)


def test_padding_detector_is_their_pitfall(world):
    sinks = {f.candidate.latent: f for f in world["cmp"].sinks.features}
    theirs = {f.candidate.latent: f for f in world["cmp"].ma2026.features}
    assert PADDER not in sinks  # masked: never fires
    assert theirs[PADDER].candidate.selected  # padding counted: fires on every reasoning text
    assert theirs[PADDER].candidate.mean_nr == 0.0
    assert BOSSER not in sinks and BOSSER not in theirs  # BOS in every text of both sets: d = 0


def test_result_structure_and_invariants(world):
    opts = OPTIONS["strategies"].split(",")
    for result in (world["cmp"].sinks, world["cmp"].ma2026):
        assert result.texts == {"reasoning": 30, "nonreasoning": 30, "injection": 12}
        assert result.tests == 16 and result.selected >= 1
        selected = [f for f in result.features if f.candidate.selected]
        assert 1 <= len(selected) <= 4
        named = [f.candidate.latent for f in result.features if "named" in f.candidate.why]
        assert 5 in named and (result is world["cmp"].ma2026 or named == [5])
        for f in result.features:
            if f.verdict is None:
                assert f.skipped and not f.effects
                continue
            assert list(f.effects) == opts
            assert all(e.n == 12 for e in f.effects.values())
            assert f.best == max(opts, key=lambda s: f.effects[s].d)
            assert f.verdict == verdict(f.effects[f.best].d, f.effects[f.best].p)
        s = result.summary["all"]
        if s["judged"]:
            assert sum(s["fractions"].values()) == pytest.approx(1.0)
            assert s["token_driven_any_level"] == pytest.approx(1 - s["fractions"]["context_dependent"])
            assert sum(s["best_strategy_share"].values()) == pytest.approx(1.0)
        assert result.summary["paper"]["token_driven_any_level"] == [0.77, 0.95]
    assert world["cmp"].sinks.masking["selection"]["special"] >= 60  # one BOS per text
    assert world["cmp"].ma2026.masking["selection"]["padding_counted"] > 0


def test_masking_comparison_and_files(world, tmp_path):
    cmp = world["cmp"]
    judged_sinks = [f.candidate.latent for f in cmp.sinks.features if f.verdict is not None]
    assert [r["feature"] for r in cmp.rows] == judged_sinks
    assert cmp.changed == sum(r["sinks"] != r["ma2026"] for r in cmp.rows)
    assert cmp.selection["ma2026"] >= cmp.selection["both"] >= 1
    write_results(cmp.sinks, tmp_path)
    data = json.loads((tmp_path / "ma2026.json").read_text())
    assert data["format"] == "thinksae-ma2026/1" and data["options"]["mask"] == "sinks"
    row = next(r for r in data["features"] if r["feature"] == DET)
    assert set(row["strategies"]["prepend"]) == {"d", "p", "mean_injected", "mean_base",
                                                 "sd_injected", "sd_base", "n"}
    md = (tmp_path / "ma2026.md").read_text()
    assert md.startswith("| feature | why |") and "77%–95%" in md
    write_comparison(cmp, tmp_path)
    assert json.loads((tmp_path / "ma2026_masking.json").read_text())["changed"] == cmp.changed


def test_the_second_masking_mode_reuses_the_first_encodings(world, tiny_model, tokenizer):
    """compare_masking's ma2026 run takes the texts the sinks run saw from its cache, and comes out
    as the same run made on its own."""
    cmp = world["cmp"]
    n_inj = OPTIONS["n_injection_texts"]
    assert cmp.reused >= 2 * n_inj  # at least the base and reasoning injection texts
    judged = [f.candidate.latent for f in cmp.sinks.features]
    alone = run_ma2026(tiny_model, tokenizer, world["sae"], "embed_tokens", world["reasoning"],
                       world["other"], Ma2026Options(**{**OPTIONS, "mask": "ma2026"}), features=judged)
    assert cmp.ma2026.verdicts() == alone.verdicts()
    for a, b in zip(cmp.ma2026.features, alone.features, strict=True):
        assert a.candidate.latent == b.candidate.latent
        for s, e in a.effects.items():
            assert e.d == pytest.approx(b.effects[s].d, rel=1e-4, abs=1e-6)


def test_encoding_cache_runs_each_text_once(world, tiny_model, tokenizer):
    texts = world["other"][:5] + world["other"][:2]  # two texts twice
    calls = []
    handle = tiny_model.model.embed_tokens.register_forward_hook(lambda m, i, o: calls.append(i[0].shape[0]))
    sinks = Masking("sinks", False, SinkRule(norm_multiple=None))
    try:
        cache = EncodingCache()
        first = list(encode_texts(tiny_model, tokenizer, world["sae"], "embed_tokens", texts, 8, sinks, 4,
                                  cache=cache))
        assert sum(calls) == 5 and cache.reused == 2  # the repeats in the same call are reused
        again = list(encode_texts(tiny_model, tokenizer, world["sae"], "embed_tokens", texts, 8,
                                  Masking("ma2026", False), 4, cache=cache))
        assert sum(calls) == 5 and cache.reused == 9  # the other mode's injection pass: no model
        list(encode_texts(tiny_model, tokenizer, world["sae"], "embed_tokens", texts, 8,
                          Masking("ma2026", True), 4, cache=cache))
        assert sum(calls) == 12  # their selection pass counts padding positions: always run
    finally:
        handle.remove()
    plain = list(encode_texts(tiny_model, tokenizer, world["sae"], "embed_tokens", texts, 8, sinks, 4))
    for a, b in zip(first, plain, strict=True):
        assert torch.equal(a.counted, b.counted) and torch.allclose(a.acts, b.acts, atol=1e-5)
    own = torch.arange(again[0].token_ids.shape[1]) < again[0].lengths[:, None]
    assert torch.equal(again[0].counted, own)  # their injection pass: each text's own positions


def test_bad_input_before_the_model_runs(tiny_model, tokenizer):
    sae = _planted(tiny_model)
    reasoning, other = _texts()

    class NoModel:  # any use of the model would fail loudly
        def parameters(self):
            raise AssertionError("the model ran")

    for opts, named, says in ((dict(strategies="prepend,warp"), [], "unknown injection strategy"),
                              ({}, [99], "unknown feature 99"),
                              (dict(n_texts=3), [], "no latent can reach")):
        with pytest.raises(ThinksaeError, match=says):
            run_ma2026(NoModel(), tokenizer, sae, "embed_tokens", reasoning, other,
                       Ma2026Options(**{**OPTIONS, **opts}), features=named)
    with pytest.raises(ThinksaeError, match="too few texts"):
        run_ma2026(NoModel(), tokenizer, sae, "embed_tokens", reasoning[:1], other,
                   Ma2026Options(**OPTIONS))


def test_nothing_selected_when_the_sets_do_not_differ(tiny_model, tokenizer, one_thread):
    _, other = _texts()
    result = run_ma2026(tiny_model, tokenizer, _planted(tiny_model), "embed_tokens", other, other,
                        Ma2026Options(**{**OPTIONS, "n_texts": 20}))
    assert result.selected == 0 and result.features == []
    assert result.summary["selected"]["judged"] == 0
    assert result.summary["selected"]["token_driven_any_level"] is None
    assert "| token-driven at some level | – |" in markdown(result)
