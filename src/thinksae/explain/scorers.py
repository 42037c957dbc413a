"""Scoring an explanation on held-out contexts, as delphi defines it: *detection* (does an excerpt
match the explanation? activating vs non-activating excerpts) and *fuzzing* (are the marked tokens
the ones it describes? correctly vs randomly marked activating excerpts). The judge reads its
answer from the next-token log-probabilities of yes/no: one forward per excerpt, no generation; the
shared prefix (instructions + explanation) is run once and its key/value cache reused."""

from __future__ import annotations

import copy
import inspect
import random
from typing import NamedTuple, Protocol

import torch

from ..errors import ThinksaeError
from .prompts import Context, ScorerPrompt, detection_prompt, firing, fuzzing_prompt, render

FUZZ_THRESHOLD = 0.3
"""Tokens firing at ≥ this share of their excerpt's peak count as marked-correctly (delphi's default)."""


def balanced_accuracy(labels: list[bool], scores: list[float]) -> float | None:
    """``(TPR + TNR) / 2`` with prediction ``score > 0`` (log-odds of yes over no); None without
    both classes."""
    pos = [s > 0 for s, y in zip(scores, labels) if y]
    neg = [s <= 0 for s, y in zip(scores, labels) if not y]
    if not pos or not neg:
        return None
    return (sum(pos) / len(pos) + sum(neg) / len(neg)) / 2


def auroc(labels: list[bool], scores: list[float]) -> float | None:
    """Area under the ROC curve = P(score of a random positive > score of a random negative),
    ties counted ½ (Mann–Whitney); None without both classes."""
    pos = [s for s, y in zip(scores, labels) if y]
    neg = [s for s, y in zip(scores, labels) if not y]
    if not pos or not neg:
        return None
    wins = sum((p > n) + 0.5 * (p == n) for p in pos for n in neg)
    return wins / (len(pos) * len(neg))


class Judge(Protocol):
    """Says how strongly each excerpt gets a "yes": log P(yes) − log P(no)."""

    forwards: int

    def yes_scores(self, prompt: ScorerPrompt) -> list[float]: ...


YES, NO = (" yes", " Yes", "yes", "Yes"), (" no", " No", "no", "No")


class LMJudge:
    """A local causal LM as judge. Suffixes are right-padded in batches after the cached prefix
    (causal attention: padding after a row's last token cannot change it)."""

    def __init__(self, model, tokenizer, batch_size: int = 8, prefix_cache: bool = True):
        self.model, self.tok, self.batch_size, self.prefix_cache = model, tokenizer, batch_size, prefix_cache
        self.forwards = 0
        self.yes = self._single_ids(YES)
        self.no = self._single_ids(NO)
        if not self.yes or not self.no:
            raise ThinksaeError("the scorer's tokenizer has no single token for yes/no")

    def _single_ids(self, words) -> list[int]:
        ids = [self.tok.encode(w, add_special_tokens=False) for w in words]
        return sorted({i[0] for i in ids if len(i) == 1})

    def _ids(self, prompt: ScorerPrompt) -> tuple[list[int], list[list[int]]]:
        pre = self.tok.encode(prompt.prefix, add_special_tokens=True)
        return pre, [self.tok.encode(s, add_special_tokens=False) for s in prompt.suffixes]

    def _odds(self, hidden: torch.Tensor) -> list[float]:
        logp = torch.log_softmax(self.model.get_output_embeddings()(hidden).float(), dim=-1)
        return (torch.logsumexp(logp[:, self.yes], -1) - torch.logsumexp(logp[:, self.no], -1)).tolist()

    @torch.inference_mode()
    def yes_scores(self, prompt: ScorerPrompt) -> list[float]:
        device = next(self.model.parameters()).device
        pre, sufs = self._ids(prompt)
        base = self.model.base_model
        key = "cache" if "cache" in inspect.signature(base.forward).parameters else "past_key_values"
        cache = None
        if self.prefix_cache:
            from transformers import DynamicCache

            cache = DynamicCache()
            base(input_ids=torch.tensor([pre], device=device), **{key: cache}, use_cache=True)
            self.forwards += 1
        out: list[float] = []
        pad = self.tok.pad_token_id if self.tok.pad_token_id is not None else 0
        for a in range(0, len(sufs), self.batch_size):
            rows = sufs[a : a + self.batch_size] if cache is not None else [
                pre + s for s in sufs[a : a + self.batch_size]]
            width = max(len(r) for r in rows)
            ids = torch.tensor([r + [pad] * (width - len(r)) for r in rows], device=device)
            kv = None
            if cache is not None:
                kv = copy.deepcopy(cache)
                kv.batch_repeat_interleave(len(rows))
            h = base(input_ids=ids, **{key: kv}, use_cache=kv is not None).last_hidden_state
            last = torch.tensor([len(r) - 1 for r in rows], device=device)
            out += self._odds(h[torch.arange(len(rows), device=device), last])
            self.forwards += len(rows)
        return out


