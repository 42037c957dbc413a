"""Auto-interpretation cost: seconds per feature to explain and to score, and model forwards per
feature, for `thinksae explain` on an analysis.

    python bench/explain.py [--analysis DIR --model offline] [--features 20] [--max_new_tokens 64]
                            [--n_score 20] [--batch_size 8] [--threads 2] [--no_prefix_cache]

Without --analysis a tiny setup is built in a temporary directory (a random 4-layer Qwen2 with the
real R1 tokenizer, the test corpus, a harvested store, a random SAE, an analysis) and the tiny
model is both explainer (real greedy generation) and scorer; `--model offline` has the offline GGUF
do both instead (on the tiny setup, or on --analysis). Printed: the timing of
ExplainResult (explain and score seconds per feature, explainer decode steps, scorer forwards per
feature) and the projected wall time for 20 features.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

from thinksae.sae.formats import save_sparsify

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))


def tiny_analysis(root: Path):
    """(analysis dir, model, tokenizer) of a tiny setup built under ``root``."""
    from conftest import make_traces, r1_tokenizer, tiny_qwen2

    from thinksae.features import AnalyzeConfig, analyze
    from thinksae.sae import Sae, SaeConfig
    from thinksae.store import HarvestConfig, harvest

    tok, model = r1_tokenizer(), tiny_qwen2()
    corpus = root / "traces.jsonl"
    corpus.write_text("".join(json.dumps(t) + "\n" for t in make_traces(tok)))
    (store,) = harvest(HarvestConfig(model="tiny", corpus=str(corpus), hookpoint="layers.1",
                                     out=str(root / "store"), device="cpu", dtype="float32",
                                     progress=False), model, tok)
    torch.manual_seed(0)
    save_sparsify(Sae(64, SaeConfig(num_latents=64, k=4)), root / "sae" / "layers.1")
    out = analyze(AnalyzeConfig(sae=str(root / "sae"), store=str(store), out=str(root / "analysis"),
                                top_n=10, window=8, progress=False, device="cpu", dashboard=False),
                  model=model, tokenizer=tok)
    return out, model, tok


def _f(x) -> str:
    return "–" if x is None else f"{x:.2f}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--analysis", help="an analysis directory (default: build a tiny one)")
    p.add_argument("--model", default=None, help="explainer and scorer model spec (default: tiny, "
                   "or offline with --analysis)")
    p.add_argument("--features", type=int, default=20)
    p.add_argument("--by", default="fires")
    p.add_argument("--max_new_tokens", type=int, default=64)
    p.add_argument("--n_score", type=int, default=20)
    p.add_argument("--batch_size", type=int, default=8)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--no_prefix_cache", action="store_true")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    from thinksae.explain import ExplainConfig, explain

    with tempfile.TemporaryDirectory() as tmp:
        if args.analysis:
            analysis, model, tok = Path(args.analysis), None, None
        else:
            analysis, model, tok = tiny_analysis(Path(tmp))
        spec = args.model or ("offline" if args.analysis else "tiny")
        if spec != "tiny":  # load the named model (the tiny setup's text is just text to it)
            model = tok = None
        cfg = ExplainConfig(analysis=str(analysis), top=args.features, by=args.by, min_fires=1,
                            explainer=spec, max_new_tokens=args.max_new_tokens,
                            n_score=args.n_score, batch_size=args.batch_size,
                            prefix_cache=not args.no_prefix_cache, progress=False, device="cpu",
                            dtype="float32")
        t0 = time.perf_counter()
        res = explain(cfg, model, tok)
        wall = time.perf_counter() - t0
    t = res.timing
    n = t["features"]
    print(f"explainer {spec}, {n} features, {args.threads} threads, n_score {args.n_score}, "
          f"max_new_tokens {args.max_new_tokens}, batch {args.batch_size}, "
          f"prefix cache {not args.no_prefix_cache}")
    print(f"explain  {t['explain_s_per_feature']:.2f} s/feature  "
          f"(decode steps {t['explainer_decode_steps']}, batched)")
    print(f"score    {t['score_s_per_feature']:.2f} s/feature  (held-out draw {t['heldout_s']:.1f} s; "
          f"{t['scorer_forwards_per_feature']:.0f} scorer forwards/feature, LLM + baseline)")
    for r in res.rows:
        scores = "  ".join(f"{src} det {_f(r.get(src + '_detection_auroc'))} fuzz "
                           f"{_f(r.get(src + '_fuzzing_auroc'))}" for src in ("llm", "baseline"))
        print(f"  feature {r['feature']}: {r['explanation']!r}  AUROC {scores}")
    print(f"load     {t['load_s']:.1f} s (models, not in the per-feature figures)")
    print(f"wall     {wall:.1f} s in all (model load included); 20 features ≈ "
          f"{20 * (t['explain_s_per_feature'] + t['score_s_per_feature']):.0f} s + load")


if __name__ == "__main__":
    main()
