"""`thinksae validate --protocol ma2026` (or ``both``): Ma et al.'s protocol (:mod:`.ma2026`) on
the validation's model, SAE and hookpoint, its texts found and checked before the model loads.

- **Reasoning set**: the thinking of ``--traces``, else ``--corpus``, else the ``--run``'s traces,
  else the corpus the store was harvested from, cut into ``max_tokens``-token pieces.
- **Non-reasoning set**: ``--nonreasoning`` (a file, a saved ``datasets`` folder or a hub name),
  else the packaged plain prose (:data:`.ma2026.texts.PLAIN_PROSE`, 64 texts). A set smaller than
  ``--n_texts`` is used as it is when the statistics can still work with it
  (:func:`.ma2026.checks.check_text_counts`), with a warning and a note in the output.
- **Sink positions**: ``--mask sinks`` (default) uses thinksae's sink rule with the store's
  reference median norm (``ActivationStore.sink_rule``) unless ``--median_norm`` is given.
- **Candidates**: their own top selection plus the features given (ours, with ``both`` or
  ``--our_verdicts``; ``--features``).

Files: ``ma2026.json``/``.md`` (:func:`.ma2026.report.write_results`) and with
``--compare_masking`` ``ma2026_masking.json``/``.md``.
"""

from __future__ import annotations

import dataclasses
import json
import warnings
from collections.abc import Collection
from pathlib import Path
from typing import NamedTuple

from .. import atomic
from ..errors import ThinksaeError
from ..runs import read_run
from .config import ValidateConfig
from .ma2026.checks import check_text_counts
from .ma2026.config import Ma2026Options
from .ma2026.experiment import compare_masking, run_ma2026
from .ma2026.report import (
    JSON_FILE,
    MARKDOWN_FILE,
    MASKING_JSON,
    MASKING_MARKDOWN,
    PAPER,
    Ma2026Result,
    MaskingComparison,
    shares,
    write_comparison,
    write_results,
)
from .ma2026.texts import PLAIN_PROSE, text_sets
from .verdicts import SUMMARY_FILE, read_verdicts, verdicts_path


class TheirTexts(NamedTuple):
    reasoning: list[str]
    nonreasoning: list[str]
    injection: int
    """Texts per set the injection uses: min(n_injection_texts, both sets)."""
    sources: dict
    """Where each set came from (path or name, and a file's sha256)."""
    notes: list[str]
    """Where fewer texts than asked were used."""


class TheirRun(NamedTuple):
    result: Ma2026Result
    """Under ``--mask``."""
    comparison: MaskingComparison | None
    """Under both masks (``--compare_masking``)."""
    texts: TheirTexts
    options: Ma2026Options
    """As run (the store's median norm filled in)."""


def reasoning_source(cfg: ValidateConfig, store) -> Path:
    """The traces JSONL of the reasoning set (module docstring)."""
    if cfg.traces is not None:
        return Path(cfg.traces)
    candidates = [cfg.corpus, read_run(cfg.run).traces if cfg.run else None,
                  store.manifest.get("corpus")]
    for path in candidates:
        if path is not None and Path(path).is_file():
            return Path(path)
    raise ThinksaeError("no traces for the reasoning set: give --traces (a traces JSONL of "
                        "`thinksae corpus`) or --corpus")


def _source(spec: str | Path) -> dict:
    path = Path(spec)
    return {"path": str(spec), "sha256": atomic.sha256_file(path)} if path.is_file() else {"name": str(spec)}


def their_texts(cfg: ValidateConfig, tokenizer, store, num_latents: int) -> TheirTexts:
    """Both sets, checked against the statistics' needs (one-line errors): needs only the
    tokenizer, so it runs before the model loads."""
    opt = cfg.ma2026
    traces = reasoning_source(cfg, store)
    reasoning, other = text_sets(traces, cfg.nonreasoning, tokenizer, opt.max_tokens, opt.n_texts,
                                 cfg.text_field)
    injection = min(opt.n_injection_texts, len(reasoning), len(other))
    check_text_counts(len(reasoning), len(other), injection, num_latents)
    nonreasoning = cfg.nonreasoning if cfg.nonreasoning is not None else PLAIN_PROSE
    notes = [f"{name}: {len(texts)} texts, fewer than --n_texts {opt.n_texts}; all of them used"
             for name, texts in (("reasoning set", reasoning), ("non-reasoning set", other))
             if len(texts) < opt.n_texts]
    if injection < opt.n_injection_texts:
        notes.append(f"injection: {injection} texts per set, fewer than --n_injection_texts "
                     f"{opt.n_injection_texts}")
    for note in notes:
        warnings.warn(f"ma2026 {note}", stacklevel=2)
    return TheirTexts(reasoning, other, injection,
                      {"reasoning": _source(traces), "nonreasoning": _source(nonreasoning),
                       "nonreasoning_packaged": cfg.nonreasoning is None}, notes)


