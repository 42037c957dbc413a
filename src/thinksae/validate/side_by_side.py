"""One table for each candidate of ours: thinksae's verdict (:mod:`.verdicts`) and Ma et al.'s
(:mod:`.ma2026`), with the agreement counts; and per run their levels over their own selection and
over our candidates, next to the paper's range. Pure functions of the two verdict sets.

Agreement counts (over the features both judged; theirs "token-driven at some level" = one of
``token_driven``, ``partially_token_driven``, ``weakly_token_driven``):

==================================== ===================================================
``reasoning_token_driven``           k = our reasoning candidates their rule finds
                                     token-driven at some level, n = our reasoning
                                     candidates
``context_dependent_token_detector`` k = their context-dependent features we call token
                                     detectors, n = their context-dependent features
``token_detector_token_driven``      k = our token detectors they find token-driven at
                                     some level, n = our token detectors
``context_dependent_reasoning``      k = their context-dependent features we call
                                     reasoning candidates, n = their context-dependent
``agree``                            on "token-driven?": k = token detector & token-driven
                                     at some level, plus reasoning candidate &
                                     context-dependent; n = the features we call a
                                     reasoning candidate or a token detector
==================================== ===================================================

Each is ``{"k", "n", "fraction"}`` with fraction = k / n (None when n = 0); ``crosstab`` counts
every (ours, theirs) pair.
"""

from __future__ import annotations

from collections.abc import Mapping

from .ma2026.config import LEVELS

TOKEN_DRIVEN = LEVELS[:3]
"""Their levels that count as token-driven at some level (the paper's 77–95 %)."""
CONTEXT_DEPENDENT = LEVELS[3]
REASONING, TOKEN_DETECTOR = "reasoning candidate", "token detector"
"""Our verdicts the counts read (:data:`.verdicts.VERDICTS`)."""
SIDE_BY_SIDE_FILE = "side_by_side.md"


def side_by_side_rows(ours: Mapping[int, str], theirs: Mapping[int, dict]) -> list[dict]:
    """Per feature of ``ours`` (feature → our verdict), in feature order: our verdict and theirs
    from ``theirs`` (feature → its row of ``ma2026.json``; None when they did not judge it or
    skipped it, with why), their best strategy, its d and p, and whether their own selection
    keeps it."""
    rows = []
    for f in sorted(ours):
        t = theirs.get(f)
        rows.append({
            "feature": int(f), "ours": ours[f], "theirs": t.get("verdict") if t else None,
            "skipped": (t.get("skipped") if t else "not judged"),
            "best_strategy": t.get("best_strategy") if t else None,
            "best_d": t.get("best_d") if t else None, "best_p": t.get("best_p") if t else None,
            "selected_by_them": bool(t) and any(w.startswith("selected") for w in t.get("why", [])),
        })
    return rows


def _share(k: int, n: int) -> dict:
    return {"k": k, "n": n, "fraction": k / n if n else None}


def agreement(rows: list[dict]) -> dict:
    """The counts of the module docstring over ``rows`` (:func:`side_by_side_rows`) that have
    both verdicts; ``compared`` = how many those are."""
    both = [r for r in rows if r["ours"] is not None and r["theirs"] is not None]
    crosstab: dict[str, dict[str, int]] = {}
    for r in both:
        crosstab.setdefault(r["ours"], {}).setdefault(r["theirs"], 0)
        crosstab[r["ours"]][r["theirs"]] += 1

    def count(ours=None, theirs=None):
        return sum((ours is None or r["ours"] == ours)
                   and (theirs is None or (r["theirs"] in TOKEN_DRIVEN if theirs == "token"
                                           else r["theirs"] == theirs)) for r in both)

    reasoning, detectors, context = count(REASONING), count(TOKEN_DETECTOR), count(theirs=CONTEXT_DEPENDENT)
    agree = count(TOKEN_DETECTOR, "token") + count(REASONING, CONTEXT_DEPENDENT)
    return {
        "compared": len(both), "crosstab": crosstab,
        "reasoning_token_driven": _share(count(REASONING, "token"), reasoning),
        "context_dependent_token_detector": _share(count(TOKEN_DETECTOR, CONTEXT_DEPENDENT), context),
        "token_detector_token_driven": _share(count(TOKEN_DETECTOR, "token"), detectors),
        "context_dependent_reasoning": _share(count(REASONING, CONTEXT_DEPENDENT), context),
        "agree": _share(agree, reasoning + detectors),
    }


