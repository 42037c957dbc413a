"""Numbers for docs/findings.md that the run report does not print itself: tokens per region of
the held-out traces, behaviour tags, the store's size, in-sample reconstruction (beside the
report's held-out numbers) and each stage's wall time; with ``--tables``, the validation verdicts
and the explanations' scores as Markdown tables. Reads a finished `thinksae run` directory.

    python scripts/findings_numbers.py runs/findings
    python scripts/findings_numbers.py runs/findings --tables
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
    from thinksae.evaluate.checks import docs_of_split
    from thinksae.store import ActivationStore

    store = ActivationStore(run / "store" / hookpoint)
    names = store.manifest["regions"]
    regions = store.labels("regions")
    sae_dir = run / "sae" / hookpoint
    held_docs = docs_of_split(EvalConfig(sae=str(sae_dir), split="heldout"), sae_dir, card, store)
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


def _num(v, fmt: str = "{:.3g}") -> str:
    return "–" if v is None else fmt.format(v)


def _interval(r: dict, key: str, fmt: str = "{:.3g}") -> str:
    lo, hi = r.get(f"{key}_lo"), r.get(f"{key}_hi")
    return f"{_num(r.get(key), fmt)} [{_num(lo, fmt)}, {_num(hi, fmt)}]"


def verdict_table(run: Path) -> str:
    """One row per validated feature (validate/verdicts.jsonl), ordered by why it was picked."""
    path = run / "validate" / "verdicts.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    rows.sort(key=lambda r: (r["why"][0].split("#")[0], int(r["why"][0].split("#")[1])))
    out = ["| feature | picked as | label | trigger tokens | context think/other [95 %] | "
           "injection / think [95 %] | ablation Δlog p [95 %] | clamp 2×max Δlog p [95 %] | "
           "ablation KL | verdict |", "|---:|---|---|---|---|---|---|---|---:|---|"]
    for r in rows:
        trig = ", ".join(f"`{t}`".replace("\n", "⏎").replace("\n", "⏎")
                         for t in r.get("trigger_text", [])[:3])
        out.append("| " + " | ".join([
            str(r["feature"]), ", ".join(r["why"]), str(r.get("label")), trig,
            "only in thinking" if r.get("context_only_in_think") else _interval(r, "context_ratio"),
            _interval(r, "injection_ratio"), _interval(r, "ablate_dlogp", "{:.4f}"),
            _interval(r, "clamp_dlogp", "{:.3f}"), _num(r.get("ablate_kl"), "{:.2g}"),
            f"**{r['verdict']}**"]) + " |")
    return "\n".join(out)


def explain_table(run: Path) -> str:
    """One row per explained feature (explain/summary.json): the explanation and its AUROCs next
    to the no-LLM baseline's."""
    summary = json.loads((run / "explain" / "summary.json").read_text())
    out = ["| feature | explanation (LLM) | detection AUROC LLM / baseline | "
           "fuzzing AUROC LLM / baseline |", "|---:|---|---|---|"]
    for r in summary["features"]:
        text = (r.get("explanation") or "(none)").replace("|", "\\|")
        cells = [f"{_num(r.get(f'llm_{s}_auroc'), '{:.2f}')} / "
                 f"{_num(r.get(f'baseline_{s}_auroc'), '{:.2f}')}" for s in ("detection", "fuzzing")]
        out.append(f"| {r['feature']} | {text} | {cells[0]} | {cells[1]} |")
    t = summary["timing"]
    out.append(f"\nTiming: {json.dumps({k: round(v, 1) for k, v in t.items()})}")
    return "\n".join(out)


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
    args = [a for a in sys.argv[1:] if a != "--tables"]
    where = args[0] if args else "runs/findings"
    if "--tables" in sys.argv:
        print(verdict_table(Path(where)) + "\n\n" + explain_table(Path(where)))
    else:
        main(where)
