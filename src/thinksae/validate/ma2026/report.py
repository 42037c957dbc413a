"""Typed results of the Ma et al. protocol, the per-run summary next to the paper's numbers, and
the files: ``ma2026.json`` (everything) and ``ma2026.md`` (one table)."""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

from ... import atomic
from ..side_by_side import levels_table
from ..stats import finite
from .config import LEVELS
from .stats import Effect, Selection

JSON_FILE, MARKDOWN_FILE = "ma2026.json", "ma2026.md"
MASKING_JSON, MASKING_MARKDOWN = "ma2026_masking.json", "ma2026_masking.md"
FORMAT = "thinksae-ma2026/1"

PAPER = {
    "source": "Ma et al. 2026, arXiv 2601.05679 (code GeorgeMLP/reasoning-probing, README)",
    "token_driven_any_level": [0.77, 0.95],
    "token_driven_any_level_note": "over their 14 main configurations (22 with the appendix); an "
                                   "earlier text of theirs said 45-90%",
    "best_strategy_share": {"prepend": 0.697, "inject_bigram": 0.091, "replace": 0.061,
                            "inject_trigram": 0.051},
    "best_strategy_note": "Gemma-3-12B, layer 22, s1K (their appendix); the contextual "
                          "strategies about 3% together",
    "context_dependent_judged_genuine": "0 of 153",
}
"""The paper's reported numbers that a run is put next to."""


class Candidate(NamedTuple):
    """A latent judged by injection and its selection statistics (:mod:`.stats`)."""

    latent: int
    why: list[str]
    """``selected#<rank>`` (kept by their rule) and/or ``named`` (asked for)."""
    mean_r: float
    mean_nr: float
    sd_r: float
    sd_nr: float
    d: float
    auc: float
    p: float
    p_bonferroni: float

    @classmethod
    def of(cls, sel: Selection, i: int, why: list[str]) -> Candidate:
        return cls(int(sel.latents[i]), why, *(float(getattr(sel, k)[i]) for k in (
            "mean_r", "mean_nr", "sd_r", "sd_nr", "d", "auc", "p", "p_bonferroni")))

    @property
    def selected(self) -> bool:
        return any(w.startswith("selected") for w in self.why)


class FeatureResult(NamedTuple):
    """One feature's injection experiment."""

    candidate: Candidate
    tokens: list
    """Its trigger lists (:class:`.triggers.TriggerLists`)."""
    effects: dict[str, Effect]
    best: str | None
    verdict: str | None
    """One of :data:`.config.LEVELS`; None when skipped."""
    skipped: str | None
    reasoning_mean: float
    """Mean per-text max on the reasoning texts (recorded only)."""
    reasoning_sd: float

    def to_dict(self) -> dict:
        c = self.candidate
        lists = self.tokens
        return {
            "feature": c.latent, "why": c.why,
            "selection": {k: finite(getattr(c, k)) for k in (
                "mean_r", "mean_nr", "sd_r", "sd_nr", "d", "auc", "p", "p_bonferroni")},
            "top_tokens": [_trigger(t) for t in lists.tokens],
            "top_bigrams": [_trigger(t) for t in lists.bigrams],
            "top_trigrams": [_trigger(t) for t in lists.trigrams],
            "strategies": {s: {k: (finite(v) if isinstance(v, float) else v)
                               for k, v in e._asdict().items()} for s, e in self.effects.items()},
            "best_strategy": self.best,
            "best_d": finite(self.effects[self.best].d) if self.best else None,
            "best_p": finite(self.effects[self.best].p) if self.best else None,
            "verdict": self.verdict, "skipped": self.skipped,
            "reasoning_mean": finite(self.reasoning_mean), "reasoning_sd": finite(self.reasoning_sd),
        }


def _trigger(t) -> dict:
    return {"ids": list(t.ids), "text": t.text, "mean": finite(t.mean), "count": t.count}


class Ma2026Result(NamedTuple):
    options: dict
    texts: dict
    """Texts used: reasoning, nonreasoning (selection), injection (per set)."""
    tests: int
    """Latents tested (the Bonferroni factor)."""
    selected: int
    """Latents that passed their selection rule (before the top cut)."""
    features: list[FeatureResult]
    summary: dict
    masking: dict
    """Per pass, the counts of real tokens the mask dropped (special, by_norm) or of padding
    positions counted."""
    seconds: dict

    def to_dict(self) -> dict:
        return {"format": FORMAT, "options": self.options, "texts": self.texts,
                "latents_tested": self.tests, "passed_selection": self.selected,
                "summary": self.summary, "masking": self.masking, "seconds": self.seconds,
                "features": [f.to_dict() for f in self.features]}

    def verdicts(self) -> dict[int, str | None]:
        return {f.candidate.latent: f.verdict for f in self.features}