def _pct(x) -> str:
    return "–" if x is None else f"{100 * x:.1f}%"


def _num(x, spec: str) -> str:
    return "–" if x is None else format(x, spec)


def _kn(share: dict) -> str:
    return f"{share['k']} of {share['n']} ({_pct(share['fraction'])})"


def levels_rows(levels: dict) -> tuple[list[str], list[list[str]]]:
    """Their levels over their selection and over our candidates (when there are ours) next to
    the paper's, as text cells (``levels``: the ``ma2026.levels`` block of validation.json):
    ``(header, rows)``, one row per level, then token-driven at some level and prepend's share
    of the best strategies."""
    sets = [("selected", "their selection")] + ([("ours", "our candidates")] if levels.get("ours")
                                                else [])
    header = ["level", *(f"{name} (n = {levels[key]['judged']})" for key, name in sets), "paper"]
    rows = [[lvl, *(_pct(levels[key]["fractions"][lvl]) for key, _ in sets), ""]
            for lvl in (*TOKEN_DRIVEN, CONTEXT_DEPENDENT)]
    lo, hi = levels["paper"]["token_driven_any_level"]
    rows.append(["token-driven at some level",
                 *(_pct(levels[key]["token_driven_any_level"]) for key, _ in sets),
                 f"{lo:.0%}–{hi:.0%}"])
    rows.append(["prepend the best strategy",
                 *(_pct(levels[key]["best_strategy_share"].get("prepend")) for key, _ in sets),
                 f"{levels['paper']['best_strategy_share']['prepend']:.1%}"])
    return header, rows


def levels_table(levels: dict) -> list[str]:
    """:func:`levels_rows` as Markdown lines."""
    header, rows = levels_rows(levels)
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header),
            *("| " + " | ".join(r) + " |" for r in rows)]


def markdown(rows: list[dict], counts: dict, levels: dict, masking: dict | None = None) -> str:
    """``side_by_side.md``: the per-candidate table, the agreement counts, their levels next to
    the paper's, and how many of their verdicts masking sink positions changes (when compared)."""
    lines = ["# Our verdicts and Ma et al.'s, side by side", "",
             "| feature | ours | theirs | their best strategy | d | p | selected by their rule |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        theirs = r["theirs"] or f"– ({r['skipped']})"
        lines.append(f"| {r['feature']} | {r['ours']} | {theirs} | {r['best_strategy'] or '–'} | "
                     f"{_num(r['best_d'], '.2f')} | {_num(r['best_p'], '.2g')} | "
                     f"{'yes' if r['selected_by_them'] else 'no'} |")
    lines += ["", f"Compared (both gave a verdict): {counts['compared']} of {len(rows)}.", "",
              f"- We call it a reasoning candidate, their rule finds it token-driven at some "
              f"level: {_kn(counts['reasoning_token_driven'])}.",
              f"- Their rule finds it context-dependent, we call it a token detector: "
              f"{_kn(counts['context_dependent_token_detector'])}.",
              f"- Our token detectors their rule finds token-driven at some level: "
              f"{_kn(counts['token_detector_token_driven'])}.",
              f"- Their context-dependent features we call reasoning candidates: "
              f"{_kn(counts['context_dependent_reasoning'])}.",
              f"- Agreement on \"token-driven?\" (over our reasoning candidates and token "
              f"detectors): {_kn(counts['agree'])}.", "", "Their levels:", ""]
    lines += levels_table(levels)
    if masking:
        lines += ["", f"Masking sink positions changes {masking['changed']} of "
                      f"{masking['compared']} of their verdicts (features judged under both masks)."]
    return "\n".join(lines) + "\n"