class Sample(NamedTuple):
    """One scored excerpt."""

    text: str
    context: Context
    activating: bool
    """True for the positive class (activating / correctly marked)."""
    score: float
    """log P(yes) − log P(no)."""


class ScoreResult(NamedTuple):
    scorer: str
    balanced_accuracy: float | None
    auroc: float | None
    n_pos: int
    n_neg: int
    forwards: int
    samples: list[Sample]

    def summary(self) -> dict:
        return {"balanced_accuracy": self.balanced_accuracy, "auroc": self.auroc,
                "n_pos": self.n_pos, "n_neg": self.n_neg, "forwards": self.forwards}

    def sample_dicts(self) -> list[dict]:
        """The scored excerpts as JSON-ready dicts (for the cache and delphi's score files)."""
        return [{"text": s.text, "tokens": s.context.tokens, "acts": s.context.acts,
                 "quantile": s.context.quantile, "doc": s.context.doc,
                 "position": s.context.position, "activating": s.activating, "score": s.score}
                for s in self.samples]


class HeldOut(NamedTuple):
    """Scoring contexts of one feature, none of them shown to the explainer."""

    activating: list[Context]
    non_activating: list[Context]


class Scorer(Protocol):
    name: str

    def score(self, explanation: str, held: HeldOut) -> ScoreResult: ...


def _result(name: str, judge: Judge, prompt: ScorerPrompt, items: list[tuple[str, Context, bool]]
            ) -> ScoreResult:
    before = judge.forwards
    scores = judge.yes_scores(prompt) if items else []
    labels = [y for _, _, y in items]
    samples = [Sample(t, c, y, s) for (t, c, y), s in zip(items, scores)]
    return ScoreResult(name, balanced_accuracy(labels, scores), auroc(labels, scores),
                       sum(labels), len(labels) - sum(labels), judge.forwards - before, samples)


class DetectionScorer:
    """Activating vs non-activating excerpts, unmarked."""

    name = "detection"

    def __init__(self, judge: Judge):
        self.judge = judge

    def score(self, explanation: str, held: HeldOut) -> ScoreResult:
        items = [(render(c), c, True) for c in held.activating]
        items += [(render(c), c, False) for c in held.non_activating]
        return _result(self.name, self.judge, detection_prompt(explanation, [t for t, _, _ in items]),
                       items)


class FuzzingScorer:
    """Each activating excerpt twice: its firing tokens marked, and as many non-firing tokens
    marked at random (seeded); an excerpt with no non-firing token is left out."""

    name = "fuzzing"

    def __init__(self, judge: Judge, seed: int = 0):
        self.judge, self.seed = judge, seed

    def score(self, explanation: str, held: HeldOut) -> ScoreResult:
        rng = random.Random(self.seed)
        items = []
        for c in held.activating:
            right = firing(c, FUZZ_THRESHOLD)
            others = [j for j in range(len(c.tokens)) if j not in right]
            if not right or not others:
                continue
            wrong = set(rng.sample(others, min(len(right), len(others))))
            items += [(render(c, right), c, True), (render(c, wrong), c, False)]
        return _result(self.name, self.judge, fuzzing_prompt(explanation, [t for t, _, _ in items]),
                       items)


SCORERS = {"detection": DetectionScorer, "fuzzing": FuzzingScorer}


def make_scorers(names: list[str], judge: Judge, seed: int = 0) -> list[Scorer]:
    bad = [n for n in names if n not in SCORERS]
    if bad:
        raise ThinksaeError(f"unknown scorer {bad[0]!r} (use {', '.join(SCORERS)})")
    return [DetectionScorer(judge) if n == "detection" else FuzzingScorer(judge, seed) for n in names]
