"""Feature absorption on the first-letter task (Chanin et al. 2024, arXiv 2409.14507), as SAEBench
runs it, on a thinksae model, tokenizer and SAE:

1. the letter-only tokens of the vocabulary, split per letter (:mod:`.letters`); one in-context
   prompt per word, the residual read at the word token (words that are sinks are dropped);
2. ground truth: 26 one-vs-rest logistic probes on the training words' residuals; each letter's
   probe F1 on the test words (logit > 0);
3. SAE side: an L1-penalised probe on the latents for all letters; per letter the top-k latents
   by signed weight, k = 1 … max_k, each refitted alone (sklearn, balanced classes); the main
   latents by growing k while the test F1 rises by more than ``f1_jump``;
4. per test word the ground-truth probe finds: absorption fraction and full absorption
   (:func:`~.absorption_score.word_absorption`); per letter their means; over letters whose probe
   F1 passes ``min_probe_f1`` the means (:func:`~.absorption_score.aggregate_letters`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from ...corpus.segment import control_token_ids
from ...errors import ThinksaeError
from ...models.hookpoints import capture
from ...sinks import SinkRule, special_flags
from .absorption_score import (
    LetterAbsorption,
    aggregate_letters,
    grow_main_latents,
    letter_absorption,
    letters_to_dicts,
    word_absorption,
)
from .letters import LETTERS, Prompt, check_vocabulary, first_letter_prompts, letter_vocabulary, split_words
from .probes import (
    binary_f1,
    decision_scores,
    logistic_regression,
    sparse_latents,
    take_columns,
    train_linear_probes,
)


@dataclass
class AbsorptionOptions:
    """Options of the first-letter absorption eval. Defaults are small CPU settings (minutes on a
    1.5B model); SAEBench's own values are given where they differ."""

    words_per_letter: int | None = 40
    """Letter-only vocabulary tokens used per first letter (SAEBench: all of them, ~tens of
    thousands in all)."""
    min_words_per_letter: int = 5
    """Refuse a vocabulary with fewer words for some letter (at least 2: one to train, one to
    test)."""
    test_fraction: float = 0.2
    """Share of each letter's words held out for testing (SAEBench: 0.2 of the vocabulary)."""
    icl_examples: int = 4
    """In-context examples per prompt (SAEBench: 10)."""
    prompt_template: str = "{word} has the first letter:"
    """The question; {word} is where the word token goes (SAEBench's template)."""
    batch_size: int = 16
    """Prompts per model forward (SAEBench: 10)."""
    probe_epochs: int = 50
    """Epochs of the ground-truth probe (SAEBench: 50; lr 1e-2 decaying to 1e-5, weight decay
    1e-4, batches of 64)."""
    sparse_probe_l1: float = 0.01
    """L1 penalty of the probe on SAE latents that ranks latents per letter (SAEBench: 0.01; 50
    epochs, batches of 4096)."""
    max_k: int = 10
    """Largest k of the k-sparse SAE probes (SAEBench: 10)."""
    f1_jump: float = 0.03
    """A larger k adds main latents only while it raises the F1 by more than this (SAEBench)."""
    min_probe_f1: float = 0.6
    """Letters whose ground-truth probe F1 is at most this are left out of the means (SAEBench)."""
    min_letters: int = 20
    """Report the means only when at least this many letters pass (SAEBench: 20; a small model
    may have none)."""
    seed: int = 42
    """Seed of the split, the in-context examples and the probes (SAEBench: 42)."""

    def check(self) -> None:
        """One-line errors for options that cannot run."""
        if self.min_words_per_letter < 2:
            raise ThinksaeError("absorption: min_words_per_letter must be >= 2 (one word to train, "
                                "one to test)")
        if not 0 < self.test_fraction < 1:
            raise ThinksaeError(f"absorption: test_fraction must be in (0, 1) (got {self.test_fraction})")
        if self.words_per_letter is not None and self.words_per_letter < 2:
            raise ThinksaeError("absorption: words_per_letter must be >= 2 or none")
        if self.max_k < 1 or self.icl_examples < 0 or self.batch_size < 1 or self.probe_epochs < 1:
            raise ThinksaeError("absorption: max_k, batch_size and probe_epochs must be >= 1, "
                                "icl_examples >= 0")
        if self.prompt_template.count("{word}") != 1:
            raise ThinksaeError(f"absorption: the prompt template must contain {{word}} once "
                                f"(got {self.prompt_template!r})")


