"""Shared pieces of the workbench tests (no tests here): a small run directory built by hand."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from test_monitor_helpers import HOOKPOINT, saved_sae

from thinksae.features import AnalyzeConfig, analyze

NUMBERS = ("context_ratio", "context_ratio_lo", "context_ratio_hi", "injection_ratio",
           "injection_ratio_lo", "injection_ratio_hi", "ablate_dlogp", "ablate_dlogp_lo",
           "ablate_dlogp_hi", "ablate_kl", "clamp_dlogp", "clamp_dlogp_lo", "clamp_dlogp_hi",
           "clamp_kl", "clamp_value", "attribution")


def verdict_row(feature: int, verdict: str) -> dict:
    """A verdicts.jsonl row with every field the feature page shows (numbers made up)."""
    return {"feature": feature, "verdict": verdict, **dict.fromkeys(NUMBERS, 0.5),
            "context_passed": True, "injection_passed": verdict != "token detector",
            "context_only_in_think": False, "causal": True, "trigger_text": ["Wait"]}


VERDICT_ROWS = [verdict_row(3, "token detector"), verdict_row(5, "reasoning candidate")]


def make_run(root: Path, model_dir: Path, corpus_path: Path, model, tokenizer) -> Path:
    """``root``: run_config.json, sae/layers.1 (tiny_sae), corpus/traces.jsonl, features/ (the
    analysis of the corpus with the tiny model) and validate/verdicts.jsonl (two verdicts)."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "run_config.json").write_text(json.dumps({
        "name": "tiny", "out": str(root), "model": str(model_dir), "hookpoint": HOOKPOINT,
        "device": "cpu", "dtype": "float32", "sae": None}))
    sae_dir = saved_sae(root / "sae")
    (root / "corpus").mkdir(exist_ok=True)
    shutil.copy(corpus_path, root / "corpus" / "traces.jsonl")
    analyze(AnalyzeConfig(sae=str(sae_dir), corpus=str(root / "corpus" / "traces.jsonl"),
                          model=str(model_dir), hookpoint=HOOKPOINT, out=str(root / "features"),
                          min_fires=2, top_n=5,
                          device="cpu", dtype="float32", progress=False),
            model=model, tokenizer=tokenizer)
    (root / "validate").mkdir(exist_ok=True)
    (root / "validate" / "verdicts.jsonl").write_text(
        "".join(json.dumps(r) + "\n" for r in VERDICT_ROWS))
    (root / "index.html").write_text("<html><body><h1>run report</h1></body></html>")
    return root
