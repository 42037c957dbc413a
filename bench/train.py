"""Benchmark one TopK SAE training step: thinksae vs EleutherAI sparsify, SAELens, dense PyTorch.

Every implementation trains on the same seeded random activations (d_in 1536, k 32, batch 4096)
at each width, each in its own subprocess (so peak memory is its own), with the same fused Adam
optimiser so the comparison is of the SAE step itself; AuxK is off (no dead latents at the start
of training). Prints seconds per step, tokens/s, ratios against one encoder GEMM of that shape and
thinksae's speed-up over each peer, and peak RSS. Then a fidelity check: thinksae trained in
bfloat16 compute (float32 master weights) and in float32 on the same synthetic tokens, final FVU.

    python bench/train.py                       # both widths, all implementations
    python bench/train.py --latents 16384 --steps 2

Needs the bench extra for the peers: pip install -e ".[bench]" (missing peers are skipped).
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time

import torch

IMPLS = ("gemm", "gemm_bf16", "thinksae", "thinksae_bf16", "sparsify", "saelens", "dense")


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _data(d: int, batch: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return torch.randn(batch, d, generator=g) + 0.5 * torch.randn(d, generator=g)


def _thinksae_step(x, n, k, dtype):
    from thinksae.sae import SaeConfig
    from thinksae.train import SyntheticActivations, TrainConfig
    from thinksae.train.distributed import Ranks
    from thinksae.train.trainer import Trainer, _StopFlag

    src = SyntheticActivations(d_in=x.shape[1], num_tokens=x.shape[0], num_features=8, active=1)
    cfg = TrainConfig(sae=SaeConfig(num_latents=n, k=k), batch_size=x.shape[0], dtype=dtype,
                      device="cpu", progress=False, auxk_alpha=0.0)
    trainer = Trainer(cfg, src, __import__("pathlib").Path(tempfile.mkdtemp()) / "bench",
                      Ranks(), torch.device("cpu"))
    trainer._stop = _StopFlag()
    trainer.sae.init_b_dec_from_data(x)
    return lambda: trainer.train_step(x)


def _sparsify_step(x, n, k):
    import sparsify

    sae = sparsify.SparseCoder(x.shape[1], sparsify.SparseCoderConfig(num_latents=n, k=k))
    opt = torch.optim.Adam(sae.parameters(), lr=1e-4, fused=True)

    def step():
        out = sae(x)
        out.fvu.backward()
        sae.remove_gradient_parallel_to_decoder_directions()
        opt.step()
        opt.zero_grad(set_to_none=True)
        sae.set_decoder_norm_to_unit_norm()
    return step


def _saelens_step(x, n, k):
    from sae_lens.saes.sae import TrainStepInput
    from sae_lens.saes.topk_sae import TopKTrainingSAE, TopKTrainingSAEConfig

    sae = TopKTrainingSAE(TopKTrainingSAEConfig(d_in=x.shape[1], d_sae=n, k=k))
    opt = torch.optim.Adam(sae.parameters(), lr=1e-4, fused=True)
    count = [0]

    def step():
        count[0] += 1
        out = sae.training_forward_pass(TrainStepInput(
            sae_in=x, coefficients={"auxiliary_reconstruction_loss": 0.0}, dead_neuron_mask=None,
            n_training_steps=count[0], is_logging_step=False))
        out.loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    return step


def _dense_step(x, n, k):
    """Textbook TopK SAE in plain PyTorch: dense latents, dense decoder matmul, autograd."""
    g = torch.Generator().manual_seed(1)
    w_enc = (torch.randn(n, x.shape[1], generator=g) / x.shape[1] ** 0.5).requires_grad_()
    w_dec = torch.nn.Parameter(w_enc.detach().clone())
    b_enc = torch.zeros(n, requires_grad=True)
    b_dec = torch.zeros(x.shape[1], requires_grad=True)
    params = [w_enc, w_dec, b_enc, b_dec]
    opt = torch.optim.Adam(params, lr=1e-4, fused=True)

    def step():
        pre = torch.relu((x - b_dec) @ w_enc.T + b_enc)
        vals, idx = pre.topk(k, dim=-1)
        z = torch.zeros_like(pre).scatter(-1, idx, vals)
        out = z @ w_dec + b_dec
        fvu = (x - out).pow(2).sum() / (x - x.mean(0)).pow(2).sum()
        fvu.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        with torch.no_grad():
            w_dec.div_(w_dec.norm(dim=1, keepdim=True))
    return step


def _gemm_step(x, n, dtype):
    w = torch.randn(n, x.shape[1]) / x.shape[1] ** 0.5
    b = torch.zeros(n)
    x, w, b = x.to(dtype), w.to(dtype), b.to(dtype)
    return lambda: torch.addmm(b, x, w.T)


def worker(impl: str, n: int, args) -> dict:
    torch.manual_seed(0)
    x = _data(args.d_in, args.batch)
    makers = {
        "gemm": lambda: _gemm_step(x, n, torch.float32),
        "gemm_bf16": lambda: _gemm_step(x, n, torch.bfloat16),
        "thinksae": lambda: _thinksae_step(x, n, args.k, "float32"),
        "thinksae_bf16": lambda: _thinksae_step(x, n, args.k, "bfloat16"),
        "sparsify": lambda: _sparsify_step(x, n, args.k),
        "saelens": lambda: _saelens_step(x, n, args.k),
        "dense": lambda: _dense_step(x, n, args.k),
    }
    step = makers[impl]()
    before = _rss_mb()
    step()  # warm-up (allocates optimiser state)
    times = []
    for _ in range(args.steps):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return {"impl": impl, "latents": n, "s_per_step": statistics.median(times),
            "peak_rss_mb": _rss_mb(), "step_rss_mb": _rss_mb() - before}


def fidelity(args) -> dict:
    """Final FVU of the same training run in float32 and in bfloat16 compute."""
    from thinksae.sae import SaeConfig, load_sae
    from thinksae.train import SyntheticActivations, TrainConfig, train

    src = SyntheticActivations(d_in=args.d_in, num_tokens=args.fidelity_tokens,
                               num_features=4096, active=16, noise=0.05, seed=0)
    result = {}
    for dtype in ("float32", "bfloat16"):
        with tempfile.TemporaryDirectory() as tmp:
            cfg = TrainConfig(out=tmp, sae=SaeConfig(num_latents=args.fidelity_latents, k=args.k),
                              batch_size=1024, epochs=args.fidelity_epochs, lr=1e-3,
                              lr_warmup_steps=10, dtype=dtype, device="cpu", progress=False,
                              log_every=10_000, save_every=10_000, seed=0)
            start = time.perf_counter()
            sae = load_sae(train(cfg, source=src))
            seconds = time.perf_counter() - start
            with torch.no_grad():
                fvus = [sae(b).fvu.item() for b in src.data.split(4096)]
        result[dtype] = {"final_fvu": statistics.fmean(fvus), "train_s": seconds}
    f32, b16 = result["float32"]["final_fvu"], result["bfloat16"]["final_fvu"]
    result["relative_diff"] = abs(b16 - f32) / f32
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--latents", type=int, nargs="+", default=[16384, 65536])
    p.add_argument("--impls", nargs="+", default=list(IMPLS), choices=IMPLS)
    p.add_argument("--d_in", type=int, default=1536)
    p.add_argument("--k", type=int, default=32)
    p.add_argument("--batch", type=int, default=4096)
    p.add_argument("--steps", type=int, default=3, help="timed steps (after one warm-up)")
    p.add_argument("--fidelity_tokens", type=int, default=16384)
    p.add_argument("--fidelity_epochs", type=int, default=6)
    p.add_argument("--fidelity_latents", type=int, default=16384)
    p.add_argument("--no_fidelity", action="store_true")
    p.add_argument("--worker", nargs=2, metavar=("IMPL", "LATENTS"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker[0], int(args.worker[1]), args)))
        return
    common = ["--d_in", str(args.d_in), "--k", str(args.k), "--batch", str(args.batch),
              "--steps", str(args.steps)]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; d_in {args.d_in}, "
          f"k {args.k}, batch {args.batch}, median of {args.steps} steps after 1 warm-up")
    for n in args.latents:
        rows = {}
        for impl in args.impls:
            proc = subprocess.run([sys.executable, __file__, "--worker", impl, str(n), *common],
                                  capture_output=True, text=True)
            if proc.returncode != 0:
                last = (proc.stderr.strip().splitlines() or ["?"])[-1]
                print(f"  {impl}: skipped ({last})")
                continue
            rows[impl] = json.loads(proc.stdout.strip().splitlines()[-1])
        gemm = rows.get("gemm", {}).get("s_per_step")
        print(f"\nnum_latents {n}")
        print(f"  {'impl':<14}{'s/step':>9}{'tok/s':>10}{'x GEMM':>8}{'peak MB':>9}{'step MB':>9}")
        for impl, r in rows.items():
            ratio = f"{r['s_per_step'] / gemm:.2f}" if gemm else "-"
            print(f"  {impl:<14}{r['s_per_step']:>9.3f}{args.batch / r['s_per_step']:>10.0f}"
                  f"{ratio:>8}{r['peak_rss_mb']:>9.0f}{r['step_rss_mb']:>9.0f}")
        for ours in ("thinksae", "thinksae_bf16"):
            if ours not in rows:
                continue
            for peer in ("sparsify", "saelens", "dense"):
                if peer in rows:
                    speedup = rows[peer]["s_per_step"] / rows[ours]["s_per_step"]
                    print(f"  {ours} vs {peer} (fp32): {speedup:.2f}x faster")
    if not args.no_fidelity:
        f = fidelity(args)
        print(f"\nfidelity ({args.fidelity_tokens} synthetic tokens x {args.fidelity_epochs} "
              f"epochs, {args.fidelity_latents} latents, batch 1024): final FVU fp32 "
              f"{f['float32']['final_fvu']:.4f} ({f['float32']['train_s']:.0f} s), bf16 "
              f"{f['bfloat16']['final_fvu']:.4f} ({f['bfloat16']['train_s']:.0f} s); relative "
              f"difference {100 * f['relative_diff']:.2f}% (goal <= 2%)")


if __name__ == "__main__":
    main()
