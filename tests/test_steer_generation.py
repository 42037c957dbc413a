"""A sweep decodes the baseline and every setting in the same batches: each row exactly as if its
setting ran alone (greedy and sampled), every row of a prompt padded to the same width."""

from __future__ import annotations

import pytest
import torch

from thinksae.chat import ThinkMarkers, build_prompt, stop_ids
from thinksae.generation import GenerationConfig
from thinksae.generation.batches import plan_groups, plan_rows, prompt_lengths
from thinksae.generation.decode import Decoding, generate_rows
from thinksae.interventions import Intervention, Window
from thinksae.sae import Sae, SaeConfig

QUESTIONS = ["What is 2+2?", "Tom has 7 apples and eats 2. How many are left?",
             "A pencil costs 3 dollars. How much do 4 pencils cost?"]
SETTINGS = [[], [Intervention(3, "add", 8.0), Intervention(5, "add", 8.0)],
            [Intervention(3, "scale", 1.0)], [Intervention(9, "clamp", 6.0)]]

pytestmark = pytest.mark.usefixtures("one_thread")


def test_plan_rows_keeps_groups_whole_and_widths_fixed():
    lengths = [5, 9, 7, 3, 8]
    groups = plan_groups(lengths, 2)
    assert groups == [[1, 4], [2, 0], [3]]
    batches = plan_rows(groups, [0, 1, 2], 6, lengths)
    assert [b.rows for b in batches] == [
        [(0, 1), (0, 4), (1, 1), (1, 4), (2, 1), (2, 4)],
        [(0, 2), (0, 0), (1, 2), (1, 0), (2, 2), (2, 0)], [(0, 3), (1, 3), (2, 3)]]
    assert [b.width for b in batches] == [9, 7, 3]
    # more settings than a batch holds: a group is split, every row of a prompt as wide
    split = plan_rows([[1], [3]], list(range(5)), 2, lengths)
    assert [len(b.rows) for b in split] == [2, 2, 1, 2, 2, 1]
    assert [b.width for b in split] == [9, 9, 9, 3, 3, 3]
    # the baseline alone packs whole groups; later settings pad to its widths, never mixing them
    first = plan_rows(groups, [0], 4, lengths)
    assert [(b.rows, b.width) for b in first] == [
        ([(0, 1), (0, 4), (0, 2), (0, 0)], 9), ([(0, 3)], 3)]
    fixed = {p: b.width for b in first for _, p in b.rows}
    later = plan_rows(groups, [1], 4, lengths, fixed)
    assert [(b.rows, b.width) for b in later] == [
        ([(1, 1), (1, 4), (1, 2), (1, 0)], 9), ([(1, 3)], 3)]


@pytest.fixture(scope="module")
def setup(tiny_model, tokenizer):
    torch.manual_seed(1)
    sae = Sae(64, SaeConfig(expansion_factor=2, k=4))
    prompts = [build_prompt(tokenizer, q, None, True) for q in QUESTIONS]
    markers = ThinkMarkers.from_tokenizer(tokenizer, stop_ids(tiny_model, tokenizer), sentences=False)
    return sae, prompts, markers


@pytest.mark.parametrize("do_sample", [False, True])
def test_settings_in_one_batch_match_separate_runs(tiny_model, tokenizer, setup, do_sample):
    sae, prompts, markers = setup
    generation = GenerationConfig(max_new_tokens=6, do_sample=do_sample, temperature=1.5,
                                  top_p=1.0, seed=3)
    ids = [f"q{i}" for i in range(len(prompts))]
    lengths = prompt_lengths(tokenizer, prompts)
    groups = plan_groups(lengths, 3)
    dec = Decoding(tiny_model, tokenizer, sae, "layers.1", Window("think", "none"), markers)
    common = dict(prompts=prompts, ids=ids, generation=generation)
    batches = plan_rows(groups, [0, 1, 2, 3], 12, lengths)
    assert len(batches) == 1 and len(batches[0].rows) == 12
    together = generate_rows(dec, **common, batches=batches, specs=SETTINGS)
    for s, spec in enumerate(SETTINGS):
        (alone,) = generate_rows(dec, **common, batches=plan_rows(groups, [0], 3, lengths),
                                 specs=[spec])
        for p in range(len(prompts)):
            (g1, r1), (g2, r2) = together[s][p], alone[p]
            assert g1.width == g2.width
            assert torch.equal(g1.ids[r1], g2.ids[r2])  # token-exact
            if spec:
                assert torch.equal(g1.steered[r1], g2.steered[r2]) and g1.steered[r1].any()
                torch.testing.assert_close(g1.kl[r1], g2.kl[r2], equal_nan=True, rtol=1e-4,
                                           atol=1e-6)
                assert g1.row_stats[r1].fired == g2.row_stats[r2].fired
            else:
                assert g1.row_stats[r1] is None and not g1.steered[r1].any()
    base = [together[0][p][0].ids[together[0][p][1]] for p in range(3)]
    ident = [together[2][p][0].ids[together[2][p][1]] for p in range(3)]
    strong = [together[1][p][0].ids[together[1][p][1]] for p in range(3)]
    assert all(torch.equal(a, b) for a, b in zip(base, ident))  # identity = baseline, also sampled
    assert any(not torch.equal(a, b) for a, b in zip(base, strong))


