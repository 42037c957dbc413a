"""Are thinksae's SAEs as good as sparsify's and SAELens' at equal compute? Held-out quality per system.

On one activation store: the same training rows in the same order for every system (equal tokens,
equal width and k), held-out traces never trained on, the sink rule applied the same way for all
(bench/quality_data.py says exactly what is dropped and how every metric is computed), each SAE
trained in its own subprocess (bench/quality_train.py states each library's default schedule and
the matched one), seeds giving mean ± sample standard deviation. Prints a markdown table and
writes the JSON.

    python bench/quality.py --store runs/findings/store/layers.10 --k 16 32 64 --seeds 0 1 2
    python bench/quality.py --store S --systems thinksae-topk --set lr_warmup_steps=0 --label nowarm
    python bench/quality.py --store S --spliced --model offline      # + CE score / KL on think

Systems: thinksae-<architecture> for every trainable registered architecture, sparsify-topk,
saelens-topk, saelens-batchtopk (the peers need the bench extra: pip install -e ".[bench]").
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import json
import platform
import re
import shlex
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
from quality_data import REGIONS, BenchData, prepare, quality_metrics, spliced_think
from quality_train import run_worker
from safetensors.torch import save_file

from thinksae.sae import ARCHITECTURES, load_sae

PEERS = {"sparsify": ("sparsify", "eai-sparsify"), "saelens": ("sae_lens", "sae-lens")}
PEER_SYSTEMS = ("sparsify-topk", "saelens-topk", "saelens-batchtopk")
VARIANTS = ("own", "matched")


def all_systems() -> list[str]:
    """thinksae's trainable architectures (from the registry) and the peers."""
    ours = sorted(f"thinksae-{n}" for n, c in ARCHITECTURES.items() if c.trainable)
    return [*ours, *PEER_SYSTEMS]


def check_systems(systems: list[str]) -> None:
    """Unknown system or missing peer library: a one-line error before anything trains."""
    known = all_systems()
    for s in systems:
        if s not in known:
            raise SystemExit(f"quality.py: error: unknown system {s!r} (known: {', '.join(known)})")
        lib = s.split("-", 1)[0]
        if lib in PEERS and importlib.util.find_spec(PEERS[lib][0]) is None:
            raise SystemExit(f"quality.py: error: {s} needs {PEERS[lib][1]}, which is not "
                             f"installed (pip install {PEERS[lib][1]}, or leave {s} out)")


def parse_set(items: list[str]) -> dict:
    """``key=value`` pairs, values read as JSON where they parse (numbers, true, null)."""
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"quality.py: error: --set {item!r}: use key=value")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


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


