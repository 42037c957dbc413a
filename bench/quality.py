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
    python bench/quality.py --store runs/findings/store/layers.10 --systems thinksae-topk \
        thinksae-batchtopk thinksae-matryoshka_batchtopk --variants own --k 32 --seeds 0 1 2 \
        --latents 4096 --epochs 4 --spliced --model offline --saebench --eval_threads 2 \
        --json out.json        # Matryoshka vs BatchTopK vs TopK at matched L0, SAEBench metrics

Systems: thinksae-<architecture> for every trainable registered architecture (topk, batchtopk,
matryoshka_batchtopk), sparsify-topk, saelens-topk, saelens-batchtopk (the peers need the bench
extra: pip install -e ".[bench]"). thinksae-matryoshka_batchtopk nests its prefixes as
--matryoshka_widths says, by default latents/32, /8, /2 and latents (128,512,2048,4096 for 4096;
inner widths below k dropped: quality_saebench.default_matryoshka_widths); the header gives the
widths used. Matched L0: the table's L0 columns are held-out L0 (TopK exactly k; BatchTopK and
Matryoshka by the inference threshold the trainer calibrates after training), and a header line
names every setting whose held-out L0 is more than 25 % away from k.

--saebench adds SAEBench's metrics by thinksae's own functions (bench/quality_saebench.py):
k-sparse probing accuracy of the store's region and behaviour labels on the held-out traces
(k = --probe_ks), and with --model first-letter absorption (mean absorption fraction and
full-absorption rate). --eval_threads: torch threads of the measuring process (the model passes
of --spliced and absorption), --threads those of each training worker.
"""

from __future__ import annotations

import argparse
import importlib.util
import itertools
import json
import re
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import NamedTuple

import torch
from quality_data import BenchData, prepare, quality_metrics, spliced_think
from quality_report import header, table
from quality_saebench import (
    SaebenchSetup,
    default_matryoshka_widths,
    l0_notes,
    prepare_saebench,
    saebench_metrics,
    saebench_notes,
)
from quality_train import run_worker
from safetensors.torch import save_file

from thinksae.evaluate.config import SaebenchConfig
from thinksae.sae import ARCHITECTURES, SaeConfig, load_sae, sae_class

PEERS = {"sparsify": ("sparsify", "eai-sparsify"), "saelens": ("sae_lens", "sae-lens")}
PEER_SYSTEMS = ("sparsify-topk", "saelens-topk", "saelens-batchtopk")
MATRYOSHKA = "thinksae-matryoshka_batchtopk"
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


def train_one(spec: dict) -> dict:
    """One SAE in its own subprocess; its result record."""
    proc = subprocess.run([sys.executable, __file__, "--worker", json.dumps(spec)],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["?"])[-1]
        raise SystemExit(f"quality.py: error: {spec['system']} k={spec['k']} seed={spec['seed']} "
                         f"failed: {last}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


class Evaluation(NamedTuple):
    """What every trained SAE is measured with besides the data: the model for the spliced
    losses (None: none), and the SAEBench setup (None: no --saebench)."""

    model: object
    hookpoint: str | None
    saebench: SaebenchSetup | None
    spliced_traces: int | None = None
    """The spliced losses over the first this many held-out traces (None: all)."""


def evaluate_run(record: dict, data: BenchData, ev: Evaluation) -> dict:
    sae = load_sae(record["sae_dir"])
    out = quality_metrics(sae, data)
    if ev.model is not None and ev.hookpoint is not None:
        out["spliced_think"] = spliced_think(ev.model, ev.hookpoint, sae, data,
                                             max_traces=ev.spliced_traces)
    if ev.saebench is not None:
        out["saebench"] = saebench_metrics(sae, ev.saebench)
    return out


def evaluate_dir(path: Path, data: BenchData, ev: Evaluation) -> dict:
    """A row for an SAE trained elsewhere: its report card's k, seed and training seconds."""
    from thinksae.sae import read_report_card, resolve_sae_dir

    sae_dir = resolve_sae_dir(path)
    training = read_report_card(sae_dir).get("training", {})
    rec = {"sae_dir": str(sae_dir), "train_s": training.get("wall_time_s"), "peak_rss_mb": None}
    run = re.sub(r"-s\d+$", "", path.name)  # seeds of one setting share a row
    return {"system": run, "label": "given", "k": load_sae(sae_dir).cfg.k,
            "seed": training.get("seed"), **rec,
            "metrics": evaluate_run(rec, data, ev)}


