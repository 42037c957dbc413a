"""Benchmark the model passes that steering and splicing share against running every pass whole,
on the same model, SAE and inputs, in one run.

Steering (`generate_rows`, the steer stage's loop): the demo's sweep shape — --questions built-in
problems × (baseline + settings x1, 0, 2, 10 on one feature: identity, ablation, clamps), --new_tokens
greedy tokens, `--start prompt`, KL on. "shared": the prompt positions before the first steered one
prefilled once per question, and no KL passes for rows the steering never changed (what
`generate_rows` does); "whole": every row prefilled and both KL passes for every steered row (what
it did before). Prints both times, the ratio, and whether tokens and KL agree.

Splicing (`spliced_batch`, the splice stage's loop): --splice_rows texts of --splice_tokens tokens;
"resumed": each replacement runs only the blocks above the hookpoint; "whole": full passes.

    python bench/passes.py                          # offline GGUF, float32, a random SAE
    python bench/passes.py --sae runs/offline-demo/sae/layers.10 --feature 123
    python bench/passes.py --model tiny --questions 2 --new_tokens 4 --splice_tokens 16
"""

from __future__ import annotations

import argparse
import importlib
import time

import torch
from generate import load  # bench/generate.py: offline, tiny or any model spec


def steering_arms(model, tok, sae, hookpoint, feature, questions, new_tokens) -> None:
    import thinksae.generation.decode as generation_module
    from thinksae.chat import THINK_SYSTEM_PROMPT, ThinkMarkers, build_prompt, stop_ids
    from thinksae.corpus import builtin_problems
    from thinksae.generation import GenerationConfig
    from thinksae.generation.batches import plan_groups, plan_rows, prompt_lengths
    from thinksae.interventions import Intervention, Steerer, Window

    problems = builtin_problems()[:questions]
    prompts = [build_prompt(tok, p.question, THINK_SYSTEM_PROMPT, True) for p in problems]
    specs = [[]] + [[Intervention(feature, kind, value)] for kind, value in
                    (("scale", 1.0), ("clamp", 0.0), ("clamp", 2.0), ("clamp", 10.0))]
    lengths = prompt_lengths(tok, prompts)
    groups = plan_groups(lengths, max(1, 48 // len(specs)))
    batches = plan_rows(groups, list(range(len(specs))), 48, lengths)
    markers = ThinkMarkers.from_tokenizer(tok, stop_ids(model, tok), sentences=False)
    dec = generation_module.Decoding(model, tok, sae, hookpoint, Window("prompt", "none"), markers)
    args = dict(dec=dec, prompts=prompts, ids=[p.id for p in problems], batches=batches,
                generation=GenerationConfig(max_new_tokens=new_tokens), specs=specs)
    t0 = time.perf_counter()
    shared = generation_module.generate_rows(**args)
    shared_s = time.perf_counter() - t0
    real_length, real_changed = generation_module.unsteered_length, Steerer.changed
    generation_module.unsteered_length = lambda *a: 0
    Steerer.changed = lambda self, row: True
    try:
        t0 = time.perf_counter()
        whole = generation_module.generate_rows(**args)
        whole_s = time.perf_counter() - t0
    finally:
        generation_module.unsteered_length, Steerer.changed = real_length, real_changed
    same, kl_diff = 0, 0.0
    for s in range(len(specs)):
        for p in range(len(prompts)):
            (g1, r1), (g2, r2) = shared[s][p], whole[s][p]
            same += bool(torch.equal(g1.ids[r1], g2.ids[r2]))
            if g1.kl is not None and s:
                a, b = g1.kl[r1], g2.kl[r2]
                both = ~a.isnan() & ~b.isnan()
                if both.any():
                    kl_diff = max(kl_diff, float((a[both] - b[both]).abs().max()))
    rows = len(specs) * len(prompts)
    print(f"steering, {len(prompts)} questions x {len(specs)} settings, {new_tokens} tokens: "
          f"shared {shared_s:.1f} s, whole {whole_s:.1f} s, {whole_s / shared_s:.2f}x; "
          f"{same}/{rows} rows token-identical, max |KL difference| {kl_diff:.2e}", flush=True)


@torch.inference_mode()
def splice_arms(model, sae, hookpoint, rows, tokens) -> None:
    from thinksae.evaluate import spliced_batch

    splice_module = importlib.import_module("thinksae.models.splice")
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1000, 20000, (rows, tokens), generator=g)
    mask = torch.ones_like(ids)
    mean = torch.zeros(sae.d_in)
    spliced_batch(model, hookpoint, sae, ids[:, :8], mask[:, :8])  # warm-up
    t0 = time.perf_counter()
    resumed = spliced_batch(model, hookpoint, sae, ids, mask, mean=mean)
    resumed_s = time.perf_counter() - t0
    kept = splice_module.RESUMABLE_TYPES
    splice_module.RESUMABLE_TYPES = frozenset()
    try:
        t0 = time.perf_counter()
        whole = spliced_batch(model, hookpoint, sae, ids, mask, mean=mean)
        whole_s = time.perf_counter() - t0
    finally:
        splice_module.RESUMABLE_TYPES = kept
    equal = all(torch.equal(resumed.losses[k], whole.losses[k]) for k in whole.losses)
    print(f"splice, {rows} x {tokens} tokens at {hookpoint}: resumed {resumed_s:.1f} s, whole "
          f"{whole_s:.1f} s, {whole_s / resumed_s:.2f}x; losses bit for bit equal: {equal}",
          flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="offline", help="`offline`, `tiny` or a model spec")
    ap.add_argument("--sae", default=None, help="an SAE directory (default: a random TopK SAE)")
    ap.add_argument("--hookpoint", default="layers.10")
    ap.add_argument("--feature", type=int, default=0)
    ap.add_argument("--questions", type=int, default=4)
    ap.add_argument("--new_tokens", type=int, default=48)
    ap.add_argument("--splice_rows", type=int, default=4)
    ap.add_argument("--splice_tokens", type=int, default=256)
    ap.add_argument("--threads", type=int, default=None)
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    model, tok, _ = load(a.model)
    if a.model == "tiny" and a.hookpoint == "layers.10":
        a.hookpoint = "layers.0"
    if a.sae:
        from thinksae.sae.bound import SaeAtHookpoint

        bound = SaeAtHookpoint.find(a.sae, a.hookpoint)
        sae, a.hookpoint = bound.load(), bound.hookpoint
    else:
        from thinksae.sae import Sae, SaeConfig

        torch.manual_seed(0)
        sae = Sae(model.config.hidden_size, SaeConfig(num_latents=4096, k=32))
    print(f"{a.model}, {torch.get_num_threads()} threads", flush=True)
    steering_arms(model, tok, sae, a.hookpoint, a.feature, a.questions, a.new_tokens)
    splice_arms(model, sae, a.hookpoint, a.splice_rows, a.splice_tokens)


if __name__ == "__main__":
    main()
