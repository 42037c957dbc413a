"""Feature analysis: peak memory at two corpus sizes (flat is the goal) and throughput vs encoding.

    python bench/analyze.py [--tokens 10000,100000] [--d 1536] [--latents 8192] [--k 32]
                            [--device auto] [--threads 0] [--tokenizer tests/assets/r1_tokenizer]

For each size a synthetic activation store (random activations, real R1 token ids of reasoning
text with prompt/think/answer labels) is written, then a fresh process runs `thinksae analyze`
on it with a random SAE (no logit lens, no dashboard) and reports its peak RSS and tokens/s,
followed by an SAE-encode-only pass over the same store (same chunks, same device) in the same
process. Printed: one line per size and the RSS ratio largest/smallest.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from thinksae.sae.formats import save_sparsify

ROOT = Path(__file__).resolve().parents[1]
TEXT = ("Okay, so I need to find the total. Wait, maybe I should check again. Hmm, let me think: "
        "3 times 4 is 12. But another way: alternatively add 4 three times. Therefore 12. "
        "However, perhaps the question means something else.\n\n")


def build_store(path: Path, tokens: int, d: int, tokenizer_spec: str, per_shard: int = 16384) -> None:
    """A complete store of ``tokens`` random bf16 activations in harvest's layout."""
    from transformers import AutoTokenizer

    from thinksae import atomic
    from thinksae.corpus import behaviour_names
    from thinksae.store import tokenizer_hash
    from thinksae.store.shard_parts import FORMAT, MANIFEST
    from thinksae.store.shards import write_shard

    tok = AutoTokenizer.from_pretrained(tokenizer_spec)
    doc = tok(TEXT * 4, add_special_tokens=False).input_ids
    doc = [tok.bos_token_id, *doc, tok.eos_token_id]
    g = torch.Generator().manual_seed(0)
    shards, done, first_doc = [], 0, 0
    while done < tokens:
        n = min(per_shard, tokens - done)
        ids = torch.tensor([doc[(done + i) % len(doc)] for i in range(n)], dtype=torch.int32)
        pos = torch.tensor([(done + i) % len(doc) for i in range(n)], dtype=torch.int32)
        docs = torch.tensor([(done + i) // len(doc) for i in range(n)], dtype=torch.int32)
        regions = torch.where(pos < 30, 0, torch.where(pos > len(doc) - 20, 2, 1)).to(torch.uint8)
        name = f"shard-{len(shards):05d}.safetensors"
        write_shard(path / name, {
            "activations": torch.randn((n, d), generator=g).to(torch.bfloat16),
            "token_ids": ids, "regions": regions, "behaviours": torch.zeros(n, dtype=torch.uint8),
            "doc_index": docs, "positions": pos})
        shards.append({"file": name, "num_tokens": n, "first_doc": first_doc,
                       "num_docs": int(docs[-1]) - int(docs[0]) + 1})
        first_doc, done = int(docs[-1]), done + n
    atomic.write_json(path / MANIFEST, {
        "format": FORMAT, "model": "bench", "hookpoint": "layers.10", "d_in": d,
        "tokenizer_hash": tokenizer_hash(tok), "dtype": "bfloat16", "num_tokens": tokens,
        "shards": shards, "complete": True, "regions": ["prompt", "think", "answer", "special"],
        "behaviours": behaviour_names()})


def child(args) -> None:
    """Analyse one store; print a JSON line with peak RSS and throughputs."""
    from thinksae.features import AnalyzeConfig, analyze
    from thinksae.features.sources import store_chunks
    from thinksae.models import resolve_device
    from thinksae.sae import Sae, SaeConfig, load_sae
    from thinksae.store import ActivationStore

    store = Path(args.store)
    device = resolve_device(args.device)
    sae_dir = store.parent / "sae" / "layers.10"
    if not sae_dir.exists():
        torch.manual_seed(0)
        save_sparsify(Sae(args.d, SaeConfig(num_latents=args.latents, k=args.k)), sae_dir)
    cfg = AnalyzeConfig(sae=str(sae_dir), store=str(store), out=str(store.parent / "out"),
                        tokenizer=args.tokenizer, logit_lens=False, dashboard=False,
                        progress=False, device=str(device), chunk_tokens=args.chunk)
    analyze(cfg)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    timing = json.loads((Path(cfg.out) / "analysis.json").read_text())["timing"]
    sae = load_sae(sae_dir, device=device)
    n, t0 = 0, time.perf_counter()
    with torch.inference_mode():
        for chunk in store_chunks(ActivationStore(store), args.chunk):
            sae.encode(chunk["activations"].to(device))
            n += len(chunk["token_ids"])
        if device.type == "cuda":
            torch.cuda.synchronize()
    encode_tps = n / (time.perf_counter() - t0)
    print(json.dumps({"tokens": timing["tokens"], "peak_rss_mb": peak_mb,
                      "analyze_tok_s": timing["tokens_per_s"], "encode_only_tok_s": encode_tps}))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tokens", default="10000,100000")
    p.add_argument("--d", type=int, default=1536)
    p.add_argument("--latents", type=int, default=8192)
    p.add_argument("--k", type=int, default=32)
    p.add_argument("--chunk", type=int, default=8192)
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--tokenizer", default=str(ROOT / "tests" / "assets" / "r1_tokenizer"))
    p.add_argument("--store", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.store:
        return child(args)
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for size in (int(s) for s in args.tokens.split(",")):
            store = Path(tmp) / f"n{size}" / "layers.10"
            build_store(store, size, args.d, args.tokenizer)
            cmd = [sys.executable, __file__, "--store", str(store), "--d", str(args.d),
                   "--latents", str(args.latents), "--k", str(args.k), "--chunk", str(args.chunk),
                   "--device", args.device, "--tokenizer", args.tokenizer,
                   "--threads", str(args.threads)]
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode:
                sys.exit(f"analysis of {size} tokens failed:\n{proc.stderr[-3000:]}")
            out = proc.stdout
            r = json.loads(out.strip().splitlines()[-1])
            results.append(r)
            print(f"{r['tokens']:>9} tokens: peak RSS {r['peak_rss_mb']:8.1f} MB   analyze "
                  f"{r['analyze_tok_s']:9.0f} tok/s   SAE encode only {r['encode_only_tok_s']:9.0f} "
                  f"tok/s   ratio {r['analyze_tok_s'] / r['encode_only_tok_s']:.2f}", flush=True)
    print(f"peak RSS {results[-1]['tokens']} vs {results[0]['tokens']} tokens: "
          f"x{results[-1]['peak_rss_mb'] / results[0]['peak_rss_mb']:.2f} (flat = 1.00)")


if __name__ == "__main__":
    main()
