"""Generation speed with the live monitor vs without, in one run.

    python bench/monitor.py [--model offline] [--sae DIR] [--hookpoint layers.10] [--tokens 128]
                            [--reps 3] [--features 16] [--dtype auto] [--device auto]

Measures greedy generation tokens/s of the same prompt under four conditions, interleaved over
``--reps`` rounds (median reported):

  generate   Hugging Face ``model.generate``, no monitor (the reference)
  loop       the monitor's own token loop with nothing watched (no hook)
  watch      the monitor with a ``--features``-feature watch-list and one rule (the goal:
             >= 0.95x of ``generate``)
  full       the same plus the full TopK encode per token

Without ``--sae`` a random SAE of the real width (d_model x 32 latents, k = 32) is used: the cost
does not depend on the weights. ``--model tiny`` runs a tiny random Qwen2 with the test
tokenizer (a smoke test of this script, not a measurement).
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


def get_sae(args, d_model: int, device) -> Sae:
    if args.sae:
        from thinksae.sae import load_sae

        return load_sae(args.sae, hookpoint=args.hookpoint, dtype=torch.float32).to(device)
    torch.manual_seed(0)
    return Sae(d_model, SaeConfig(expansion_factor=32, k=32), device=device)


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


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="offline")
    p.add_argument("--sae", default=None)
    p.add_argument("--hookpoint", default="layers.10")
    p.add_argument("--tokens", type=int, default=128)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--features", type=int, default=16)
    p.add_argument("--dtype", default="auto")
    p.add_argument("--device", default="auto")
    p.add_argument("--json", default=None, help="also write the results here")
    args = p.parse_args(argv)

    if args.model == "tiny":
        model, tok = tiny_model()
        args.hookpoint = "layers.1"
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
        "full": Monitor(model, tok, sae, args.hookpoint, watch, rule, full_encode=True, **common),
    }
    prompt_ids = monitors["loop"].prompt_ids(PROMPT)
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
        "ratio_watch_vs_generate": med["watch"] / med["generate"],
        "ratio_watch_vs_loop": med["watch"] / med["loop"],
        "ratio_full_vs_generate": med["full"] / med["generate"],
        "ratio_loop_vs_generate": med["loop"] / med["generate"],
    }
    print(f"{args.model} on {device} ({result['dtype']}), {args.hookpoint}, SAE "
          f"{sae.num_latents} latents, {args.features} watched, {args.reps} reps")
    for name in conditions:
        print(f"  {name:9s} {med[name]:8.1f} tok/s  ({counts[name]} tokens; "
              f"{', '.join(f'{r:.1f}' for r in rates[name])})")
    print(f"  watch / generate = {result['ratio_watch_vs_generate']:.3f}x (goal >= 0.95x)")
    print(f"  watch / loop     = {result['ratio_watch_vs_loop']:.3f}x")
    print(f"  full  / generate = {result['ratio_full_vs_generate']:.3f}x")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