@dataclass
class AbsorptionResult:
    """The absorption eval's numbers; ``to_dict`` is JSON."""

    aggregate: dict[str, Any]
    """Means over qualifying letters (:func:`~.absorption_score.aggregate_letters`)."""
    letters: list[LetterAbsorption]
    train_words: int
    test_words: int
    sink_words: int
    """Words dropped because the word token was a norm sink."""
    options: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["letters"] = letters_to_dicts(self.letters)
        return out


@torch.inference_mode()
def _word_residuals(model, hookpoint: str, prompts: list[Prompt], pad_id: int, special_ids,
                    batch_size: int) -> tuple[Tensor, Tensor, Tensor]:
    """The hookpoint output at each prompt's word token ``[n, d]`` (float32), its norms, and the
    norms of every non-special real token (for the sink rule's median)."""
    device = next(model.parameters()).device
    rows, others = [], []
    for a in range(0, len(prompts), batch_size):
        batch = prompts[a : a + batch_size]
        width = max(len(p.ids) for p in batch)
        ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for i, p in enumerate(batch):
            ids[i, : len(p.ids)], mask[i, : len(p.ids)] = torch.tensor(p.ids), 1
        out = capture(model, hookpoint, ids.to(device), mask.to(device))[hookpoint].float().cpu()
        rows.append(out[torch.arange(len(batch)), torch.tensor([p.position for p in batch])])
        plain = mask.bool() & ~special_flags(ids, special_ids)
        others.append(out.norm(dim=-1)[plain])
    x = torch.cat(rows)
    return x, x.norm(dim=-1), torch.cat(others)


def _drop_sinks(rule: SinkRule, sets: list[tuple[list[Prompt], Tensor, Tensor]], norms: Tensor):
    """Each (prompts, x, word norms) without the words whose norm is above the rule's threshold
    (median over ``norms``, the non-special tokens of all prompts, unless the rule has one)."""
    limit = rule.threshold(norms, torch.zeros_like(norms, dtype=torch.bool))
    out, dropped = [], 0
    for prompts, x, word_norms in sets:
        keep = word_norms <= limit
        dropped += int((~keep).sum())
        out.append(([p for p, k in zip(prompts, keep.tolist(), strict=True) if k], x[keep]))
    return out, dropped


def _sparse_probe_f1(codes_train, y_train, codes_test, y_test, ranked: Tensor, max_k: int,
                     seed: int) -> tuple[list[float], list[list[int]]]:
    """Test F1 of the probe on the top-k ranked latents alone, k = 1 … max_k (sklearn, balanced
    classes, 500 iterations as SAEBench); none when the training words are all of one class."""
    f1s, chosen = [], []
    if bool(y_train.all()) or not bool(y_train.any()):
        return f1s, chosen
    for k in range(1, min(max_k, len(ranked)) + 1):
        cols = ranked[:k]
        fit = logistic_regression(take_columns(codes_train, cols), y_train, max_iter=500,
                                  balanced=True, seed=seed)
        f1s.append(binary_f1(decision_scores(fit, take_columns(codes_test, cols)) > 0, y_test))
        chosen.append(cols.tolist())
    return f1s, chosen


