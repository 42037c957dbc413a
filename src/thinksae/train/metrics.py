"""Training metrics: averages over a logging window, written to console, metrics.jsonl and, if
asked for and installed, Weights & Biases and TensorBoard."""

from __future__ import annotations

import importlib.util
import json
import time
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from .. import atomic

METRICS = "metrics.jsonl"
_SUMS = ("steps", "tokens", "fvu", "auxk", "l0")


class MetricsLog:
    """Accumulates per-step values and emits window averages every ``log_every`` steps.

    Only the main rank should own one that writes (``write=False`` keeps the others silent).
    The window sums are part of the checkpoint, so a resumed run logs the same numbers.
    """

    def __init__(self, path: Path, write: bool = True, wandb_run=None, tb_writer=None):
        self.path = path
        self.write = write
        self.wandb_run = wandb_run
        self.tb_writer = tb_writer
        self.sums = dict.fromkeys(_SUMS, 0.0)
        self.window_start = time.perf_counter()
        self.last: dict[str, float] = {}

    def record(self, tokens: int, fvu: float, auxk: float, l0: float,
               extra: dict[str, float] | None = None) -> None:
        """Add one step's global values (l0 = mean nonzero latents per token); ``extra``: more
        per-step values averaged alike and logged after ``auxk`` (Matryoshka's
        ``fvu_prefix_{m}``, the FVU of the latents below m)."""
        s = self.sums
        s["steps"] += 1
        s["tokens"] += tokens
        s["fvu"] += fvu
        s["auxk"] += auxk
        s["l0"] += l0
        for key, value in (extra or {}).items():
            s[key] = s.get(key, 0.0) + value

    def emit(self, step: int, tokens_seen: int, lr: float, dead_pct: float) -> dict[str, Any]:
        """Write the window averages and start a new window; returns the record."""
        s, now = self.sums, time.perf_counter()
        n = max(s["steps"], 1)
        record = {
            "step": step,
            "tokens": tokens_seen,
            "fvu": s["fvu"] / n,
            "l0": s["l0"] / n,
            "dead_pct": dead_pct,
            "auxk": s["auxk"] / n,
            **{k: v / n for k, v in s.items() if k not in _SUMS},
            "lr": lr,
            "tokens_per_s": s["tokens"] / max(now - self.window_start, 1e-9),
            "time": time.time(),
        }
        self.last = {k: record[k] for k in ("fvu", "l0", "dead_pct", "auxk")}
        self.last.update({k: record[k] for k in s if k not in _SUMS})
        self.last["window_steps"] = int(s["steps"])
        if self.write:
            atomic.append_line(self.path, json.dumps(record))
            tqdm.write(
                f"step {step:>7}  fvu {record['fvu']:.4f}  l0 {record['l0']:.1f}  "
                f"dead {dead_pct:.2f}%  auxk {record['auxk']:.4f}  lr {lr:.2e}  "
                f"{record['tokens_per_s']:.0f} tok/s"
            )
            scalars = {k: v for k, v in record.items() if k not in ("step", "time")}
            if self.wandb_run is not None:
                self.wandb_run.log(scalars, step=step)
            if self.tb_writer is not None:
                for k, v in scalars.items():
                    self.tb_writer.add_scalar(f"train/{k}", v, step)
        self.sums = dict.fromkeys(_SUMS, 0.0)
        self.window_start = now
        return record

    def state(self) -> dict[str, Any]:
        """Window sums and the last emitted averages, for the checkpoint."""
        return {"sums": dict(self.sums), "last": dict(self.last)}

    def load_state(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state` (the window clock restarts now)."""
        self.sums = {**dict.fromkeys(_SUMS, 0.0),
                     **{k: float(v) for k, v in state["sums"].items()}}
        self.last = dict(state.get("last", {}))
        self.window_start = time.perf_counter()

    def close(self) -> None:
        """Finish the optional loggers."""
        if self.wandb_run is not None:
            self.wandb_run.finish()
        if self.tb_writer is not None:
            self.tb_writer.close()


def truncate_metrics(path: Path, step: int) -> None:
    """Drop records after ``step`` (logged after the checkpoint a resumed run starts from)."""
    if not path.exists():
        return
    keep = []
    for line in path.read_text().splitlines():
        try:
            if json.loads(line)["step"] <= step:
                keep.append(line)
        except (json.JSONDecodeError, KeyError, TypeError):
            continue  # a line cut short by a kill
    atomic.write_bytes(path, "".join(f"{line}\n" for line in keep).encode())


def open_loggers(use_wandb: bool, use_tensorboard: bool, log_dir: Path, name: str, config: dict):
    """Start W&B and TensorBoard loggers where asked for and installed; warn about the others."""
    wandb_run = tb_writer = None
    if use_wandb:
        if importlib.util.find_spec("wandb") is None:
            tqdm.write("thinksae: --wandb ignored: wandb is not installed")
        else:
            import wandb

            wandb_run = wandb.init(project="thinksae", name=name, config=config)
    if use_tensorboard:
        if importlib.util.find_spec("tensorboard") is None:
            tqdm.write("thinksae: --tensorboard ignored: tensorboard is not installed")
        else:
            from torch.utils.tensorboard import SummaryWriter

            tb_writer = SummaryWriter(str(log_dir / "tensorboard"))
    return wandb_run, tb_writer
