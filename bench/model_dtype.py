"""Benchmark the model's dtype on CPU: bfloat16 (what `dtype: auto` picks where the CPU has fast
bf16) against float32, for the offline GGUF model or any model spec, in one run.

transformers warns that a GGUF checkpoint "is fastest in float32"; this measures it. Each dtype
loads in its own child process (so its peak memory is its own) and times, after one warm-up, a
forward pass over a fixed batch (what harvest, eval and splice do) and greedy generation of a
fixed number of tokens (what corpus, steer and monitor do). Prints seconds, peak RSS and the
float32 / bfloat16 ratios.

    python bench/model_dtype.py                       # offline GGUF (`thinksae models fetch-offline`)
    python bench/model_dtype.py --model path/to/model --batch 8 --seq 512
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import resource
import time


def measure(model_spec: str, dtype: str, batch: int, seq: int, new_tokens: int,
            threads: int) -> dict:
    import torch

    from thinksae.models import load_model

    torch.set_num_threads(threads)
    t0 = time.perf_counter()
    model, tok = load_model(model_spec, device="cpu", dtype=dtype, progress=False)
    load_s = time.perf_counter() - t0
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(1000, 20000, (batch, seq), generator=gen)
    prompt = tok("Compute 17 * 23 step by step.", return_tensors="pt").input_ids
    with torch.no_grad():
        model(ids[:, :16])
        model.generate(prompt, max_new_tokens=2, do_sample=False, pad_token_id=tok.pad_token_id)
        t0 = time.perf_counter()
        model(ids)
        forward_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        model.generate(prompt, max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                       do_sample=False, pad_token_id=tok.pad_token_id)
        generate_s = time.perf_counter() - t0
    rss_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6  # KiB on Linux
    return {"load_s": load_s, "forward_s": forward_s, "generate_s": generate_s, "rss_gb": rss_gb}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="offline")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--new_tokens", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    results = {}
    ctx = mp.get_context("spawn")
    for dtype in ("bfloat16", "float32"):
        with ctx.Pool(1) as pool:
            results[dtype] = pool.apply(measure, (args.model, dtype, args.batch, args.seq,
                                                  args.new_tokens, args.threads))
    print(f"model {args.model}, forward {args.batch}x{args.seq} tokens, generate "
          f"{args.new_tokens} tokens (batch 1), {args.threads} threads")
    for dtype, r in results.items():
        print(f"{dtype:9s} load {r['load_s']:6.1f} s  forward {r['forward_s']:6.2f} s  generate "
              f"{r['generate_s']:6.2f} s ({args.new_tokens / r['generate_s']:.1f} tok/s)  "
              f"peak RSS {r['rss_gb']:.2f} GB")
    bf, fp = results["bfloat16"], results["float32"]
    print(f"float32 / bfloat16: forward {fp['forward_s'] / bf['forward_s']:.2f}x, generate "
          f"{fp['generate_s'] / bf['generate_s']:.2f}x, peak RSS {fp['rss_gb'] / bf['rss_gb']:.2f}x")


if __name__ == "__main__":
    main()
