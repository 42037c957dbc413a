"""The printed report of bench/quality.py: the header (machine, command, data, schedules) and the
markdown table (one line per system, schedule and k: mean ± sample sd over the seeds)."""

from __future__ import annotations

import datetime
import json
import platform
import shlex
import statistics
import subprocess
import sys
from pathlib import Path

import torch
from quality_data import REGIONS, BenchData
from quality_saebench import SaebenchSetup, saebench_cells, saebench_head


def cpu_line() -> str:
    """CPU model and the flags that decide the fast paths."""
    model, flags = platform.processor() or "?", set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
            elif line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    have = [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16") if f in flags]
    return f"{model}, {torch.get_num_threads()} threads, flags {' '.join(have) or 'none'}"


def commit() -> str:
    root = Path(__file__).resolve().parent.parent
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, text=True,
                              capture_output=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "src", "bench"], cwd=root,
                               text=True, capture_output=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + (" (with uncommitted changes)" if dirty else "")


def mean_sd(values: list[float | None], digits: int) -> str:
    """mean ± sample standard deviation of the values given (None left out; "-" for none)."""
    values = [v for v in values if v is not None]
    if not values:
        return "-"
    mean = statistics.fmean(values)
    if len(values) == 1:
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def table(rows: list[dict], spliced: bool, bench: SaebenchSetup | None = None) -> str:
    """Markdown: one line per system, schedule and k; mean ± sd over the seeds."""
    head = ["system", "schedule", "k", "seeds", "FVU all", *(f"FVU {r}" for r in REGIONS), "MSE",
            "L0 all", *(f"L0 {r}" for r in REGIONS), "dead %", "train s", "peak MB"]
    if spliced:
        head += ["CE score think", "KL think"]
    if bench is not None:
        head += saebench_head(bench.ks, bench.model is not None)
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * 3 + "---:|" * (len(head) - 3)]
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["system"], r["label"], r["k"]), []).append(r)
    for (system, label, k), runs in groups.items():
        m = [r["metrics"] for r in runs]
        cells = [system, label, str(k), str(len(runs)), mean_sd([x["all"]["fvu"] for x in m], 3),
                 *(mean_sd([x[g]["fvu"] for x in m], 3) for g in REGIONS),
                 mean_sd([x["all"]["mse"] for x in m], 4), mean_sd([x["all"]["l0"] for x in m], 1),
                 *(mean_sd([x[g]["l0"] for x in m], 1) for g in REGIONS),
                 mean_sd([x["dead_pct"] for x in m], 1), mean_sd([r["train_s"] for r in runs], 0),
                 mean_sd([r["peak_rss_mb"] for r in runs], 0)]
        if spliced:
            cells += [mean_sd([x["spliced_think"]["ce_score"] for x in m], 3),
                      mean_sd([x["spliced_think"]["kl"] for x in m], 4)]
        if bench is not None:
            cells += saebench_cells(m, bench.ks, bench.model is not None, mean_sd)
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def header(args, data: BenchData, steps: int, schedules: dict) -> str:
    s = data.summary
    sinks = s["sinks_train"]
    by_norm = ", ".join(f"id {t['id']} × {t['count']}" for t in sinks.get("by_norm_tokens", []))
    return "\n".join([
        f"- date {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M UTC}; CPU "
        f"{cpu_line()}; torch {torch.__version__}; commit {commit()}",
        f"- command: `{shlex.join(['python', *sys.argv])}`",
        f"- store {s['store']} ({s['tokens']} tokens, {s['traces']} traces, d_in {s['d_in']}); "
        f"held out {len(s['heldout_traces'])} traces by thinksae's hash split "
        f"(holdout {s['holdout']})",
        f"- sink rule: special tokens + norm > {s['sink_rule']['norm_multiple']} × median "
        f"{s['sink_rule']['median_norm']:.2f} (the store's: all its non-special tokens); training: "
        f"{sinks['sinks']} sinks ({sinks['special']} special, {sinks['by_norm']} by norm"
        f"{': ' + by_norm if by_norm else ''}) "
        f"{'dropped' if s['sinks_dropped_from_training'] else 'KEPT'}; {s['train_rows']} rows "
        "trained on",
        f"- held-out metrics on {s['eval_rows']} of {s['heldout_rows']} held-out tokens: sinks "
        f"left out, and {s['heldout_equal_to_training_row']} tokens bit-identical to a training "
        f"row (the shared system prompt; {s['heldout_equal_by_region']}) left out; by region "
        f"{s['eval_rows_by_region']}",
        "- SAEs evaluated as given (trained elsewhere; train s = the card's training loop)"
        if not steps else f"- every run: {args.latents} latents, batch {args.batch_size}, {steps} steps = "
        f"{steps * args.batch_size} tokens, float32 weights, compute {args.dtype}, "
        f"{args.threads} threads per training worker; train s = the whole training call (incl. "
        "saving), peak MB = the worker's max RSS",
        "- schedules: " + "; ".join(f"{k}: {json.dumps(v)}" for k, v in schedules.items()),
        *([f"- spliced CE score and KL: think positions of the first {args.spliced_traces} "
           "held-out traces"] if getattr(args, "spliced_traces", None) else []),
    ])
