"""Benchmark budget forcing on llama.cpp: the answer pass continued in the thinking's context
(what `LlamaCppEngine` does) against a fresh context that prefills prompt + thinking again (what
it did before), on the same questions, budgets and loaded model, in one run.

Both arms run `generate_traces` (the corpus stage's loop) on the first --questions built-in
problems with the demo's prompts; the wall time of each arm, their ratio, and how many greedy
completions are identical (they should all be: the model sees the same ids either way; only the
KV cache of the thinking is computed once instead of twice).

    python bench/forcing.py                          # offline GGUF, the demo's sizes
    python bench/forcing.py --questions 8 --max_new_tokens 64 --answer_tokens 16
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path


def run_arm(engine, tok, problems, gen, batch: int, answer_tokens: int) -> tuple[float, list]:
    from thinksae.corpus import generate_traces

    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        traces = generate_traces(None, tok, problems, Path(tmp) / "t.jsonl", gen, batch_size=batch,
                                 progress=False, answer_tokens=answer_tokens, engine=engine)
        return time.perf_counter() - t0, traces


def main() -> None:
    from thinksae.chat import THINK_SYSTEM_PROMPT
    from thinksae.corpus import builtin_problems
    from thinksae.corpus.engines import gguf_file
    from thinksae.corpus.engines.llamacpp import LlamaCppBackend, LlamaCppEngine
    from thinksae.generation import GenerationConfig
    from thinksae.models import load_tokenizer

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="offline", help="a GGUF file or `offline`")
    ap.add_argument("--questions", type=int, default=32)
    ap.add_argument("--max_new_tokens", type=int, default=192, help="thinking budget (the demo's)")
    ap.add_argument("--answer_tokens", type=int, default=48, help="answer budget (the demo's)")
    ap.add_argument("--batch", type=int, default=32, help="sequences decoded together")
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()

    class FreshEngine(LlamaCppEngine):
        """The engine as it was: every call in a new context."""

        def _place(self, rows, keys, seeds, budget):
            self._release()
            return super()._place(rows, keys, seeds, budget)

    tok = load_tokenizer(args.model)
    gguf = gguf_file(args.model)
    t0 = time.perf_counter()
    backend = LlamaCppBackend(gguf, args.threads)
    print(f"llama.cpp {gguf.name}: loaded in {time.perf_counter() - t0:.1f} s, {backend.n_threads} threads")
    gen = GenerationConfig(max_new_tokens=args.max_new_tokens, system_prompt=THINK_SYSTEM_PROMPT,
                           think_prefill=True)
    problems = builtin_problems()[:args.questions]
    walls, traces = {}, {}
    for name, cls in (("fresh context", FreshEngine), ("continued", LlamaCppEngine)):
        engine = cls(gguf, tok, gen, backend)
        walls[name], traces[name] = run_arm(engine, tok, problems, gen, args.batch, args.answer_tokens)
        engine._release()
        forced = sum(bool(t.meta.get("forced_answer")) for t in traces[name])
        print(f"  {name:>13}: {walls[name]:7.1f} s  ({forced} of {len(problems)} answers forced)")
    pairs = list(zip(*traces.values()))
    same = sum(a.completion == b.completion for a, b in pairs)
    print(f"continued / fresh: {walls['fresh context'] / walls['continued']:.2f}x faster; "
          f"{same}/{len(problems)} completions identical")
    for a, b in pairs:
        if a.completion != b.completion:
            cut = next(i for i, (x, y) in enumerate(zip(a.completion + "\0", b.completion + "\1")) if x != y)
            close = a.completion.find("</think>")
            where = "in the answer" if 0 <= close < cut else "before </think>"
            print(f"  {a.id}: parts at character {cut} ({where}): {a.completion[cut:cut + 30]!r} vs "
                  f"{b.completion[cut:cut + 30]!r}")
    backend.close()


if __name__ == "__main__":
    main()