def _int_or_none(text: str) -> int | None:
    return None if text.lower() in ("none", "null", "all") else int(text)


def add_saebench_args(p: argparse.ArgumentParser) -> None:
    """--saebench and its options (defaults: `thinksae eval`'s, from SaebenchConfig)."""
    d = SaebenchConfig()
    p.add_argument("--saebench", action="store_true",
                   help="SAEBench k-sparse probing on the held-out traces; with --model absorption")
    p.add_argument("--probe_ks", default=d.probe_ks, help="latents per probe, comma-separated")
    p.add_argument("--probe_max_traces", type=_int_or_none, default=d.probe_max_traces,
                   help="probe on at most this many held-out traces (none: all)")
    p.add_argument("--probe_window_tokens", type=_int_or_none, default=d.probe_window_tokens,
                   help="tokens per region unit (none: the whole run)")
    p.add_argument("--absorption_words_per_letter", type=_int_or_none,
                   default=d.absorption_words_per_letter, help="absorption words per letter")
    p.add_argument("--absorption_min_letters", type=int, default=d.absorption_min_letters,
                   help="report absorption only when this many letters' probes pass F1 0.6")


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
    p.add_argument("--eval_threads", type=int, default=None,
                   help="torch threads of the measuring process (the model's passes: spliced, "
                        "absorption; default: --threads)")
    p.add_argument("--spliced", action="store_true", help="CE score and KL on think (needs --model)")
    p.add_argument("--spliced_traces", type=int, default=None,
                   help="spliced losses over the first N held-out traces only (default: all)")
    p.add_argument("--model", default=None)
    p.add_argument("--model_dtype", default="auto")
    p.add_argument("--tokenizer", default=None,
                   help="tokenizer for the behaviour probes' sentence ends (default: --model's)")
    p.add_argument("--matryoshka_widths", default=None,
                   help="thinksae-matryoshka_batchtopk's cumulative prefix widths (default: "
                        "latents/32, /8, /2, latents; inner ones below k dropped)")
    add_saebench_args(p)
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


def load_evaluation(args, data: BenchData) -> Evaluation:
    """The model (with --model and --spliced or --saebench) and the SAEBench setup, all checked
    before anything trains."""
    model = tokenizer = hookpoint = None
    if args.model and (args.spliced or args.saebench):
        from thinksae.models import load_model
        from thinksae.store import ActivationStore

        hookpoint = ActivationStore(args.store).hookpoint
        model, tokenizer = load_model(args.model, "cpu", args.model_dtype,
                                      tokenizer=args.tokenizer, progress=False)
    elif args.tokenizer and args.saebench:
        from thinksae.models.tokenizer import load_tokenizer

        tokenizer = load_tokenizer(args.tokenizer)
    setup = prepare_saebench(args, data, model, tokenizer, hookpoint) if args.saebench else None
    return Evaluation(model if args.spliced else None, hookpoint, setup, args.spliced_traces)


def matryoshka_widths(args, system: str, k: int) -> str | None:
    """The prefix widths of a thinksae-matryoshka_batchtopk run (None for other systems)."""
    if system != MATRYOSHKA:
        return None
    return args.matryoshka_widths or default_matryoshka_widths(args.latents, k)


