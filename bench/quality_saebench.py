"""SAEBench's metrics in bench/quality.py (``--saebench``), computed by thinksae's own functions.

The bench does not define these numbers: it calls the functions `thinksae eval` calls
(:func:`thinksae.evaluate.bench.run_probing` → :func:`thinksae.evaluate.saebench.store_probing`,
and :func:`thinksae.evaluate.bench.run_absorption` → :func:`thinksae.evaluate.saebench.absorption_eval`)
with the bench's held-out traces and sink rule, so a bench number is the product's number.

- **k-sparse probing**, per label family (regions: windows of at most ``probe_window_tokens``
  tokens of one region of one trace; behaviours: think sentences, or think windows without a
  tokenizer) and per k: ``probing[family]["mean"]["sae"][k]`` = the mean over the family's
  classes of the test accuracy of a one-vs-rest logistic probe on the k latents with the largest
  |mean over positives − mean over negatives| (balanced classes; :mod:`~thinksae.evaluate.saebench.
  sparse_probing`). Units come only from the bench's held-out traces (no SAE trained on them; at
  most ``probe_max_traces`` of them, a seeded sample) and are split train/test by trace within
  them; sinks are left out by the bench's rule (special tokens + norm > m × the store's median).
  The residual probes (no SAE) are the same for every SAE: the header gives them once.
- **absorption** (with ``--model``): on the first-letter task, ``mean_absorption_fraction`` and
  ``full_absorption_rate`` = means over the letters whose ground-truth probe F1 > 0.6 of each
  letter's mean over its test words (:func:`~thinksae.evaluate.saebench.absorption_score.
  aggregate_letters`); None (``-``) when fewer than ``absorption_min_letters`` letters qualify.

The model's residuals at the absorption prompts do not depend on the SAE: while one SAE after
another is measured, :func:`reused_residuals` runs each distinct batch of prompts through the
model once and hands the same hookpoint outputs to every later SAE (the numbers are those of a
fresh run: the test compares them with a direct :func:`absorption_eval` call).

Matryoshka widths: :func:`default_matryoshka_widths`.
"""

from __future__ import annotations

import hashlib
import statistics
from contextlib import contextmanager
from typing import Any, NamedTuple

import numpy as np

from thinksae.errors import ThinksaeError
from thinksae.evaluate.bench import run_absorption, run_probing
from thinksae.evaluate.bench_options import (
    check_absorption_vocabulary,
    check_saebench,
    probe_plan,
    probing_options,
)
from thinksae.evaluate.config import EvalConfig, SaebenchConfig
from thinksae.evaluate.saebench import absorption as absorption_module
from thinksae.sinks import SinkRule
from thinksae.store import ActivationStore

FAMILIES = ("regions", "behaviours")
MATRYOSHKA_DIVISORS = (32, 8, 2)
"""Inner prefix widths of the default Matryoshka nesting, as fractions 1/d of the latents."""


