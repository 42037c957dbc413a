"""Generation speed with the live monitor vs without, in one run.

    python bench/monitor.py [--model offline|synthetic|tiny] [--sae DIR] [--hookpoint layers.10]
                            [--tokens 128] [--reps 3] [--features 16] [--num_latents 65536]
                            [--dtype auto] [--device auto]

Measures greedy generation tokens/s of the same prompt under four conditions, interleaved over
``--reps`` rounds (median reported):

  generate   Hugging Face ``model.generate``, no monitor (the reference)
  loop       the monitor (the one decoding API) with no watch-list (no recording)
  watch      the monitor with a ``--features``-feature watch-list and one rule, default value
             topk: ``Sae.encode`` per token, i.e. the full encoder GEMM and top-k (the goal:
             >= 0.95x of ``loop``, the same loop without a watch-list)
  pre        the same with value pre (the watched encoder rows only)

Without ``--sae`` a random SAE of ``--num_latents`` latents (default 65,536: the study's SAE,
k = 32) is used: the cost does not depend on the weights. ``--model synthetic`` is a random
Qwen2 of R1-Distill-Qwen-1.5B's shape (hidden 1536, 28 layers, FFN 8960, untied 151,936-token
head) in float32 (~7 GB) with the test tokenizer; ``--model tiny`` a tiny random Qwen2 (a smoke
test of this script, not a measurement). ``--steps N`` instead times N cached decode steps and N
``Sae.encode`` calls, interleaved (minimum and median): the per-token cost of value topk, robust
to other processes sharing the machine.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

from thinksae.models import dtype_name, load_model
from thinksae.monitor import DoneEvent, Monitor
from thinksae.sae import Sae, SaeConfig

PROMPT = ("A train travels 60 km in 1.5 hours, then 40 km in 30 minutes. What is its average "
          "speed over the whole trip in km per hour?")


def tiny_model():
    from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

    tests = Path(__file__).resolve().parent.parent / "tests"
    tok = AutoTokenizer.from_pretrained(tests / "assets" / "r1_tokenizer")
    torch.manual_seed(0)
    cfg = Qwen2Config(vocab_size=151936, hidden_size=64, intermediate_size=128,
                      num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
                      tie_word_embeddings=True)
    return Qwen2ForCausalLM(cfg).eval(), tok


def synthetic_model():
    """Random weights in R1-Distill-Qwen-1.5B's shapes, float32 (init skipped, then filled)."""
    from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

    try:  # transformers >= 5
        from transformers.initialization import no_init_weights
    except ImportError:
        from transformers.modeling_utils import no_init_weights
    tests = Path(__file__).resolve().parent.parent / "tests"
    tok = AutoTokenizer.from_pretrained(tests / "assets" / "r1_tokenizer")
    cfg = Qwen2Config(vocab_size=151936, hidden_size=1536, intermediate_size=8960,
                      num_hidden_layers=28, num_attention_heads=12, num_key_value_heads=2,
                      max_position_embeddings=4096, rope_theta=10000.0,
                      tie_word_embeddings=False, torch_dtype=torch.float32)
    with no_init_weights():
        model = Qwen2ForCausalLM(cfg)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.fill_(1.0)
            else:
                p.normal_(0, 0.02, generator=gen)
    return model.eval(), tok


def get_sae(args, d_model: int, device) -> Sae:
    if args.sae:
        from thinksae.sae import load_sae

        return load_sae(args.sae, hookpoint=args.hookpoint, dtype=torch.float32).to(device)
    torch.manual_seed(0)
    return Sae(d_model, SaeConfig(num_latents=args.num_latents, k=32), device=device)


def sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_generate(model, tok, prompt_ids, n: int, device) -> int:
    ids = torch.tensor([prompt_ids], device=device)
    out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=n,
                         do_sample=False, pad_token_id=tok.pad_token_id or tok.eos_token_id)
    return out.shape[1] - ids.shape[1]


def run_monitor(mon: Monitor, prompt: str, n: int) -> int:
    done = None
    for event in mon.watch(prompt, max_new_tokens=n):
        if isinstance(event, DoneEvent):
            done = event
    return done.tokens