def their_options(opt: Ma2026Options, store) -> Ma2026Options:
    """``opt`` with the store's reference median norm when none is given (module docstring)."""
    if opt.median_norm is not None or opt.norm_multiple is None:
        return opt
    return dataclasses.replace(opt, median_norm=float(store.sink_rule.median_norm))


def run_theirs(cfg: ValidateConfig, inp, texts: TheirTexts, features: Collection[int]) -> TheirRun:
    """Their protocol on ``inp`` (:class:`.run.Inputs`), judging ``features`` too."""
    opt = their_options(cfg.ma2026, inp.store)
    args = (inp.model, inp.tokenizer, inp.sae, inp.hookpoint, texts.reasoning, texts.nonreasoning,
            opt, cfg.progress, sorted(features))
    if cfg.compare_masking:
        cmp = compare_masking(*args)
        return TheirRun(cmp.sinks if opt.mask == "sinks" else cmp.ma2026, cmp, texts, opt)
    return TheirRun(run_ma2026(*args), None, texts, opt)


def forward_texts(result: Ma2026Result) -> int:
    """Texts the protocol ran through the model: n_R + n_NR (selection) + n_inj · (2 + F·S)
    (base, reasoning, and each judged feature F under each strategy S)."""
    s = len(str(result.options["strategies"]).split(","))
    judged = sum(1 for f in result.features if f.effects)
    n = result.texts
    return n["reasoning"] + n["nonreasoning"] + (n["injection"] * (2 + judged * s) if judged else 0)


def their_summary(run: TheirRun, ours: Collection[int]) -> dict:
    """The ``ma2026`` block of validation.json: texts and where they came from, the mask, the
    levels over their selection (the paper's population) and over our candidates ``ours``
    (:func:`.ma2026.report.shares`), the paper's numbers, the cost and, when compared, how many
    verdicts the mask changes."""
    r, strategies = run.result, run.options.strategy_list()
    mine = [f for f in r.features if f.candidate.latent in set(ours)]
    cmp = run.comparison
    files = [JSON_FILE, MARKDOWN_FILE] + ([MASKING_JSON, MASKING_MARKDOWN] if cmp else [])
    return {
        "texts": r.texts, "sources": run.texts.sources, "notes": run.texts.notes,
        "mask": run.options.mask, "norm_multiple": run.options.norm_multiple,
        "median_norm": run.options.median_norm, "strategies": strategies,
        "latents_tested": r.tests, "passed_selection": r.selected, "judged": len(r.features),
        "levels": {"selected": shares([f for f in r.features if f.candidate.selected], strategies),
                   "ours": shares(mine, strategies) if ours else None, "paper": PAPER},
        "forward_texts": forward_texts(r) + (forward_texts(cmp.ma2026 if r is cmp.sinks else cmp.sinks)
                                             - cmp.reused if cmp else 0),
        "seconds": r.seconds if cmp is None else {m: getattr(cmp, m).seconds for m in ("sinks", "ma2026")},
        "masking": {"changed": cmp.changed, "compared": len(cmp.rows), "selection": cmp.selection}
        if cmp else None,
        "files": files,
    }


def write_theirs(run: TheirRun, out: Path) -> None:
    write_results(run.result, out)
    if run.comparison is not None:
        write_comparison(run.comparison, out)


def earlier_verdicts(directory: str, num_latents: int) -> tuple[dict[int, dict], dict]:
    """Our verdicts of an earlier validation (``--our_verdicts``) and its summary; one-line
    errors when there are none or they name features the SAE does not have."""
    if verdicts_path(directory) is None:
        raise ThinksaeError(f"no verdicts.jsonl in {directory}: give the folder of an earlier "
                            "`thinksae validate` (e.g. a run's validate/)")
    rows = read_verdicts(directory)
    bad = [f for f in rows if not 0 <= f < num_latents]
    if bad:
        raise ThinksaeError(f"{directory}: feature {bad[0]} is not one of the SAE's {num_latents}: "
                            "those verdicts are of another SAE")
    folder = verdicts_path(directory).parent
    try:
        summary = json.loads((folder / SUMMARY_FILE).read_text())
    except (OSError, json.JSONDecodeError):
        summary = {}
    return rows, summary
