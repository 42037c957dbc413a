"""The SAEBench options of `thinksae eval` (:class:`~.config.SaebenchConfig`) read and checked:
each bad one refused with one line before the SAE or a model loads."""

from __future__ import annotations

import numpy as np

from ..corpus.segment import Region
from ..errors import ThinksaeError
from .config import EvalConfig, SaebenchConfig
from .saebench.absorption import AbsorptionOptions
from .saebench.letters import check_vocabulary, letter_vocabulary
from .saebench.sparse_probing import ProbingOptions

FAMILIES = ("regions", "behaviours")
REGION_CLASSES = ("prompt", "think", "answer")


def _numbers(text: str, what: str) -> tuple[int, ...]:
    """Comma-separated positive integers."""
    try:
        values = tuple(int(v) for v in str(text).split(",") if v.strip())
    except ValueError:
        values = ()
    if not values or min(values) < 1:
        raise ThinksaeError(f"--{what} must be positive integers, comma-separated (got {text!r})")
    return values


def probe_families(cfg: SaebenchConfig) -> tuple[str, ...]:
    """The label families of ``--probe_families``, each known."""
    names = tuple(dict.fromkeys(n.strip() for n in str(cfg.probe_families).split(",") if n.strip()))
    if not names or any(n not in FAMILIES for n in names):
        raise ThinksaeError(f"unknown --probe_families {cfg.probe_families!r} "
                            f"(use {', '.join(FAMILIES)})")
    return names


def probing_options(cfg: SaebenchConfig) -> ProbingOptions:
    """:class:`ProbingOptions` from the flat options (the rest at their defaults), checked."""
    for name in ("probe_max_traces", "probe_window_tokens"):
        value = getattr(cfg, name)
        if value is not None and value < 1:
            raise ThinksaeError(f"--{name} must be >= 1, or given without a value (got {value})")
    if cfg.probe_max_traces is not None and cfg.probe_max_traces < 2:
        raise ThinksaeError("--probe_max_traces must be >= 2: train and test units come from "
                            "different traces")
    opts = ProbingOptions(ks=_numbers(cfg.probe_ks, "probe_ks"),
                          window_tokens=cfg.probe_window_tokens, max_traces=cfg.probe_max_traces)
    opts.check()
    return opts


def absorption_options(cfg: SaebenchConfig) -> AbsorptionOptions:
    """:class:`AbsorptionOptions` from the flat options (the rest at their defaults), checked."""
    if cfg.absorption_min_letters < 1 or cfg.absorption_min_letters > 26:
        raise ThinksaeError(f"--absorption_min_letters must be in 1..26 (got "
                            f"{cfg.absorption_min_letters})")
    opts = AbsorptionOptions(words_per_letter=cfg.absorption_words_per_letter,
                             min_words_per_letter=cfg.absorption_min_words_per_letter,
                             min_letters=cfg.absorption_min_letters)
    opts.check()
    if opts.words_per_letter is not None and opts.words_per_letter < opts.min_words_per_letter:
        raise ThinksaeError(f"--absorption_words_per_letter ({opts.words_per_letter}) is below "
                            f"--absorption_min_words_per_letter ({opts.min_words_per_letter})")
    return opts


def probing_on(cfg: EvalConfig) -> bool:
    """Whether to probe: as asked, or (unset) whenever a store is given."""
    asked = cfg.saebench.probing
    return cfg.store is not None if asked is None else bool(asked)


def check_saebench(cfg: EvalConfig, have_model: bool) -> None:
    """The SAEBench options against each other and the inputs (before anything loads)."""
    bench = cfg.saebench
    if bench.core and have_model and not cfg.exclude_sinks:
        raise ThinksaeError("--core with --model needs --exclude_sinks (SAEBench's scores are over "
                            "the non-sink tokens, kept clean when splicing); give --core false to "
                            "splice at every token")
    if bench.probing and cfg.store is None:
        raise ThinksaeError("--probing needs --store (it probes the store's region and behaviour "
                            "labels)")
    if probing_on(cfg):
        probe_families(bench)
        probing_options(bench)
    if bench.absorption:
        if not have_model:
            raise ThinksaeError("--absorption needs --model (it reads the residual at "
                                "first-letter prompts)")
        absorption_options(bench)


def probe_plan(cfg: EvalConfig, store, docs) -> tuple[tuple[str, ...], dict[str, str]]:
    """The families to probe on the traces ``docs`` of ``store`` (None: all) and why any other
    asked for is skipped: fewer than 2 traces, or a label with one class only (no two regions;
    no behaviour tag). With ``--probing true`` such a family is an error instead."""
    families = probe_families(cfg.saebench)
    chosen = np.arange(len(store.trace_ids)) if docs is None else np.asarray(docs)
    regions = store.labels("regions")
    names = list(store.manifest.get("regions") or [r.name.lower() for r in Region])
    if docs is not None:
        regions = regions[np.isin(store.labels("doc_index"), chosen)]
    skipped: dict[str, str] = {}
    for family in families:
        if len(chosen) < 2:
            skipped[family] = (f"{len(chosen)} trace(s): train and test units need different "
                               "traces")
        elif family == "regions":
            present = [r for r in REGION_CLASSES if r in names and (regions == names.index(r)).any()]
            if len(present) < 2:
                skipped[family] = (f"one class only (the traces hold only the region(s) "
                                   f"{', '.join(present) or 'none'})")
        else:
            behaviours = store.labels("behaviours")
            if docs is not None:
                behaviours = behaviours[np.isin(store.labels("doc_index"), chosen)]
            if not (behaviours > 0).any():
                skipped[family] = "one class only (no behaviour tag on any token of the traces)"
    if skipped and cfg.saebench.probing:
        family, why = next(iter(skipped.items()))
        raise ThinksaeError(f"probing {family}: {why}: a probe needs two classes; drop it from "
                            "--probe_families or give --probing false")
    return tuple(f for f in families if f not in skipped), skipped


def check_absorption_vocabulary(cfg: EvalConfig, tokenizer) -> None:
    """Every first letter has enough letter-only tokens in ``tokenizer``'s vocabulary (one line
    naming the short letters otherwise)."""
    check_vocabulary(letter_vocabulary(tokenizer), cfg.saebench.absorption_min_words_per_letter)

