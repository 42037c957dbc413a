"""Numbers for docs/findings.md that the run report does not print itself: tokens per region of
the held-out traces, behaviour tags, the store's size, in-sample reconstruction (beside the
report's held-out numbers) and each stage's wall time. Reads a finished `thinksae run` directory.

    python scripts/findings_numbers.py runs/findings
"""

from __future__ import annotations

import json
import sys
import tempfile
from collections import Counter
from pathlib import Path

import numpy as np


def store_numbers(run: Path, hookpoint: str, card: dict) -> dict:
    from thinksae.evaluate import EvalConfig
    from thinksae.evaluate.checks import split_docs
    from thinksae.store import ActivationStore

    store = ActivationStore(run / "store" / hookpoint)
    names = store.manifest["regions"]
    regions = store.labels("regions")
    sae_dir = run / "sae" / hookpoint
    held_docs = split_docs(EvalConfig(sae=str(sae_dir), split="heldout"), sae_dir, card, store)
    held = np.isin(store.labels("doc_index"), held_docs)
    behaviours = Counter(store.labels("behaviours").tolist())
    return {
        "heldout_docs": len(held_docs),
        "heldout_tokens": int(held.sum()),
        "heldout_regions": {n: int(((regions == i) & held).sum()) for i, n in enumerate(names)},
        "behaviours": {store.manifest["behaviours"][k]: v for k, v in sorted(behaviours.items())
                       if k},
        "store_mb": round(sum((store.path / s["file"]).stat().st_size
                              for s in store.manifest["shards"]) / 2**20, 1),
    }


def in_sample(run: Path, hookpoint: str) -> dict:
    """Reconstruction on the training traces (in-sample), beside the run's held-out numbers."""
    from thinksae.evaluate import EvalConfig, evaluate

    with tempfile.TemporaryDirectory() as tmp:
        result = evaluate(EvalConfig(sae=str(run / "sae" / hookpoint),
                                     store=str(run / "store" / hookpoint), split="train",
                                     out=str(Path(tmp) / "train.json"), update_card=False,
                                     progress=False))
    m = result["metrics"]
    keep = ("tokens", "fvu", "cosine", "l0", "dead_fraction")
    return {"all": {k: m["all"][k] for k in keep},
            **{f"region {r}": {k: v[k] for k in keep} for r, v in m["regions"].items()
               if v.get("tokens")}}


def main(run: str) -> None:
    root = Path(run)
    spec = json.loads((root / "run_config.json").read_text())
    card = json.loads((root / "sae" / spec["hookpoint"] / "thinksae.json").read_text())
    out = {
        "store": store_numbers(root, spec["hookpoint"], card),
        "in_sample": in_sample(root, spec["hookpoint"]),
        "stage_wall_s": {p.parent.name: json.loads(p.read_text()).get("wall_s")
                         for p in sorted(root.glob("*/stage.json"))},
    }
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "runs/findings")