def train_one(spec: dict) -> dict:
    """One SAE in its own subprocess; its result record."""
    proc = subprocess.run([sys.executable, __file__, "--worker", json.dumps(spec)],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["?"])[-1]
        raise SystemExit(f"quality.py: error: {spec['system']} k={spec['k']} seed={spec['seed']} "
                         f"failed: {last}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def evaluate_run(record: dict, data: BenchData, model, hookpoint: str | None) -> dict:
    sae = load_sae(record["sae_dir"])
    out = quality_metrics(sae, data)
    if model is not None:
        out["spliced_think"] = spliced_think(model, hookpoint, sae, data)
    return out


def evaluate_dir(path: Path, data: BenchData, model, hookpoint: str | None) -> dict:
    """A row for an SAE trained elsewhere: its report card's k, seed and training seconds."""
    from thinksae.sae import read_report_card, resolve_sae_dir

    sae_dir = resolve_sae_dir(path)
    training = read_report_card(sae_dir).get("training", {})
    rec = {"sae_dir": str(sae_dir), "train_s": training.get("wall_time_s"), "peak_rss_mb": None}
    run = re.sub(r"-s\d+$", "", path.name)  # seeds of one setting share a row
    return {"system": run, "label": "given", "k": load_sae(sae_dir).cfg.k,
            "seed": training.get("seed"), **rec,
            "metrics": evaluate_run(rec, data, model, hookpoint)}


def _stat(values: list[float | None], digits: int) -> str:
    values = [v for v in values if v is not None]
    if not values:
        return "-"
    mean = statistics.fmean(values)
    if len(values) == 1:
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def table(rows: list[dict], spliced: bool) -> str:
    """Markdown: one line per system, schedule and k; mean ± sd over the seeds."""
    head = ["system", "schedule", "k", "seeds", "FVU all", *(f"FVU {r}" for r in REGIONS), "MSE",
            *(f"L0 {r}" for r in REGIONS), "dead %", "train s", "peak MB"]
    if spliced:
        head += ["CE score think", "KL think"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * 3 + "---:|" * (len(head) - 3)]
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["system"], r["label"], r["k"]), []).append(r)
    for (system, label, k), runs in groups.items():
        m = [r["metrics"] for r in runs]
        cells = [system, label, str(k), str(len(runs)), _stat([x["all"]["fvu"] for x in m], 3),
                 *(_stat([x[g]["fvu"] for x in m], 3) for g in REGIONS),
                 _stat([x["all"]["mse"] for x in m], 4),
                 *(_stat([x[g]["l0"] for x in m], 1) for g in REGIONS),
                 _stat([x["dead_pct"] for x in m], 1), _stat([r["train_s"] for r in runs], 0),
                 _stat([r["peak_rss_mb"] for r in runs], 0)]
        if spliced:
            cells += [_stat([x["spliced_think"]["ce_score"] for x in m], 3),
                      _stat([x["spliced_think"]["kl"] for x in m], 4)]
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
        f"{s['sink_rule']['median_norm']:.2f} (non-special training tokens); training: "
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
        f"{args.threads} threads; train s = the whole training call (incl. saving), peak MB = "
        "the worker's max RSS",
        "- schedules: " + "; ".join(f"{k}: {json.dumps(v)}" for k, v in schedules.items()),
    ])


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--store", help="activation store directory of one hookpoint")
    p.add_argument("--systems", nargs="+", default=None, help="default: all (see above)")
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    p.add_argument("--k", type=int, nargs="+", default=[16, 32, 64])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--latents", type=int, default=4096)
    p.add_argument("--batch_size", type=int, default=256)
    p.add_argument("--epochs", type=float, default=16.0, help="passes over the training rows")
    p.add_argument("--holdout", type=float, default=0.125)
    p.add_argument("--sink_norm_multiple", default="10",
                   help="m of the sink rule, or none (special tokens only)")
    p.add_argument("--keep_sinks", action="store_true", help="train on sink rows too")
    p.add_argument("--matched_lr", type=float, default=1e-3)
    p.add_argument("--matched_warmup", type=int, default=0, help="warmup steps (matched)")
    p.add_argument("--matched_decay", default="none", choices=("none", "linear", "cosine"))
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                   help="thinksae systems: TrainConfig fields or bench knobs (quality_train.py)")
    p.add_argument("--label", default=None, help="name for this setting in the table")
    p.add_argument("--dtype", default="float32", help="thinksae compute dtype")
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads per worker (1 is steadier on a shared CPU)")
    p.add_argument("--spliced", action="store_true", help="CE score and KL on think (needs --model)")
    p.add_argument("--model", default=None)
    p.add_argument("--model_dtype", default="auto")
    p.add_argument("--json", default=None, help="write the results here")
    p.add_argument("--work", default=None, help="keep the trained SAEs here (default: a temp dir)")
    p.add_argument("--saes", nargs="+", default=None, metavar="DIR",
                   help="evaluate these SAE directories (e.g. from `thinksae train --holdout`; "
                        "rows by run directory name less a trailing -s<seed>) instead of training")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker is None and not args.store:
        p.error("--store is required")
    if args.spliced and not args.model:
        p.error("--spliced needs --model")
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.worker:
        print(json.dumps(run_worker(json.loads(args.worker))))
        return
    systems = args.systems or all_systems()
    check_systems(systems)
    knobs = parse_set(args.set)
    torch.set_num_threads(args.threads)
    multiple = None if str(args.sink_norm_multiple).lower() == "none" else float(
        args.sink_norm_multiple)
    data = prepare(args.store, args.holdout, multiple, drop_sinks=not args.keep_sinks)
    steps = int(args.epochs * (len(data.train_x) // args.batch_size))
    model = hookpoint = None
    if args.spliced:
        from thinksae.models import load_model
        from thinksae.store import ActivationStore

        hookpoint = ActivationStore(args.store).hookpoint
        model, _ = load_model(args.model, "cpu", args.model_dtype, progress=False)
    if args.saes:
        rows = [evaluate_dir(Path(d), data, model, hookpoint) for d in args.saes]
        print(header(args, data, 0, {}) + "\n\n" + table(rows, args.spliced))
        return
    matched = {"lr": args.matched_lr, "warmup": args.matched_warmup, "decay": args.matched_decay}
    rows, schedules = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.work or tmp)
        data_file = str(Path(tmp) / "train.safetensors")
        save_file({"train_x": data.train_x}, data_file)
        for system in systems:
            for variant in args.variants:
                for k in args.k:
                    for seed in args.seeds:
                        name = f"{system}-{variant}-k{k}-s{seed}"
                        spec = {"system": system, "variant": variant, "k": k, "seed": seed,
                                "latents": args.latents, "batch_size": args.batch_size,
                                "steps": steps, "matched": matched, "dtype": args.dtype,
                                "threads": args.threads, "data_file": data_file,
                                "data_hash": data.summary["store_hash"],
                                "set": knobs if system.startswith("thinksae") else {},
                                "out_dir": str(work / name)}
                        rec = train_one(spec)
                        rec["metrics"] = evaluate_run(rec, data, model, hookpoint)
                        label = variant + (f" {args.label}" if args.label else "")
                        rows.append({"system": system, "label": label, "k": k, "seed": seed,
                                     **rec})
                        schedules[f"{system} {label}"] = rec["schedule"]
                        print(f"{name}: think FVU {rec['metrics']['think']['fvu']:.4f} L0 "
                              f"{rec['metrics']['think']['l0']:.1f} ({rec['train_s']:.0f} s)",
                              file=sys.stderr, flush=True)
    text = header(args, data, steps, schedules) + "\n\n" + table(rows, args.spliced)
    print(text)
    if args.json:
        Path(args.json).write_text(json.dumps({"summary": data.summary, "runs": rows,
                                               "markdown": text}, indent=1))


if __name__ == "__main__":
    main()