@pytest.mark.parametrize("window", [Window("think", "none"), Window("prompt", "none")])
def test_shared_prefill_gives_the_rows_of_full_prefills(tiny_model, tokenizer, setup, window,
                                                        monkeypatch):
    """Prompt positions before the first steered one are prefilled once per prompt and copied to
    its rows: the same tokens, steered positions and KL as prefilling every row, and the identity
    setting still has KL exactly 0."""
    import thinksae.generation.decode as generation_module
    from thinksae.generation.prefill import unsteered_length

    sae, prompts, markers = setup
    generation = GenerationConfig(max_new_tokens=6)
    ids = [f"q{i}" for i in range(len(prompts))]
    lengths = prompt_lengths(tokenizer, prompts)
    batches = plan_rows(plan_groups(lengths, 3), [0, 1, 2, 3], 12, lengths)
    dec = Decoding(tiny_model, tokenizer, sae, "layers.1", window, markers)
    common = dict(prompts=prompts, ids=ids, generation=generation, batches=batches, specs=SETTINGS)
    used = []
    monkeypatch.setattr(generation_module, "unsteered_length",
                        lambda *a: used.append(unsteered_length(*a)) or used[-1])
    shared = generate_rows(dec, **common)
    assert used and 0 < used[0] < batches[0].width
    monkeypatch.setattr(generation_module, "unsteered_length", lambda *a: 0)
    full = generate_rows(dec, **common)
    for s, spec in enumerate(SETTINGS):
        for p in range(len(prompts)):
            (g1, r1), (g2, r2) = shared[s][p], full[s][p]
            assert torch.equal(g1.ids[r1], g2.ids[r2])
            if spec:
                assert torch.equal(g1.steered[r1], g2.steered[r2])
                assert not g1.steered[r1, :used[0]].any()
                torch.testing.assert_close(g1.kl[r1], g2.kl[r2], equal_nan=True, rtol=1e-4,
                                           atol=1e-6)
    identity = torch.stack([g.kl[r] for g, r in shared[2].values()])
    assert torch.equal(identity[~identity.isnan()], torch.zeros(int((~identity.isnan()).sum()),
                                                                dtype=torch.float64))
    assert (~identity.isnan()).sum() > 0


def test_rows_the_steering_never_changed_get_kl_0_without_passes(tiny_model, tokenizer, setup,
                                                                 monkeypatch):
    """KL passes run only for rows whose hookpoint output the steering changed while they were
    generated; the identity setting's rows get KL exactly 0 at their steered positions."""
    from thinksae.generation.kl import SteeredRows

    sae, prompts, markers = setup
    lengths = prompt_lengths(tokenizer, prompts)
    batches = plan_rows(plan_groups(lengths, 3), [0, 1, 2, 3], 12, lengths)
    passed = []
    real_kl = SteeredRows.kl
    monkeypatch.setattr(SteeredRows, "kl",
                        lambda self, *a: passed.append(list(a[-1])) or real_kl(self, *a))
    dec = Decoding(tiny_model, tokenizer, sae, "layers.1", Window("prompt", "none"), markers)
    out = generate_rows(dec, prompts, [f"q{i}" for i in range(3)], batches,
                        GenerationConfig(max_new_tokens=6), SETTINGS)
    rows = batches[0].rows
    assert passed == [[r for r, (s, _) in enumerate(rows) if s in (1, 3)]]
    for p in range(3):
        gen, r = out[2][p]
        flagged = gen.steered[r]
        assert flagged.any() and torch.equal(gen.kl[r][flagged], torch.zeros(int(flagged.sum()),
                                                                                dtype=torch.float64))
        assert gen.kl[r][~flagged].isnan().all()
        moved, m = out[1][p]
        assert (moved.kl[m][moved.steered[m]] > 0).any()