def default_matryoshka_widths(latents: int, k: int) -> str:
    """Cumulative prefix widths latents/32, latents/8, latents/2 and latents (for 4096 latents:
    128,512,2048,4096, the nesting of the Matryoshka releases — 128/512/2048/… — cut at the
    dictionary), keeping only the integer inner widths ≥ k (a prefix narrower than k cannot hold
    one token's k latents). A one-line error when fewer than two prefixes remain."""
    inner = [latents // d for d in MATRYOSHKA_DIVISORS if latents % d == 0 and latents // d >= k]
    widths = sorted(set(inner)) + [latents]
    if len(widths) < 2:
        raise ThinksaeError(f"no default Matryoshka nesting for {latents} latents at k {k} (the "
                            "inner prefixes latents/32, /8, /2 must be integers >= k); give "
                            "--matryoshka_widths")
    return ",".join(str(w) for w in widths)


class SaebenchSetup(NamedTuple):
    """What every SAE's SAEBench metrics are computed with (checked before anything trains)."""

    cfg: EvalConfig
    """`thinksae eval`'s options: ``saebench`` carries the probing and absorption options."""
    store: ActivationStore
    docs: np.ndarray
    """The held-out traces (store document indices)."""
    rule: SinkRule
    families: tuple[str, ...]
    """Label families to probe (the others are in ``skipped``, with why)."""
    skipped: dict[str, str]
    tokenizer: Any
    model: Any
    hookpoint: str | None
    residuals: dict
    """The absorption prompts' hookpoint outputs, by batch (:func:`reused_residuals`)."""

    @property
    def ks(self) -> tuple[int, ...]:
        """The probes' numbers of latents."""
        return probing_options(self.cfg.saebench).ks


def saebench_config(args) -> SaebenchConfig:
    """The probing and absorption options of the bench's command line (absorption iff a model)."""
    return SaebenchConfig(core=False, probing=None, probe_families=",".join(FAMILIES),
                          probe_ks=args.probe_ks, probe_max_traces=args.probe_max_traces,
                          probe_window_tokens=args.probe_window_tokens,
                          absorption=args.model is not None,
                          absorption_words_per_letter=args.absorption_words_per_letter,
                          absorption_min_letters=args.absorption_min_letters)


def prepare_saebench(args, data, model, tokenizer, hookpoint: str) -> SaebenchSetup:
    """Options, the families the held-out traces can be probed on and (with a model) the
    vocabulary of the absorption task, checked by the product's own checks."""
    cfg = EvalConfig(store=args.store, saebench=saebench_config(args))
    check_saebench(cfg, model is not None)
    store = ActivationStore(args.store)
    docs = np.asarray(data.heldout_doc_index)
    families, skipped = probe_plan(cfg, store, docs)
    if model is not None:
        check_absorption_vocabulary(cfg, tokenizer)
    return SaebenchSetup(cfg, store, docs, data.sink_rule, families, skipped, tokenizer, model,
                         hookpoint, {})


def _batch_key(model, hookpoints, input_ids, attention_mask) -> tuple:
    digest = hashlib.sha256(input_ids.cpu().numpy().tobytes())
    if attention_mask is not None:
        digest.update(attention_mask.cpu().numpy().tobytes())
    return id(model), str(hookpoints), tuple(input_ids.shape), digest.hexdigest()


@contextmanager
def reused_residuals(memo: dict):
    """Within the block, the absorption eval's forward passes (its ``capture`` of the hookpoint
    output) are looked up in ``memo`` by model, hookpoint and the batch's token ids and mask,
    and run only when new. Restored on leaving."""
    original = absorption_module.capture

    def capture(model, hookpoints, input_ids, attention_mask=None):
        key = _batch_key(model, hookpoints, input_ids, attention_mask)
        if key not in memo:
            memo[key] = original(model, hookpoints, input_ids, attention_mask)
        return memo[key]

    absorption_module.capture = capture
    try:
        yield memo
    finally:
        absorption_module.capture = original


def saebench_metrics(sae, setup: SaebenchSetup) -> dict:
    """One SAE's probing (:func:`run_probing`'s record) and absorption (None without a model)."""
    sae = sae.float().eval()
    probing = run_probing(setup.cfg, setup.store, sae, setup.rule, setup.docs, setup.tokenizer,
                          setup.families, setup.skipped)
    absorption = None
    if setup.model is not None:
        with reused_residuals(setup.residuals):
            absorption = run_absorption(setup.cfg, setup.model, setup.tokenizer, sae,
                                        setup.hookpoint, setup.rule)
    return {"probing": probing, "absorption": absorption}


def probe_accuracy(metrics: dict, family: str, k: int) -> float | None:
    """The SAE's probe accuracy of ``family`` at ``k`` (None when the family was skipped)."""
    result = metrics["saebench"]["probing"][family]
    return None if result is None else result["mean"]["sae"][str(k)]


def absorption_value(metrics: dict, name: str) -> float | None:
    """``mean_absorption_fraction`` or ``mean_full_absorption_rate`` (None without a model or
    with too few letters)."""
    result = metrics["saebench"]["absorption"]
    return None if result is None else result["aggregate"][f"mean_{name}"]


def saebench_head(ks: tuple[int, ...], absorption: bool) -> list[str]:
    heads = [f"probe {family} k={k}" for family in FAMILIES for k in ks]
    return heads + (["absorption", "full absorption"] if absorption else [])


def saebench_cells(metrics: list[dict], ks: tuple[int, ...], absorption: bool, stat) -> list[str]:
    """The row's cells under :func:`saebench_head`, ``stat`` giving mean ± sd over the seeds."""
    cells = [stat([probe_accuracy(m, f, k) for m in metrics], 3) for f in FAMILIES for k in ks]
    if absorption:
        cells += [stat([absorption_value(m, n) for m in metrics], 3)
                  for n in ("absorption_fraction", "full_absorption_rate")]
    return cells


def _residual_line(probing: dict) -> str:
    parts = []
    for family in FAMILIES:
        result = probing[family]
        if result is None:
            why = probing["skipped"].get(family, "not run")
            parts.append(f"{family} skipped ({why})")
            continue
        by_k = "/".join(f"{v:.3f}" for v in result["mean"]["residual"].values())
        every = result["mean"]["residual_all"]
        classes = ", ".join(c["name"] for c in result["classes"])
        parts.append(f"{family} ({classes}; {result['units']} units) residual k="
                     f"{'/'.join(result['mean']['residual'])}: {by_k}"
                     + (f", all dims {every:.3f}" if every is not None else ""))
    return "; ".join(parts)


def saebench_notes(rows: list[dict], setup: SaebenchSetup) -> list[str]:
    """Header lines: what was probed and the SAE-independent residual baseline; absorption's
    options and how many letters each SAE's means are over."""
    probing = rows[0]["metrics"]["saebench"]["probing"] if rows else None
    opts = setup.cfg.saebench
    lines = []
    if probing is not None:
        lines.append(
            f"- SAEBench k-sparse probing (thinksae.evaluate.saebench, as `thinksae eval`): "
            f"{probing.get('traces', 0)} of the {len(setup.docs)} held-out traces "
            f"({probing.get('tokens', 0)} tokens, {probing.get('sink_tokens', 0)} sinks left out); "
            f"regions in windows of ≤ {opts.probe_window_tokens} tokens, behaviour units: "
            f"{probing['behaviour_units']}; probe k = mean test accuracy over classes of the "
            f"top-k-latent probe (units split by trace, 20 % test). Baseline without an SAE: "
            + _residual_line(probing))
    if setup.model is not None and rows:
        counts = [len(r["metrics"]["saebench"]["absorption"]["aggregate"]["letters_evaluated"])
                  for r in rows]
        lines.append(
            f"- SAEBench absorption (first-letter task, {opts.absorption_words_per_letter} words "
            f"per letter): means over the letters whose probe F1 > 0.6, shown only when ≥ "
            f"{opts.absorption_min_letters} letters qualify; letters per SAE {min(counts)}–"
            f"{max(counts)}")
    return lines


def l0_notes(rows: list[dict], tolerance: float = 0.25) -> list[str]:
    """Matched L0: per (system, schedule, k) the mean held-out L0 over all kept tokens against k;
    settings off by more than ``tolerance`` · k are named."""
    groups: dict[tuple, list[float]] = {}
    for r in rows:
        groups.setdefault((r["system"], r["label"], r["k"]), []).append(r["metrics"]["all"]["l0"])
    off = []
    for (system, label, k), values in groups.items():
        l0 = statistics.fmean(values)
        if abs(l0 - k) > tolerance * k:
            off.append(f"{system} {label} k={k}: {l0:.1f} ({100 * (l0 / k - 1):+.0f} %)")
    verdict = ("all within" if not off else "NOT matched, outside") + f" ±{tolerance:.0%} of k"
    return [f"- matched L0: held-out L0 (all kept tokens; TopK exactly k, BatchTopK and Matryoshka "
            f"by their calibrated inference threshold) {verdict}" + (": " + "; ".join(off) if off
                                                                       else "")]