def shares(features: list[FeatureResult], strategies: list[str]) -> dict:
    """Counts and fractions of each verdict level, the fraction token-driven at some level
    (1 − the context-dependent fraction), and each strategy's share of best strategies, over the
    judged (not skipped) ``features``."""
    judged = [f for f in features if f.verdict is not None]
    n = len(judged)

    def frac(k):
        return k / n if n else None

    counts = {lvl: sum(f.verdict == lvl for f in judged) for lvl in LEVELS}
    best = {s: sum(f.best == s for f in judged) for s in strategies}
    return {"judged": n, "skipped": len(features) - n, "counts": counts,
            "fractions": {k: frac(v) for k, v in counts.items()},
            "token_driven_any_level": frac(n - counts[LEVELS[-1]]),
            "best_strategy_counts": best, "best_strategy_share": {k: frac(v) for k, v in best.items()}}


def summarize(features: list[FeatureResult], strategies: list[str]) -> dict:
    """:func:`shares` of the features their rule selected (the paper's population), of the named
    ones, and of all; with the paper's numbers beside them."""
    return {"selected": shares([f for f in features if f.candidate.selected], strategies),
            "named": shares([f for f in features if "named" in f.candidate.why], strategies),
            "all": shares(features, strategies), "paper": PAPER}


class MaskingComparison(NamedTuple):
    sinks: Ma2026Result
    ma2026: Ma2026Result
    rows: list[dict]
    """Per feature judged under both: its verdict under each mode."""
    changed: int
    selection: dict
    """Latents selected under each mode and under both."""
    reused: int = 0
    """Texts the second run took from the first's encodings instead of running the model."""

    def to_dict(self) -> dict:
        return {"format": FORMAT, "changed": self.changed, "compared": len(self.rows),
                "selection": self.selection, "reused_texts": self.reused, "rows": self.rows,
                "sinks": self.sinks.to_dict(), "ma2026": self.ma2026.to_dict()}


def markdown(result: Ma2026Result) -> str:
    """The run's table: per feature its selection d and AUC, best strategy, d, p, verdict and
    first tokens; then the level fractions next to the paper's."""
    lines = ["| feature | why | d (sel.) | AUC | best strategy | d | p | verdict | top tokens |",
             "|---|---|---|---|---|---|---|---|---|"]
    for f in result.features:
        c, e = f.candidate, f.effects.get(f.best) if f.best else None
        toks = ", ".join(repr(t.text) for t in f.tokens.tokens[:3]).replace("|", "\\|")
        lines.append(f"| {c.latent} | {' '.join(c.why)} | {c.d:.2f} | {c.auc:.2f} | {f.best or '–'} "
                     f"| {'–' if e is None else f'{e.d:.2f}'} | {'–' if e is None else f'{e.p:.2g}'} "
                     f"| {f.verdict or 'skipped: ' + str(f.skipped)} | {toks} |")
    sel = result.summary["selected"]
    lines += ["", f"Selected by their rule: {result.selected} of {result.tests} latents; judged "
              f"{sel['judged']} (skipped {sel['skipped']}).", ""]
    lines += levels_table({"selected": sel, "ours": None, "paper": PAPER})
    return "\n".join(lines) + "\n"


def write_results(result: Ma2026Result, out: str | Path) -> Path:
    """``ma2026.json`` and ``ma2026.md`` in ``out`` (atomically); returns ``out``."""
    out = Path(out)
    atomic.write_json(out / JSON_FILE, result.to_dict())
    atomic.write_bytes(out / MARKDOWN_FILE, markdown(result).encode())
    return out


def write_comparison(cmp: MaskingComparison, out: str | Path) -> Path:
    """``ma2026_masking.json`` and ``.md``: per feature the verdict under each mode."""
    out = Path(out)
    atomic.write_json(out / MASKING_JSON, cmp.to_dict())
    lines = [f"Verdicts that masking sink positions changes: {cmp.changed} of {len(cmp.rows)}.", "",
             "| feature | sinks | ma2026 |", "|---|---|---|"]
    lines += [f"| {r['feature']} | {r['sinks']} | {r['ma2026']} |" for r in cmp.rows]
    atomic.write_bytes(out / MASKING_MARKDOWN, ("\n".join(lines) + "\n").encode())
    return out
