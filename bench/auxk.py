"""Benchmark the AuxK part of a thinksae training step: the dense path (one GEMM for the wide
AuxK selection of d_in // 2 dead latents, what `thinksae.sae.kernels` picks above DENSE_SHARE)
against the sparse path forced for it, and a step without AuxK, in one run.

Each setting trains on the same seeded random activations, in the same process, with a quarter of
the latents marked dead so AuxK picks k_aux = d_in // 2 of them per token; the median of the timed
steps after one warm-up is printed with the ratios.

    python bench/auxk.py                                  # 8192 latents, batch 512 (the findings run)
    python bench/auxk.py --latents 16384 --batch 4096
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch


def _trainer(d_in: int, n: int, k: int, batch: int, dtype: str):
    from thinksae.sae import SaeConfig
    from thinksae.train import SyntheticActivations, TrainConfig
    from thinksae.train.distributed import Ranks
    from thinksae.train.trainer import Trainer, _StopFlag

    src = SyntheticActivations(d_in=d_in, num_tokens=batch, num_features=8, active=1)
    cfg = TrainConfig(sae=SaeConfig(num_latents=n, k=k), batch_size=batch, dtype=dtype,
                      device="cpu", progress=False, dead_feature_threshold=0)
    trainer = Trainer(cfg, src, Path(tempfile.mkdtemp()) / "bench", Ranks(), torch.device("cpu"))
    trainer._stop = _StopFlag()
    return trainer


def time_steps(trainer, x: torch.Tensor, dead: torch.Tensor | None, steps: int) -> float:
    """Median seconds per step; ``dead`` marks the dead latents (None: AuxK off)."""
    times = []
    for i in range(steps + 1):
        # since_fired above the threshold (0) marks a latent dead; a step resets the ones that fired
        trainer.since_fired.zero_()
        if dead is not None:
            trainer.since_fired[dead] = 1
        start = time.perf_counter()
        trainer.train_step(x)
        if i:
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--latents", type=int, default=8192)
    p.add_argument("--batch", type=int, default=512)
    p.add_argument("--d_in", type=int, default=1536)
    p.add_argument("--k", type=int, default=32)
    p.add_argument("--dtype", default="bfloat16", choices=("float32", "bfloat16"))
    p.add_argument("--steps", type=int, default=5)
    args = p.parse_args()
    from thinksae.sae import kernels

    g = torch.Generator().manual_seed(0)
    x = torch.randn(args.batch, args.d_in, generator=g) + 0.5 * torch.randn(args.d_in, generator=g)
    dead = torch.zeros(args.latents, dtype=torch.bool)
    dead[torch.randperm(args.latents, generator=g)[: args.latents // 4]] = True
    k_aux = args.d_in // 2
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; {args.latents} latents, "
          f"d_in {args.d_in}, k {args.k}, batch {args.batch}, {args.dtype}; AuxK k_aux {k_aux} "
          f"({100 * k_aux / args.latents:.1f} % of the latents, dense above "
          f"{100 * kernels.DENSE_SHARE:.2f} %); median of {args.steps} steps")
    results = {}
    default_share = kernels.DENSE_SHARE
    for name, share, mask in (("no AuxK", default_share, None), ("AuxK dense", default_share, dead),
                              ("AuxK sparse", 2.0, dead)):
        kernels.DENSE_SHARE = share
        try:
            trainer = _trainer(args.d_in, args.latents, args.k, args.batch, args.dtype)
            trainer.sae.init_b_dec_from_data(x)
            results[name] = time_steps(trainer, x, mask, args.steps)
        finally:
            kernels.DENSE_SHARE = default_share
        print(f"  {name:<12} {results[name]:.3f} s/step  {args.batch / results[name]:8.0f} tok/s")
    print(f"  AuxK sparse / AuxK dense = {results['AuxK sparse'] / results['AuxK dense']:.2f}x; "
          f"AuxK dense / no AuxK = {results['AuxK dense'] / results['no AuxK']:.2f}x")


if __name__ == "__main__":
    main()
