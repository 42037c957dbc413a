"""Steering hooks on the tiny Qwen2: intervention arithmetic against a hand computation, the error
term kept, windows (scanner, teacher-forced and cached generation agree), hooks always removed."""

from __future__ import annotations

import pytest
import torch

from thinksae.errors import ThinksaeError
from thinksae.models import capture, decoder_stack, resolve_hookpoint
from thinksae.sae import Sae, SaeConfig
from thinksae.steer import Intervention, ThinkMarkers, Window, scan, steering

HP = "layers.1"
OPEN, CLOSE, EOS, PAD, DOT = 500, 501, 502, 503, 13
"""Marker ids of the small-vocabulary model below (R1's real ids are tested with its tokenizer)."""


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def model():
    """A tiny Qwen2 with a 512-token vocabulary (fast generation) and sharp predictions."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    cfg = Qwen2Config(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=3,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                      initializer_range=0.1, tie_word_embeddings=True)
    return Qwen2ForCausalLM(cfg).eval()


@pytest.fixture(scope="module")
def sae() -> Sae:
    torch.manual_seed(1)
    return Sae(64, SaeConfig(expansion_factor=2, k=4))


@pytest.fixture(scope="module")
def ids() -> torch.Tensor:
    return torch.randint(20, 500, (2, 12), generator=torch.Generator().manual_seed(0))


def markers() -> ThinkMarkers:
    return ThinkMarkers(OPEN, CLOSE, frozenset({EOS, PAD}), frozenset({DOT}))


def _run(model, ids, attention_mask=None) -> tuple[torch.Tensor, torch.Tensor]:
    """The hookpoint output as the next layer sees it, and the final hidden states."""
    seen = []
    handle = resolve_hookpoint(model, HP).register_forward_hook(
        lambda _m, _i, out: seen.append(out[0] if isinstance(out, tuple) else out))
    try:
        out = decoder_stack(model)(input_ids=ids, attention_mask=attention_mask, use_cache=False)
    finally:
        handle.remove()
    return seen[0], out.last_hidden_state


def _features(sae, x) -> tuple[list[int], int]:
    """Latents active at some but not all positions (most often first), and one never active."""
    dense = sae.dense_acts(x.reshape(-1, 64))
    fired = (dense > 0).sum(0)
    partial = [int(i) for i in torch.argsort(fired, descending=True)
               if 0 < fired[i] < len(dense)]
    never = int(torch.nonzero(fired == 0)[0])
    return partial, never


def _hooks(model) -> int:
    return len(resolve_hookpoint(model, HP)._forward_hooks) + len(
        decoder_stack(model)._forward_pre_hooks)


@torch.no_grad()
def test_several_interventions_match_hand_computation(model, sae, ids):
    x = capture(model, HP, ids)[HP]
    partial, never = _features(sae, x)
    a, b, d = partial[:3]
    ivs = [Intervention(a, "clamp", 3.0), Intervention(b, "scale", 3.0),
           Intervention(never, "add", 2.0), Intervention(d, "ablate")]
    with steering(model, sae, HP, ivs) as steerer:
        steered, _ = _run(model, ids)
    # by hand: dense activations, one feature at a time
    flat = x.reshape(-1, 64)
    dense = sae.dense_acts(flat)
    expected = flat.clone()
    for row in range(len(flat)):
        for feature, new in ((a, 3.0), (b, 3.0 * dense[row, b]), (never, 2.0), (d, 0.0)):
            expected[row] += (new - dense[row, feature]) * sae.W_dec[feature]
    torch.testing.assert_close(steered.reshape(-1, 64), expected, rtol=0, atol=1e-5)
    assert (steered - x).abs().amax() > 0.1
    assert steerer.stats.positions == flat.shape[0]
    assert steerer.stats.fired[a] == int((dense[:, a] > 0).sum()) > 0
    assert steerer.stats.fired[never] == 0


@torch.no_grad()
def test_clamp_where_inactive_adds_decoder_row_and_keeps_error(model, sae, ids):
    x = capture(model, HP, ids)[HP]
    _, never = _features(sae, x)
    with steering(model, sae, HP, [Intervention(never, "clamp", 5.0)]):
        steered, _ = _run(model, ids)
    # x' = x + 5 W_dec[i]: the reconstruction error x − x̂ is untouched, x is not replaced by x̂
    torch.testing.assert_close(steered, x + 5.0 * sae.W_dec[never], rtol=0, atol=1e-5)
    flat = x.reshape(-1, 64)
    x_hat = sae.decode(*sae.encode(flat))
    assert (flat - x_hat).norm() > 1e-3  # there is an error term to keep


@torch.no_grad()
def test_identity_interventions_leave_the_model_exactly_clean(model, sae, ids):
    x, clean = _run(model, ids)
    partial, never = _features(sae, x)
    identity = [Intervention(partial[0], "scale", 1.0), Intervention(partial[1], "add", 0.0),
                Intervention(never, "scale", 5.0)]
    with steering(model, sae, HP, identity) as steerer:
        hx, hidden = _run(model, ids)
    assert steerer.stats.positions == ids.numel()
    assert torch.equal(hx, x) and torch.equal(hidden, clean)
    assert not any(steerer.changed(r) for r in range(ids.shape[0]))
    with steering(model, sae, HP, [Intervention(never, "clamp", 5.0)]) as moved:
        _run(model, ids)
    assert all(moved.changed(r) for r in range(ids.shape[0]))


@torch.no_grad()
def test_padding_is_never_steered(model, sae, ids):
    attn = torch.ones_like(ids)
    attn[1, :3] = 0  # row 1 left-padded
    x, _ = _run(model, ids, attn)
    with steering(model, sae, HP, [Intervention(3, "clamp", 4.0)]) as steerer:
        steered, _ = _run(model, ids, attn)
    changed = (steered != x).any(-1)
    assert torch.equal(changed, attn.bool())
    assert steerer.stats.positions == int(attn.sum())


@pytest.mark.parametrize("window, expected", [
    # prompt = 2 pads + 3 tokens (width 5); <think> at 5, '.' at 8, </think> at 11, EOS at 13
    (Window("prompt", "think_end"), range(4, 11)),
    (Window("think", "think_end"), range(5, 11)),
    (Window("sentence", "think_end"), range(8, 11)),
    (Window(2, "think_end"), range(7, 11)),
    (Window(2, 4), range(7, 9)),
    (Window("think", "none"), range(5, 13)),
    (Window(10, "none"), []),
])
def test_scanner_windows(window, expected):
    tokens = [PAD, PAD, 100, 101, 102, OPEN, 200, 201, DOT, 202, 203, CLOSE, 204, EOS, PAD]
    flags, row = scan(window, markers(), tokens, 5)
    assert [i for i, f in enumerate(flags) if f] == list(expected)
    assert (row.open_pos, row.close_pos, row.stop_pos, row.think_tokens) == (5, 11, 13, 5)


def test_scanner_prefilled_and_unopened():
    m = markers()
    # a prefilled <think> at the end of the prompt opens thinking; one early in the prompt does not
    flags, row = scan(Window("think", "think_end"), m, [OPEN, 100, 101, 102, OPEN, 198, 300], 6)
    assert row.open_pos == 4 and flags == [False] * 4 + [True] * 3
    flags, row = scan(Window("think", "think_end"), m, [OPEN, 100, 101, 102, 103, 300, 301], 5)
    assert row.open_pos is None and not any(flags) and row.think_tokens is None
    # the first generated <think> opens; a second one does not move it
    flags, row = scan(Window(1, "none"), m, [100, 101, OPEN, 300, OPEN, 301], 2)
    assert row.open_pos == 2 and flags == [False, False, False, True, True, True]
    # steering stops at EOS even without </think>
    flags, _ = scan(Window("prompt", "think_end"), m, [100, 101, 300, EOS, 301], 2)
    assert flags == [False, True, True, False, False]


@torch.no_grad()
def test_window_in_a_forward_pass(model, sae):
    tokens = torch.tensor([[PAD, PAD, 100, 101, 102, OPEN, 200, 201, DOT, 202, 203, CLOSE, 204]])
    attn = (tokens != PAD).long()
    x, _ = _run(model, tokens, attn)
    with steering(model, sae, HP, [Intervention(3, "clamp", 4.0)],
                  Window("sentence", "think_end"), markers()) as steerer:
        steerer.prompt_len = 5
        steered, _ = _run(model, tokens, attn)
    changed = (steered != x).any(-1)[0]
    assert torch.nonzero(changed).flatten().tolist() == [8, 9, 10]
    assert steerer.last_mask[0].nonzero().flatten().tolist() == [8, 9, 10]


def _generate(model, prompts, **kw):
    ids = torch.tensor(prompts)
    return model.generate(input_ids=ids, attention_mask=(ids != PAD).long(), max_new_tokens=8,
                          do_sample=False, pad_token_id=PAD, eos_token_id=[EOS], **kw)


@torch.no_grad()
def test_cached_generation_steers_like_a_teacher_forced_pass(model, sae):
    prompts = [[PAD, PAD, 300, 301, OPEN, 198], [400, 401, 402, 403, OPEN, 198]]
    window, ivs = Window(3, "none"), [Intervention(7, "clamp", 40.0)]
    base = _generate(model, prompts)
    with steering(model, sae, HP, ivs, window, markers()) as steerer:
        out = _generate(model, prompts)
        gen_mask = steerer.last_mask
    assert not torch.equal(out, base)  # the steering changes what is generated
    # the generation steered, position by position, what the scanner marks on the final tokens
    for row in range(2):
        flags, _ = scan(window, markers(), out[row].tolist(), 6)
        assert gen_mask[row].tolist() == flags[:-1]
    assert not gen_mask[:, :7].any() and gen_mask[:, 7:].all()  # from the 3rd thinking token
    # a teacher-forced steered pass over the result predicts exactly the generated tokens
    attn = (out != PAD).long()
    attn[:, 6:] = 1
    pos = (attn.cumsum(1) - 1).clamp_min(0)
    with steering(model, sae, HP, ivs, window, markers()) as steerer:
        steerer.prompt_len = 6
        hidden = decoder_stack(model)(input_ids=out, attention_mask=attn, position_ids=pos,
                                           use_cache=False).last_hidden_state
    logits = model.get_output_embeddings()(hidden[:, 5:-1])
    top2 = logits.topk(2, -1).values
    clear = (top2[..., 0] - top2[..., 1]) > 1e-4
    assert clear.float().mean() > 0.8
    assert torch.equal(logits.argmax(-1)[clear], out[:, 6:][clear])


@torch.no_grad()
def test_hooks_removed_after_run_and_after_exceptions(model, sae):
    prompts = [[PAD, 300, 301, 302], [400, 401, 402, 403]]
    hooks = _hooks(model)
    fresh = _generate(model, prompts)
    ivs = [Intervention(7, "clamp", 40.0)]
    with steering(model, sae, HP, ivs) as steerer:
        assert _hooks(model) == hooks + 2
        steered = _generate(model, prompts)
    assert steerer.stats.positions > 0 and not torch.equal(steered, fresh)
    assert _hooks(model) == hooks
    assert torch.equal(_generate(model, prompts), fresh)

    with pytest.raises(RuntimeError, match="boom"):
        with steering(model, sae, HP, ivs):
            _generate(model, prompts)
            raise RuntimeError("boom")
    assert _hooks(model) == hooks
    assert torch.equal(_generate(model, prompts), fresh)

    # an error raised inside a hook (a window needs token ids, not embeddings)
    embeds = model.get_input_embeddings()(torch.tensor(prompts))
    with pytest.raises(ThinksaeError, match="needs input_ids"):
        with steering(model, sae, HP, ivs, Window("prompt", "none"), markers()):
            decoder_stack(model)(inputs_embeds=embeds, use_cache=False)
    assert _hooks(model) == hooks
    assert torch.equal(_generate(model, prompts), fresh)


def test_bad_steering_arguments(model, sae):
    with pytest.raises(ThinksaeError, match="unknown feature"):
        with steering(model, sae, HP, [Intervention(128, "clamp", 1.0)]):
            pass
    with pytest.raises(ThinksaeError, match="unknown hookpoint"):
        with steering(model, sae, "layers.1.nothing", [Intervention(1, "clamp", 1.0)]):
            pass
    with pytest.raises(ThinksaeError, match="max activation is not known"):
        with steering(model, sae, HP, [Intervention(1, "clamp_max", 2.0)]):
            pass
    with pytest.raises(ThinksaeError, match="needs the tokenizer's markers"):
        with steering(model, sae, HP, [Intervention(1, "clamp", 1.0)], Window()):
            pass
    assert _hooks(model) == 0


def test_markers_from_the_r1_tokenizer(tokenizer):
    m = ThinkMarkers.from_tokenizer(tokenizer, [151654])
    assert (m.open_id, m.close_id) == (151648, 151649) and {151643, 151654} <= m.stop_ids
    okay = tokenizer("Okay", add_special_tokens=False)["input_ids"][0]
    assert m.ends_sentence(DOT) and m.ends_sentence(198) and not m.ends_sentence(okay)
    assert not m.ends_sentence(10**6)


class _NoThinkTokenizer:
    """A tokenizer where <think> and </think> are not tokens (like Qwen2.5-Coder's)."""

    unk_token_id = None
    eos_token_id = 7

    def convert_tokens_to_ids(self, tokens):
        return [None for _ in tokens]


def test_markers_know_whether_think_tags_are_single_tokens(tokenizer):
    assert ThinkMarkers.from_tokenizer(tokenizer, sentences=False).single_token
    plain = ThinkMarkers.from_tokenizer(_NoThinkTokenizer(), sentences=False)
    assert not plain.single_token and plain.stop_ids == frozenset({7})



def test_a_feature_given_twice_in_one_setting_is_refused(model, sae):
    twice = [Intervention(3, "clamp", 1.0), Intervention(3, "scale", 2.0)]
    with pytest.raises(ThinksaeError, match="feature 3 is given more than once"):
        with steering(model, sae, HP, twice):
            pass
    with pytest.raises(ThinksaeError, match="feature 3 is given more than once"):
        with steering(model, sae, HP, [[Intervention(3, "clamp", 1.0)], twice]):
            pass
    assert _hooks(model) == 0


@torch.no_grad()
def test_fired_counts_only_positive_activations(model, ids):
    """With fewer than k positive latents the top k holds latents at 0: they did not fire."""
    torch.manual_seed(2)
    flat = Sae(64, SaeConfig(expansion_factor=2, k=4))
    flat.encoder.weight.zero_()
    flat.encoder.bias.fill_(-1.0)
    flat.encoder.bias[5] = 1.0  # latent 5 is the only one that fires, everywhere
    acts, idx = flat.encode(torch.zeros(1, 64))
    assert sorted(acts[0].tolist()) == [0.0, 0.0, 0.0, 1.0]
    zero_member = int(idx[0][acts[0] == 0][0])  # in the top k at activation 0
    with steering(model, flat, HP, [Intervention(zero_member, "scale", 1.0),
                                    Intervention(5, "scale", 1.0)]) as steerer:
        _run(model, ids)
    assert steerer.stats.positions == ids.numel()
    assert steerer.stats.fired == {zero_member: 0, 5: ids.numel()}
    assert steerer.stats.to_dict()["features"][str(zero_member)]["fired_fraction"] == 0.0


@torch.no_grad()
def test_per_row_settings_in_one_batch_match_separate_runs(model, sae):
    prompts = [[PAD, PAD, 300, 301, OPEN, 198], [400, 401, 402, 403, OPEN, 198]]
    window = Window(1, "none")
    settings = [[], [Intervention(7, "clamp", 40.0)],
                [Intervention(7, "add", -25.0), Intervention(11, "scale", 3.0)]]
    alone = []
    for spec in settings:
        if not spec:
            alone.append((_generate(model, prompts), None))
            continue
        with steering(model, sae, HP, spec, window, markers()) as steerer:
            alone.append((_generate(model, prompts), steerer))
    rows = [spec for spec in settings for _ in prompts]
    with steering(model, sae, HP, rows, window, markers()) as together:
        out = _generate(model, prompts * len(settings))
    assert not torch.equal(alone[1][0], alone[0][0]) and not torch.equal(alone[2][0], alone[0][0])
    for s, (ref, steerer) in enumerate(alone):
        assert torch.equal(out[2 * s:2 * s + 2], ref)  # token-exact, greedy
        if steerer is not None:
            assert torch.equal(together.last_mask[2 * s:2 * s + 2], steerer.last_mask)
            mine = together.stats_for([2 * s, 2 * s + 1], [i.feature for i in settings[s]])
            theirs = steerer.stats
            assert (mine.positions, mine.fired) == (theirs.positions, theirs.fired) != (0, {})
            assert mine.act_sum == pytest.approx(theirs.act_sum, rel=1e-5)
    assert together.stats_for([0, 1]).positions == 0  # the baseline rows are not steered
    with pytest.raises(ThinksaeError, match="3 per-row settings, but the batch has 2 rows"):
        with steering(model, sae, HP, settings, window, markers()):
            _generate(model, prompts)
