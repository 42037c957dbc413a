"""Numbers for docs/findings.md that the run report does not print itself: tokens per region of
the held-out traces, behaviour tags, the store's size, in-sample reconstruction (beside the
report's held-out numbers) and each stage's wall time; with ``--tables``, the validation verdicts
and the explanations' scores as Markdown tables. Reads a finished `thinksae run` directory.

    python scripts/findings_numbers.py runs/findings
    python scripts/findings_numbers.py runs/findings --tables
    python scripts/findings_numbers.py runs/findings --top      # top 10 by each score
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
    m = result.to_dict()["metrics"]
    keep = ("tokens", "fvu", "cosine", "l0", "dead_fraction")
    return {"trained": {k: m["trained"][k] for k in keep}, "all": {k: m["all"][k] for k in keep},
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


def _tok(text: str) -> str:
    return "`" + text.replace("\n", "⏎").replace("`", "ˋ").replace("|", "\\|") + "`"


def top_table(run: Path, score: str, n: int = 10) -> str:
    """The top ``n`` features (not dead or rare) by ``score``: label, tokens for 90 % of the mass,
    the three top trigger tokens with their share of the mass, and the strongest context."""
    from thinksae.features.card import feature_info

    rows = [json.loads(line) for line in (run / "features" / "features.jsonl").open()]
    alive = sorted((r for r in rows if r["label"] not in ("dead", "rare") and r.get(score) is not None),
                   key=lambda r: (-r[score], r["feature"]))[:n]
    out = [f"| feature | {score} | label | tokens for 90 % | top trigger tokens (share of mass) | "
           "strongest context |", "|---:|---:|---|---:|---|---|"]
    for r in alive:
        _, det = feature_info(run / "features", r["feature"])
        toks = ", ".join(f"{_tok(t['text'])} {100 * t['share']:.1f} %" for t in det["tokens"][:3])
        c = det["contexts"][0]
        i = c["trigger"]
        ctx = "".join(c["tokens"][max(0, i - 6):i]) + "[" + c["tokens"][i] + "]" + \
            "".join(c["tokens"][i + 1:i + 4])
        out.append(f"| {r['feature']} | {r[score]:.4g} | {r['label']} | {r['tokens_90']} | {toks} | "
                   f"{_tok(ctx)} |")
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
    args = [a for a in sys.argv[1:] if a not in ("--tables", "--top")]
    where = args[0] if args else "runs/findings"
    if "--top" in sys.argv:
        print("\n\n".join(top_table(Path(where), s) for s in
                          ("reason_score", "think_rate_ratio", "think_mean_ratio")))
    elif "--tables" in sys.argv:
        print(verdict_table(Path(where)) + "\n\n" + explain_table(Path(where)))
    else:
        main(where)