def component_times(model, sae, prompt_ids, device, n: int) -> dict[str, list[float]]:
    """Seconds of one cached decode step (batch 1) and of one ``Sae.encode`` of its hookpoint
    row plus the gather at 16 latents (what value topk adds per token), interleaved ``n`` times:
    robust to other processes through the minimum."""
    from transformers import DynamicCache

    from thinksae.generation.prefill import cache_argument
    from thinksae.monitor.engine import WatchList

    watch = WatchList(sae, list(range(16)))
    x = torch.randn(1, sae.d_in, device=device)
    out: dict[str, list[float]] = {"step": [], "encode": []}
    with torch.inference_mode():
        cache = {cache_argument(model): DynamicCache()}
        model(input_ids=torch.tensor([prompt_ids], device=device), **cache, use_cache=True,
              logits_to_keep=1)
        token = torch.tensor([[prompt_ids[-1]]], device=device)
        for _ in range(n):
            sync(device)
            t0 = time.perf_counter()
            model(input_ids=token, **cache, use_cache=True, logits_to_keep=1)
            sync(device)
            t1 = time.perf_counter()
            watch.values(x)
            sync(device)
            out["step"].append(t1 - t0)
            out["encode"].append(time.perf_counter() - t1)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="offline")
    p.add_argument("--sae", default=None)
    p.add_argument("--hookpoint", default="layers.10")
    p.add_argument("--tokens", type=int, default=128)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--features", type=int, default=16)
    p.add_argument("--num_latents", type=int, default=65536, help="random SAE's width")
    p.add_argument("--dtype", default="auto")
    p.add_argument("--device", default="auto")
    p.add_argument("--json", default=None, help="also write the results here")
    p.add_argument("--steps", type=int, default=0,
                   help="only time N decode steps vs N Sae.encode calls (min and median)")
    args = p.parse_args(argv)

    if args.model == "tiny":
        model, tok = tiny_model()
        args.hookpoint = "layers.1"
    elif args.model == "synthetic":
        model, tok = synthetic_model()
    else:
        model, tok = load_model(args.model, args.device, args.dtype)
    device = next(model.parameters()).device
    d_model = model.config.hidden_size
    sae = get_sae(args, d_model, device)
    watch = torch.randperm(sae.num_latents, generator=torch.Generator().manual_seed(0))
    watch = watch[:args.features].tolist()
    rule = [{"name": "bench", "feature": watch[0], "threshold": 1e9}]  # evaluated, never fires
    common = dict(max_new_tokens=args.tokens)
    monitors = {
        "loop": Monitor(model, tok, sae, args.hookpoint, **common),
        "watch": Monitor(model, tok, sae, args.hookpoint, watch, rule, **common),
        "pre": Monitor(model, tok, sae, args.hookpoint, watch, rule, value="pre", **common),
    }
    prompt_ids = monitors["loop"].prompt_ids(PROMPT)
    if args.steps:
        t = component_times(model, sae, prompt_ids, device, args.steps)
        lo = {k: min(v) for k, v in t.items()}
        mid = {k: statistics.median(v) for k, v in t.items()}
        print(f"{args.model} on {device}: SAE {sae.num_latents} latents, {args.steps} steps")
        print(f"  decode step {lo['step']:.3f} s min, {mid['step']:.3f} s median; Sae.encode "
              f"{lo['encode'] * 1e3:.1f} ms min, {mid['encode'] * 1e3:.1f} ms median")
        print(f"  encode / step = {lo['encode'] / lo['step']:.3f} (min), "
              f"{mid['encode'] / mid['step']:.3f} (median)")
        if args.json:
            Path(args.json).write_text(json.dumps({"model": args.model, **t}, indent=2) + "\n")
        return 0
    conditions = {"generate": lambda: run_generate(model, tok, prompt_ids, args.tokens, device),
                  **{k: (lambda m=m: run_monitor(m, PROMPT, args.tokens))
                     for k, m in monitors.items()}}
    for fn in conditions.values():  # warm-up
        fn()
    rates: dict[str, list[float]] = {k: [] for k in conditions}
    counts: dict[str, int] = {}
    for _ in range(args.reps):
        for name, fn in conditions.items():
            sync(device)
            t0 = time.perf_counter()
            counts[name] = fn()
            sync(device)
            rates[name].append(counts[name] / (time.perf_counter() - t0))
    med = {k: statistics.median(v) for k, v in rates.items()}
    result = {
        "model": args.model, "device": str(device), "dtype": dtype_name(model.dtype),
        "hookpoint": args.hookpoint, "num_latents": sae.num_latents, "k": sae.cfg.k,
        "watched": args.features, "tokens": counts, "reps": args.reps,
        "tokens_per_s": med,
        "ratio_watch_vs_loop": med["watch"] / med["loop"],
        "ratio_pre_vs_loop": med["pre"] / med["loop"],
        "ratio_watch_vs_generate": med["watch"] / med["generate"],
        "ratio_loop_vs_generate": med["loop"] / med["generate"],
    }
    print(f"{args.model} on {device} ({result['dtype']}), {args.hookpoint}, SAE "
          f"{sae.num_latents} latents, {args.features} watched, {args.reps} reps")
    for name in conditions:
        print(f"  {name:9s} {med[name]:8.1f} tok/s  ({counts[name]} tokens; "
              f"{', '.join(f'{r:.1f}' for r in rates[name])})")
    print(f"  watch / loop     = {result['ratio_watch_vs_loop']:.3f}x (value topk; goal >= 0.95x)")
    print(f"  pre   / loop     = {result['ratio_pre_vs_loop']:.3f}x (value pre)")
    print(f"  watch / generate = {result['ratio_watch_vs_generate']:.3f}x")
    print(f"  loop  / generate = {result['ratio_loop_vs_generate']:.3f}x")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
