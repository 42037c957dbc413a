"""Shared pieces of the workbench tests (no tests here): a small run directory built by hand."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import shutil
from pathlib import Path

import pytest
from test_monitor_helpers import HOOKPOINT, saved_sae

from thinksae.chat import ThinkMarkers
from thinksae.features import AnalyzeConfig, analyze
from thinksae.store import HarvestConfig, harvest

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
DEMO_SYSTEM_PROMPT = "Think step by step inside <think> </think> tags, then give the final answer."
DEMO_SECTIONS = {
    "corpus": {"prompts": "builtin", "system_prompt": DEMO_SYSTEM_PROMPT, "think_prefill": True},
    "steer": {"feature": "top:reason_score", "sweep": ["0", "x1", "2max", "10max"],
              "max_new_tokens": 48, "start": "prompt", "end": "none",
              "system_prompt": DEMO_SYSTEM_PROMPT, "think_prefill": True},
}
"""The stage sections of the offline demo's run_config.json that the workbench reads."""
PLAIN_WHY = "this tokenizer has no single <think> token: every generated token is steered"
"""Why the steer form starts prompt .. none on a tokenizer without single think tokens."""


def make_run(root: Path, model_dir: Path, corpus_path: Path, model, tokenizer,
             sections: dict | None = None, store: bool = False) -> Path:
    """``root``: run_config.json (with ``sections``, e.g. :data:`DEMO_SECTIONS`), sae/layers.1
    (tiny_sae), corpus/traces.jsonl, features/ (the analysis of the corpus with the tiny model),
    validate/verdicts.jsonl (two verdicts) and, with ``store``, store/layers.1 (the corpus
    harvested, as `thinksae run` leaves it)."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "run_config.json").write_text(json.dumps({
        "name": "tiny", "out": str(root), "model": str(model_dir), "hookpoint": HOOKPOINT,
        "device": "cpu", "dtype": "float32", "sae": None, **(sections or {})}))
    if store:
        harvest(HarvestConfig(model=str(model_dir), corpus=str(corpus_path), hookpoint=HOOKPOINT,
                              out=str(root / "store"), device="cpu", dtype="float32",
                              progress=False), model, tokenizer)
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


@contextlib.contextmanager
def plain_think_markers():
    """Tokenizer markers as the offline demo's tokenizer (Qwen2.5-Coder) has them: <think> and
    </think> are plain text, not single tokens."""
    real = ThinkMarkers.from_tokenizer

    def plain(tokenizer, stop_ids=(), sentences=True, special_ids=()):
        return dataclasses.replace(real(tokenizer, stop_ids, sentences, special_ids),
                                   single_token=False)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(ThinkMarkers, "from_tokenizer", staticmethod(plain))
        yield
