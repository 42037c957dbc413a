"""The explanation and score cache of a results folder (default: the analysis' ``explain/``):
JSON lines appended as each result comes (``atomic.append_line``), so an interrupted run resumes
where it stopped.

``explanations.jsonl``: one line per (feature, key) with ``key`` = {sae, explainer, prompt};
``scores.jsonl``: one line per (feature, key, source, scorer) with the scoring settings in ``key``.
A later line for the same key wins; a torn last line (a crash mid-write) is ignored.
"""

from __future__ import annotations

import json
from pathlib import Path

from .. import atomic

EXPLAIN_DIR = "explain"
EXPLANATIONS_FILE, SCORES_FILE, SUMMARY_FILE = "explanations.jsonl", "scores.jsonl", "summary.json"


def _lines(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue  # a line cut by a crash
    return out


def _k(obj) -> str:
    return json.dumps(obj, sort_keys=True)


class ExplainCache:
    """Results keyed by feature and settings; ``put_*`` appends a line at once (the folder is
    made by the first one: a run that fails before any result leaves nothing behind)."""

    def __init__(self, folder: str | Path):
        self.dir = Path(folder)
        self.expl = {(r["feature"], _k(r["key"])): r for r in _lines(self.dir / EXPLANATIONS_FILE)}
        self.scores = {(r["feature"], _k(r["key"]), r["source"], r["scorer"]): r
                       for r in _lines(self.dir / SCORES_FILE)}

    def explanation(self, feature: int, key: dict) -> dict | None:
        return self.expl.get((feature, _k(key)))

    def put_explanation(self, row: dict) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        atomic.append_line(self.dir / EXPLANATIONS_FILE, json.dumps(row, ensure_ascii=False))
        self.expl[(row["feature"], _k(row["key"]))] = row

    def score(self, feature: int, key: dict, source: str, scorer: str) -> dict | None:
        return self.scores.get((feature, _k(key), source, scorer))

    def put_score(self, row: dict) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        atomic.append_line(self.dir / SCORES_FILE, json.dumps(row, ensure_ascii=False))
        self.scores[(row["feature"], _k(row["key"]), row["source"], row["scorer"])] = row


def summary_path(directory: str | Path) -> Path | None:
    """``summary.json`` of an explain results folder or of an analysis directory's ``explain/``
    (None when there is none)."""
    d = Path(directory)
    for path in (d / SUMMARY_FILE, d / EXPLAIN_DIR / SUMMARY_FILE):
        if path.is_file():
            return path
    return None


def read_explanations(directory: str | Path) -> dict[int, dict]:
    """feature → {explanation, explainer, <source>_<scorer>_<metric>…} from the latest
    ``thinksae explain`` run (``summary.json``) of an explain results folder or an analysis
    directory; {} when none ran."""
    path = summary_path(directory)
    if path is None:
        return {}
    try:
        rows = json.loads(path.read_text())["features"]
    except (OSError, ValueError, KeyError):
        return {}
    return {int(r["feature"]): r for r in rows}