def _residuals(model, tokenizer, hookpoint: str, opts: AbsorptionOptions, rule: SinkRule):
    """Train and test prompts with their word residuals (sinks dropped), and the sink count."""
    words = letter_vocabulary(tokenizer)
    check_vocabulary(words, opts.min_words_per_letter)
    split = split_words(words, opts.words_per_letter, opts.test_fraction, opts.seed)
    special = sorted(control_token_ids(tokenizer))
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    sets, norms = [], []
    for i, part in enumerate((split.train, split.test)):
        prompts = first_letter_prompts(part, part, tokenizer, opts.prompt_template,
                                       opts.icl_examples, opts.seed + i)
        x, word_norms, other = _word_residuals(model, hookpoint, prompts, pad_id, special,
                                               opts.batch_size)
        sets.append((prompts, x, word_norms))
        norms.append(other)
    return _drop_sinks(rule, sets, torch.cat(norms))


def _letter(ell: int, opts: AbsorptionOptions, probe: tuple[Tensor, Tensor], ranked: Tensor,
            data: dict[str, Any], decoder: Tensor) -> LetterAbsorption:
    """One letter's F1s, main latents and word absorptions."""
    weight, bias = probe
    y_train, y_test, x_test = data["y_train"] == ell, data["y_test"] == ell, data["x_test"]
    f1s, chosen = _sparse_probe_f1(data["codes_train"], y_train, data["codes_test"], y_test,
                                   ranked, opts.max_k, opts.seed)
    main = grow_main_latents(f1s, chosen, opts.f1_jump)
    direction = F.normalize(weight[ell], dim=0)
    cos = decoder @ direction
    logits = x_test @ weight[ell] + bias[ell]
    acts, ids = data["test_latents"]
    found = torch.nonzero(y_test & (logits > 0))[:, 0].tolist()
    words = [word_absorption(float(x_test[i] @ direction), acts[i], ids[i], cos, main)
             for i in found]
    return letter_absorption(LETTERS[ell], binary_f1(logits > 0, y_test), f1s, main, words)


def absorption_eval(model, tokenizer, sae, hookpoint: str, options: AbsorptionOptions | None = None,
                    sink_rule: SinkRule | None = None) -> AbsorptionResult:
    """Feature absorption of ``sae`` at ``hookpoint`` (module docstring). Options and the
    vocabulary are checked before the model runs."""
    opts = options or AbsorptionOptions()
    opts.check()
    ((train, x_train), (test, x_test)), sink_words = _residuals(model, tokenizer, hookpoint, opts,
                                                                sink_rule or SinkRule())
    y_train = torch.tensor([p.word.letter for p in train], dtype=torch.long)
    y_test = torch.tensor([p.word.letter for p in test], dtype=torch.long)
    targets = F.one_hot(y_train, len(LETTERS))
    probe = train_linear_probes(x_train, targets, epochs=opts.probe_epochs, lr=1e-2,
                                weight_decay=1e-4, batch_size=64, seed=opts.seed)
    with torch.inference_mode():
        train_latents = [t.cpu() for t in sae.encode(x_train.to(sae.device, sae.dtype))]
        test_latents = [t.cpu() for t in sae.encode(x_test.to(sae.device, sae.dtype))]
    data = {"y_train": y_train, "y_test": y_test, "x_test": x_test, "test_latents": test_latents,
            "codes_train": sparse_latents(*train_latents, sae.num_latents),
            "codes_test": sparse_latents(*test_latents, sae.num_latents)}
    sparse_weight, _ = train_linear_probes(data["codes_train"], targets, epochs=50, lr=1e-2,
                                           weight_decay=1e-6, l1=opts.sparse_probe_l1,
                                           batch_size=4096, seed=opts.seed)
    decoder = F.normalize(sae.W_dec.detach().float().cpu(), dim=-1)
    k = min(opts.max_k, sae.num_latents)
    letters = [_letter(ell, opts, probe, sparse_weight[ell].topk(k).indices, data, decoder)
               for ell in range(len(LETTERS))]
    return AbsorptionResult(aggregate_letters(letters, opts.min_probe_f1, opts.min_letters),
                            letters, len(train), len(test), sink_words, dataclasses.asdict(opts))
