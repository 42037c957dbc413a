"""Read and write EleutherAI delphi's result files (the layout of ``eai-delphi`` 0.1.3), so that
thinksae's and delphi's explanations and scores of the same features compare side by side:

- ``explanations/{module}_latent{i}.txt``: the explanation as one JSON string;
- ``scores/{scorer}/{module}_latent{i}.txt`` (``/`` in the module written ``--``): a JSON list, one
  object per scored excerpt: ``str_tokens``, ``activations``, ``distance`` (activation quantile of
  an activating excerpt, -1 for a non-activating one), ``activating``, ``prediction``,
  ``probability``, ``correct``.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

from .. import atomic
from ..errors import ThinksaeError
from .scorers import auroc, balanced_accuracy

DELPHI_VERSION = "0.1.3"


def _name(module: str, feature: int) -> str:
    return f"{module}_latent{feature}"


def write_delphi(out: str | Path, module: str, feature: int, explanation: str,
                 scores: dict[str, list[dict]]) -> None:
    """One feature's explanation and score files under ``out`` (a delphi run directory);
    ``scores``: scorer name → its samples (``tokens, acts, quantile, activating, score``)."""
    out = Path(out)
    atomic.write_bytes(out / "explanations" / f"{_name(module, feature)}.txt",
                       json.dumps(explanation, ensure_ascii=False).encode())
    for scorer, samples in scores.items():
        items = []
        for s in samples:
            pred = s["score"] > 0
            items.append({"str_tokens": s["tokens"], "activations": s["acts"],
                          "distance": s["quantile"] if s["quantile"] else -1.0,
                          "activating": s["activating"], "prediction": pred,
                          "probability": 1 / (1 + math.exp(-max(min(s["score"], 50.0), -50.0))),
                          "correct": pred == s["activating"]})
        path = out / "scores" / scorer / f"{_name(module.replace('/', '--'), feature)}.txt"
        atomic.write_bytes(path, json.dumps(items, ensure_ascii=False).encode())


def _read_json(path: Path):
    try:
        return json.loads(path.read_bytes())
    except (OSError, ValueError) as e:
        raise ThinksaeError(f"cannot read delphi file {path}: {e}") from None


def read_delphi(run_dir: str | Path, module: str) -> dict[int, dict]:
    """feature → {explanation, <scorer>_balanced_accuracy, <scorer>_auroc} for one module of a
    delphi run directory (holding ``explanations/`` and/or ``scores/``)."""
    root = Path(run_dir)
    if not (root / "explanations").is_dir() and not (root / "scores").is_dir():
        raise ThinksaeError(f"no delphi results at {root} (no explanations/ or scores/)")
    pat = re.compile(re.escape(module) + r"_latent(\d+)\.txt$")
    out: dict[int, dict] = {}
    for path in sorted((root / "explanations").glob("*.txt")):
        if m := pat.match(path.name):
            text = _read_json(path)
            if not isinstance(text, str):
                raise ThinksaeError(f"delphi explanation {path} is not a JSON string")
            out.setdefault(int(m.group(1)), {})["explanation"] = text
    spat = re.compile(re.escape(module.replace("/", "--")) + r"_latent(\d+)\.txt$")
    for sdir in sorted(p for p in (root / "scores").glob("*") if p.is_dir()):
        for path in sorted(sdir.glob("*.txt")):
            if not (m := spat.match(path.name)):
                continue
            items = _read_json(path)
            try:
                labels = [bool(x["activating"]) for x in items]
                preds = [1.0 if x["prediction"] else -1.0 for x in items]
                probs = [float(x["probability"] or 0.0) for x in items]
            except (TypeError, KeyError) as e:
                raise ThinksaeError(f"delphi score file {path} lacks {e}") from None
            row = out.setdefault(int(m.group(1)), {})
            row[f"{sdir.name}_balanced_accuracy"] = balanced_accuracy(labels, preds)
            row[f"{sdir.name}_auroc"] = auroc(labels, probs)
    return out
