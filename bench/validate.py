"""Validation cost: attribution (one forward + backward with the SAE spliced in) over N tokens vs
a plain forward over the same tokens (goal ≤ 3x), and the wall time of validating F features.

    python bench/validate.py                       # tiny random Qwen2 + R1 tokenizer (tests/)
    python bench/validate.py --model offline       # the offline GGUF (slow on CPU)

Prints ratios measured in one run; the numbers are for sizing only.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))


def _model(spec: str):
    if spec == "tiny":
        from conftest import r1_tokenizer, tiny_qwen2

        return tiny_qwen2(), r1_tokenizer()
    from thinksae.models import load_model

    return load_model(spec, "auto", "float32", progress=False)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="tiny")
    p.add_argument("--hookpoint", default="layers.1")
    p.add_argument("--tokens", type=int, default=512, help="tokens per sequence")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--latents", type=int, default=4096)
    p.add_argument("--features", type=int, default=50)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()

    from thinksae.interventions.spec import Intervention
    from thinksae.sae import Sae, SaeConfig
    from thinksae.validate.attribution import attribution
    from thinksae.validate.causal import intervene, prepare

    model, tok = _model(args.model)
    d = model.config.hidden_size
    sae = Sae(d, SaeConfig(num_latents=args.latents, k=32)).to(next(model.parameters()).device)
    torch.manual_seed(0)
    from thinksae.evaluate.sources import Doc

    ids = torch.randint(0, 30000, (args.batch, args.tokens))
    ids[:, 1::7] = 13824  # " Wait": target positions
    docs = [Doc(r, torch.zeros_like(r), torch.zeros_like(r)) for r in ids]
    batches = prepare(model, docs, args.batch, 0, [13824])

    def best(fn):
        times = []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        return min(times)

    with torch.no_grad():
        fwd = best(lambda: [model(input_ids=b.ids, attention_mask=b.mask, use_cache=False)
                            for b in batches])  # with the logits, as a plain forward has
    att = best(lambda: attribution(model, sae, args.hookpoint, batches, "logprob"))
    n = args.batch * args.tokens
    print(f"{n} tokens: plain forward {fwd:.3f} s, attribution {att:.3f} s, ratio {att / fwd:.2f}x "
          f"(goal <= 3x)")
    t0 = time.perf_counter()
    for f in range(args.features):
        intervene(model, sae, args.hookpoint, batches, Intervention(f, "ablate"), "logprob")
        intervene(model, sae, args.hookpoint, batches, Intervention(f, "clamp", 2.0), "logprob")
    print(f"causal tests (ablate + clamp) of {args.features} features over {n} tokens: "
          f"{time.perf_counter() - t0:.1f} s")


if __name__ == "__main__":
    main()