def train_all(args, systems: list[str], data: BenchData, steps: int, ev: Evaluation
              ) -> tuple[list[dict], dict]:
    """Every system × variant × k × seed trained in its own worker and measured; the rows and
    the schedules used."""
    knobs = parse_set(args.set)
    matched = {"lr": args.matched_lr, "warmup": args.matched_warmup, "decay": args.matched_decay}
    rows, schedules = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.work or tmp)
        data_file = str(Path(tmp) / "train.safetensors")
        save_file({"train_x": data.train_x}, data_file)
        for system, variant, k, seed in itertools.product(systems, args.variants, args.k,
                                                          args.seeds):
            name = f"{system}-{variant}-k{k}-s{seed}"
            spec = {"system": system, "variant": variant, "k": k, "seed": seed,
                    "latents": args.latents, "batch_size": args.batch_size, "steps": steps,
                    "matched": matched, "dtype": args.dtype, "threads": args.threads,
                    "data_file": data_file, "data_hash": data.summary["store_hash"],
                    "set": knobs if system.startswith("thinksae") else {},
                    "matryoshka_widths": matryoshka_widths(args, system, k),
                    "out_dir": str(work / name)}
            rec = train_one(spec)
            rec["metrics"] = evaluate_run(rec, data, ev)
            label = variant + (f" {args.label}" if args.label else "")
            rows.append({"system": system, "label": label, "k": k, "seed": seed, **rec})
            schedules[f"{system} {label}"] = rec["schedule"]
            print(f"{name}: think FVU {rec['metrics']['think']['fvu']:.4f} L0 "
                  f"{rec['metrics']['think']['l0']:.1f} ({rec['train_s']:.0f} s)",
                  file=sys.stderr, flush=True)
    return rows, schedules


def notes(args, systems: list[str], rows: list[dict], ev: Evaluation) -> list[str]:
    """Header lines after the run: Matryoshka's widths, matched L0, SAEBench's setup."""
    out = []
    if MATRYOSHKA in systems and not args.saes:
        widths = {k: matryoshka_widths(args, MATRYOSHKA, k) for k in args.k}
        out.append(f"- {MATRYOSHKA} prefix widths (cumulative): " + "; ".join(
            f"k={k}: {w}" for k, w in widths.items()) + (" (given)" if args.matryoshka_widths
                                                         else " (default: latents/32, /8, /2, "
                                                         "latents; inner ones below k dropped)"))
    out += l0_notes(rows)
    if ev.saebench is not None:
        out += saebench_notes(rows, ev.saebench)
    return out


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.worker:
        print(json.dumps(run_worker(json.loads(args.worker))))
        return
    systems = args.systems or all_systems()
    check_systems(systems)
    parse_set(args.set)  # a bad --set refused before the data is read
    torch.set_num_threads(args.eval_threads or args.threads)
    multiple = None if str(args.sink_norm_multiple).lower() == "none" else float(
        args.sink_norm_multiple)
    data = prepare(args.store, args.holdout, multiple, drop_sinks=not args.keep_sinks)
    steps = int(args.epochs * (len(data.train_x) // args.batch_size))
    if MATRYOSHKA in systems and not args.saes:
        for k in args.k:  # a bad nesting refused before anything trains
            sae_class("matryoshka_batchtopk").check_config(SaeConfig(
                num_latents=args.latents, k=k, architecture="matryoshka_batchtopk",
                matryoshka_widths=matryoshka_widths(args, MATRYOSHKA, k)), args.latents)
    ev = load_evaluation(args, data)
    if args.saes:
        rows, schedules, steps = [evaluate_dir(Path(d), data, ev) for d in args.saes], {}, 0
    else:
        rows, schedules = train_all(args, systems, data, steps, ev)
    text = "\n".join([header(args, data, steps, schedules), *notes(args, systems, rows, ev)])
    text += "\n\n" + table(rows, args.spliced, ev.saebench)
    print(text)
    if args.json:
        Path(args.json).write_text(json.dumps({"summary": data.summary, "runs": rows,
                                               "markdown": text}, indent=1))


if __name__ == "__main__":
    main()
