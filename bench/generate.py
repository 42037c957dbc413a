"""Benchmark corpus generation: the HF engine's decode speed against batch size next to the time of
its weight matmuls alone, and the llama.cpp engine on the same prompts, in one run.

HF (float32), first with plain linears, then with the block linears pre-packed for oneDNN (what
`load_model` does for float32 on CPU; the step-time ratio per batch): for each batch size B,
prefill B built-in prompts (cut to --prompt_tokens, left
padded), then time --new_tokens greedy decode steps with the KV cache: tokens/s = B / step time.
"matmul" is one pass of a [B, in] input through every linear layer (q, k, v, o, gate, up, down of
each block and lm_head): what a step cannot go below when it is bound by the weights.
llama.cpp: the quantised GGUF (as it is), P sequences decoded together (--llama_batches), same
prompts and step count; prefill timed apart. Agreement: greedy traces of the first --agree
problems × --agree_tokens tokens (the corpus prompts of the offline demo) from both engines;
how many are identical and where the first difference falls.

    python bench/generate.py                                   # offline GGUF, the default lists
    python bench/generate.py --batches 1,16,48 --new_tokens 16 --llama_prompts 4
    python bench/generate.py --model tiny --batches 1,4        # smoke run, tiny random Qwen2
"""

from __future__ import annotations

import argparse
import inspect
import os
import time
from pathlib import Path

import torch

TINY_TOKENIZER = Path(__file__).resolve().parents[1] / "tests" / "assets" / "r1_tokenizer"


def load(spec: str):
    """(model, tokenizer, gguf path or None) for `offline`, `tiny` or any model spec."""
    if spec == "tiny":
        from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

        tok = AutoTokenizer.from_pretrained(TINY_TOKENIZER)
        torch.manual_seed(0)
        cfg = Qwen2Config(vocab_size=152064, hidden_size=64, intermediate_size=128,
                          num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2)
        return Qwen2ForCausalLM(cfg).eval(), tok, None
    from thinksae.corpus.engines import gguf_file
    from thinksae.models import load_model

    os.environ["THINKSAE_PACKED"] = "0"  # plain linears first; main() packs them for the second arm
    model, tok = load_model(spec, device="cpu", dtype="float32", progress=False)
    gguf = None
    try:
        gguf = gguf_file(spec)
    except Exception:  # not a GGUF: no llama.cpp comparison
        pass
    return model, tok, gguf


def prompts(tok, n: int) -> list[str]:
    from thinksae.chat import THINK_SYSTEM_PROMPT, build_prompt
    from thinksae.corpus import builtin_problems

    problems = builtin_problems()
    return [build_prompt(tok, problems[i % len(problems)].question, THINK_SYSTEM_PROMPT, True)
            for i in range(n)]


def prompt_ids(tok, texts: list[str], cut: int) -> list[list[int]]:
    return [tok(t, add_special_tokens=False)["input_ids"][:cut] for t in texts]


