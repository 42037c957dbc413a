"""Harvest throughput vs a bare truncated forward and a full forward, in one run.

    python bench/harvest.py [--model offline] [--dtype auto] [--batch 8] [--seq 256] [--batches 4]

Prints tokens/s of (a) `thinksae.store.harvest` end to end (tokenise, segment, forward with
early stop, write shards), (b) a bare forward of the decoder cut after the hookpoint's block, and
(c) a full Hugging Face forward with `output_hidden_states=True`, all on the same traces, the same
dtype and batch shape, and the ratios a/b and a/c.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

from thinksae.corpus import Trace, builtin_problems, tokenize_trace, write_traces
from thinksae.models import dtype_name, load_model
from thinksae.store import ActivationStore, HarvestConfig, harvest


def make_traces(tokenizer, n: int, seq: int) -> list[Trace]:
    """``n`` traces of at least ``seq`` tokens built from the built-in problems."""
    problems = builtin_problems()
    traces = []
    for i in range(n):
        p = problems[i % len(problems)]
        prompt = tokenizer.apply_chat_template(
            [{"role": "user", "content": p.question}], add_generation_prompt=True, tokenize=False)
        body = " ".join(q.question for q in problems[i : i + 12])
        completion = f"<think>\nOkay. {body} Wait, let me check.\n</think>\n\n{p.answer}"
        traces.append(Trace(id=f"b{i}", prompt=prompt, completion=completion))
        assert len(tokenize_trace(tokenizer, traces[-1]).input_ids) >= seq, "traces too short"
    return traces


def median_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="offline")
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--layer", type=int, default=10)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--batches", type=int, default=4, help="batches per timed pass")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    torch.manual_seed(0)

    t0 = time.perf_counter()
    model, tok = load_model(args.model, device="cpu", dtype=args.dtype)
    print(f"model {args.model} loaded in {time.perf_counter() - t0:.1f} s, "
          f"dtype {dtype_name(model.dtype)}, threads {torch.get_num_threads()}")
    n_docs = args.batch * args.batches
    traces = make_traces(tok, n_docs, args.seq)
    ids = torch.tensor([tokenize_trace(tok, t, max_length=args.seq).input_ids for t in traces])
    n_tokens = ids.numel()

    with tempfile.TemporaryDirectory() as tmp:
        corpus = Path(tmp) / "traces.jsonl"
        write_traces(traces, corpus)
        runs = iter(range(10**6))

        def run_harvest():
            cfg = HarvestConfig(model=args.model, corpus=str(corpus), out=f"{tmp}/s{next(runs)}",
                                hookpoint=f"layers.{args.layer}", max_length=args.seq,
                                batch_size=args.batch, docs_per_shard=args.batch,
                                progress=False)
            (path,) = harvest(cfg, model, tok)
            assert ActivationStore(path).num_tokens == n_tokens

        base = model.model
        layers = base.layers

        @torch.inference_mode()
        def run_truncated():
            base.layers = nn.ModuleList(layers[: args.layer + 1])
            try:
                for b in ids.split(args.batch):
                    base(input_ids=b, use_cache=False)
            finally:
                base.layers = layers

        @torch.inference_mode()
        def run_full():
            for b in ids.split(args.batch):
                model(input_ids=b, use_cache=False, output_hidden_states=True)

        run_truncated()  # warm-up
        timings = {"harvest": median_time(run_harvest, args.repeats),
                   "truncated forward": median_time(run_truncated, args.repeats),
                   "full forward (hidden states)": median_time(run_full, args.repeats)}
        size = sum(f.stat().st_size for f in (Path(tmp) / "s0").rglob("*") if f.is_file())

    print(f"\n{n_docs} docs x {args.seq} tokens = {n_tokens} tokens per pass, "
          f"median of {args.repeats}")
    print(f"{'method':32s} {'s/pass':>8s} {'tok/s':>8s}")
    for name, t in timings.items():
        print(f"{name:32s} {t:8.2f} {n_tokens / t:8.1f}")
    h = timings["harvest"]
    print(f"\nharvest / truncated forward (speed): {timings['truncated forward'] / h:.3f}x")
    print(f"harvest / full forward (speed):      {timings['full forward (hidden states)'] / h:.3f}x")
    print(f"store size for {n_tokens} tokens: {size / 1e6:.1f} MB "
          f"-> {size / n_tokens * 1e5 / 1e6:.0f} MB per 100k tokens")


if __name__ == "__main__":
    main()