@torch.inference_mode()
def hf_decode(model, rows: list[list[int]], steps: int) -> tuple[float, float]:
    """(prefill seconds, seconds per greedy decode step) for left-padded ``rows``."""
    width = max(map(len, rows))
    ids = torch.zeros((len(rows), width), dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, r in enumerate(rows):
        ids[i, width - len(r):], mask[i, width - len(r):] = torch.tensor(r), 1
    t0 = time.perf_counter()
    out = model(input_ids=ids, attention_mask=mask, use_cache=True, logits_to_keep=1)
    prefill = time.perf_counter() - t0
    # transformers 5 names the KV cache `cache`, 4 `past_key_values`
    name = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
    cache, token = getattr(out, name), out.logits[:, -1].argmax(-1, keepdim=True)
    t0 = time.perf_counter()
    for _ in range(steps):
        mask = torch.cat([mask, torch.ones_like(token)], dim=1)
        out = model(input_ids=token, attention_mask=mask, use_cache=True, **{name: cache})
        cache, token = getattr(out, name), out.logits[:, -1].argmax(-1, keepdim=True)
    return prefill, (time.perf_counter() - t0) / steps


@torch.inference_mode()
def matmul_time(model, batch: int, repeats: int = 2) -> float:
    """Seconds for one [batch, in] pass through every linear layer of the model, plain or packed
    (best of repeats)."""
    from thinksae.models.packed import PackedLinear

    linears = [m for m in model.modules() if isinstance(m, (torch.nn.Linear, PackedLinear))]
    inputs = {m.in_features: torch.randn(batch, m.in_features) for m in linears}
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        for m in linears:
            m(inputs[m.in_features])
        best = min(best, time.perf_counter() - t0)
    return best


def llama_decode(backend, rows: list[list[int]], steps: int, parallel: int) -> tuple[float, float]:
    """(prefill seconds, decode tokens/s) with ``parallel`` sequences decoded together."""
    from thinksae.generation import GenerationConfig

    prefill = decode = 0.0
    tokens = 0
    for start in range(0, len(rows), parallel):
        part = rows[start:start + parallel]
        n_ctx = len(part) * (max(map(len, part)) + steps + 1)
        with backend.session(n_ctx, GenerationConfig(), [0] * len(part)) as s:
            t0 = time.perf_counter()
            token = [s.prefill(i, r) for i, r in enumerate(part)]
            prefill += time.perf_counter() - t0
            pos = [len(r) for r in part]
            seqs = list(range(len(part)))
            t0 = time.perf_counter()
            for _ in range(steps):
                token = s.step(seqs, token, pos)
                pos = [p + 1 for p in pos]
            decode += time.perf_counter() - t0
            tokens += steps * len(part)
    return prefill, tokens / decode


def agreement(model, tok, gguf: Path, n: int, budget: int) -> None:
    """Greedy traces of the first ``n`` demo prompts from HF (batch n) and llama.cpp."""
    from thinksae.corpus.engines import HFEngine
    from thinksae.corpus.engines.llamacpp import LlamaCppEngine
    from thinksae.generation import GenerationConfig

    texts, keys = prompts(tok, n), [str(i) for i in range(n)]
    t0 = time.perf_counter()
    hf = HFEngine(model, tok, GenerationConfig()).generate(texts, keys, budget)
    hf_s = time.perf_counter() - t0
    engine = LlamaCppEngine(gguf, tok, GenerationConfig())
    t0 = time.perf_counter()
    ll = engine.generate(texts, keys, budget)
    ll_s = time.perf_counter() - t0
    engine.close()
    same = sum(a.ids == b.ids for a, b in zip(hf, ll))
    firsts = [next((i for i, (x, y) in enumerate(zip(a.ids, b.ids)) if x != y),
                   min(len(a.ids), len(b.ids))) for a, b in zip(hf, ll) if a.ids != b.ids]
    print(f"\nagreement, greedy, {n} prompts x <= {budget} tokens: {same}/{n} traces identical"
          + (f"; differing ones split at token {sorted(firsts)}" if firsts else ""))
    print(f"  wall: hf (batch {n}) {hf_s:.1f} s, llama.cpp (auto batch) {ll_s:.1f} s")


def main() -> None:
    from thinksae.models.packed import pack_linears

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="offline", help="offline (GGUF), tiny (smoke) or a model spec")
    ap.add_argument("--batches", default="1,8,16,32,64", help="HF batch sizes")
    ap.add_argument("--new_tokens", type=int, default=16, help="decode steps timed per batch")
    ap.add_argument("--prompt_tokens", type=int, default=32, help="prompts cut to this many tokens")
    ap.add_argument("--llama_prompts", type=int, default=4, help="prompts for llama.cpp")
    ap.add_argument("--llama_batches", default="1,4", help="sequences llama.cpp decodes together")
    ap.add_argument("--agree", type=int, default=8, help="prompts for the agreement check (0: none)")
    ap.add_argument("--agree_tokens", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    batches = [int(b) for b in args.batches.split(",")]
    t0 = time.perf_counter()
    model, tok, gguf = load(args.model)
    print(f"model {args.model}: loaded in {time.perf_counter() - t0:.0f} s; {args.threads} threads, "
          f"torch {torch.__version__}, CPU {torch.backends.cpu.get_cpu_capability()}")
    hf_rate, plain_step = {}, {}
    for arm in ("plain", "packed"):
        if arm == "packed":
            t0 = time.perf_counter()
            if not pack_linears(model):
                print("packed: skipped (torch cannot pack linears with oneDNN here)")
                break
            print(f"packed the block linears in {time.perf_counter() - t0:.1f} s")
        print(f"HF float32, {arm} linears, prompts cut to {args.prompt_tokens} tokens, "
              f"{args.new_tokens} decode steps")
        print(f"{'batch':>5} {'prefill s':>9} {'step s':>7} {'tok/s':>7} {'matmul s':>8} "
              f"{'step/matmul':>11} {'plain/packed':>12}")
        for b in batches:
            rows = prompt_ids(tok, prompts(tok, b), args.prompt_tokens)
            prefill, step = hf_decode(model, rows, args.new_tokens)
            mm = matmul_time(model, b)
            hf_rate[b] = max(hf_rate.get(b, 0.0), b / step)
            ratio = f"{plain_step[b] / step:12.2f}" if arm == "packed" else ""
            plain_step.setdefault(b, step)
            print(f"{b:5d} {prefill:9.2f} {step:7.3f} {b / step:7.1f} {mm:8.3f} {step / mm:11.2f}"
                  f" {ratio}")
    if gguf is None:
        print("llama.cpp: skipped (the model is not a GGUF)")
        return
    from thinksae.corpus.engines import installed
    from thinksae.corpus.engines.llamacpp import LlamaCppBackend

    if not installed("llama_cpp"):
        print("llama.cpp: skipped (pip install 'thinksae[llamacpp]')")
        return
    t0 = time.perf_counter()
    backend = LlamaCppBackend(gguf, args.threads)
    print(f"\nllama.cpp {gguf.name}: loaded in {time.perf_counter() - t0:.1f} s, "
          f"{args.llama_prompts} prompts, {args.new_tokens} decode steps")
    rows = prompt_ids(tok, prompts(tok, args.llama_prompts), args.prompt_tokens)
    best_hf = max(hf_rate.values())
    for p in [int(x) for x in args.llama_batches.split(",")]:
        prefill, rate = llama_decode(backend, rows, args.new_tokens, p)
        same = f", HF batch {p}: {rate / hf_rate[p]:.2f}x" if p in hf_rate else ""
        print(f"  {p} together: prefill {prefill:.2f} s, decode {rate:.1f} tok/s "
              f"({rate / best_hf:.2f}x the best HF batch{same})")
    backend.close()
    if args.agree:
        agreement(model, tok, gguf, args.agree, args.agree_tokens)


if __name__ == "__main__":
    main()
