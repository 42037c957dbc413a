"""What the workbench serves from a run directory: where things are, the model and SAE (loaded
once, in :func:`load_run`), the feature index (search, sort, filter), the corpus traces, and
the :class:`Workbench` that holds them (with the generation lock, the forms' defaults and the
sink rule).

Layout read (as `thinksae run` writes it): ``run_config.json`` (model, hookpoint, device, dtype,
tokenizer, sae), ``sae/<hookpoint>`` (or the config's ``sae``), ``features/`` (the analysis and
its dashboard), ``corpus/traces.jsonl``, ``validate/`` or ``features/validate/`` (verdicts),
``explain/`` (explanations, when that stage exists). Anything missing is simply not shown.
"""

from __future__ import annotations

import json
import math
import threading
from typing import Any, NamedTuple

from ..binding import Bound, ModelSource, bind_sae
from ..chat import ThinkMarkers
from ..corpus.segment import control_token_ids
from ..errors import ThinksaeError
from ..explain.cache import read_explanations
from ..features.report import read_features
from ..generation.decode import Decoding
from ..runs import RunDir, read_run
from ..sae.bound import SaeAtHookpoint
from ..sinks import SinkRule
from ..store.reader import ActivationStore
from ..store.shard_parts import MANIFEST
from ..validate.verdicts import read_verdicts
from .config import ServeConfig
from .defaults import HIDDEN_LABELS, SteerDefaults, index_sort, steer_defaults
from .snippets import feature_snippets

SEARCH_FIELDS = ("top_token_text", "label", "verdict", "explanation")
"""Row fields the index search matches (case-insensitive substring; any of them)."""
EXAMPLE_QUESTION = "What is 15% of 80?"
"""The steer form's question when the run has no traces."""


def load_run(info: RunDir, model=None, tokenizer=None, sae=None,
             overrides: dict | None = None) -> Bound:
    """The run's model, tokenizer and SAE bound at its hookpoint (:func:`thinksae.binding.
    bind_sae`): the given ones, else loaded once from the run's config (``overrides`` replace
    its model/device/dtype). The SAE runs in float32 on the model's device."""
    cfg = {**info.config, **{k: v for k, v in (overrides or {}).items() if v is not None}}
    source = ModelSource(cfg.get("model"), cfg.get("tokenizer"), cfg.get("device") or "auto",
                         cfg.get("dtype") or "auto")
    return bind_sae(SaeAtHookpoint.find(info.sae_dir, info.hookpoint), source, model, tokenizer,
                    sae=sae)


def _explanations(info: RunDir) -> dict[int, str]:
    """Feature → explanation text, from the explain stage when it exists (else {})."""
    for folder in (info.root / "explain", info.analysis):
        if folder.is_dir():
            try:
                found = read_explanations(folder) or {}
            except (ThinksaeError, OSError, ValueError):
                continue
            if found:
                return {int(k): (v.get("explanation") or v.get("text") or "")
                        if isinstance(v, dict) else str(v) for k, v in found.items()}
    return {}


def feature_rows(info: RunDir, special: frozenset[int] = frozenset()) -> list[dict]:
    """The analysis' rows with ``verdict`` and ``explanation`` added where the run has them, and
    each feature's ``top_tokens`` and ``context`` (:func:`~.snippets.feature_snippets`; contexts
    on a ``special`` token only when the feature has no other)."""

    if not (info.analysis / "features.jsonl").is_file():
        return []
    rows = read_features(info.analysis)
    verdicts = read_verdicts(info.root / "validate") or read_verdicts(info.analysis)
    explanations = _explanations(info)
    snippets = feature_snippets(info.analysis, special)
    for r in rows:
        f = r["feature"]
        r["verdict"] = verdicts.get(f, {}).get("verdict")
        r["explanation"] = explanations.get(f)
        r.update(snippets[f] if 0 <= f < len(snippets) else {"top_tokens": [], "context": None})
    return rows


def scores_of(rows: list[dict]) -> list[str]:
    """Numeric columns of the rows (what the index sorts and filters by)."""
    first = rows[0] if rows else {}
    return [k for k, v in first.items()
            if k != "feature" and not isinstance(v, (list, dict, str, bool))]


class Query(NamedTuple):
    """An index query: search text, sort column and direction, exact label/verdict, and
    ``bounds`` {score: (min or None, max or None)}; ``live``: leave out the features labelled
    dead or rare; ``limit`` rows after ``offset``."""

    q: str = ""
    sort: str = "feature"
    desc: bool = False
    label: str | None = None
    verdict: str | None = None
    bounds: dict[str, tuple[float | None, float | None]] = {}
    offset: int = 0
    limit: int = 100
    live: bool = False


def _number(v: Any) -> float | None:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) \
        else None


def select(rows: list[dict], query: Query) -> tuple[int, list[dict]]:
    """``(matches, page)``: rows matching every condition, sorted (missing values last)."""
    q = query.q.strip().lower()
    out = []
    for r in rows:
        if q and not any(q in str(r.get(k) or "").lower() for k in SEARCH_FIELDS):
            continue
        if query.label and r.get("label") != query.label:
            continue
        if query.verdict and r.get("verdict") != query.verdict:
            continue
        if query.live and r.get("label") in HIDDEN_LABELS:
            continue
        ok = True
        for key, (lo, hi) in query.bounds.items():
            v = _number(r.get(key))
            if v is None or (lo is not None and v < lo) or (hi is not None and v > hi):
                ok = False
        if ok:
            out.append(r)
    present, missing = [], []
    for r in out:
        v = r.get(query.sort)
        (present if _number(v) is not None or isinstance(v, str) else missing).append(r)
    present.sort(key=lambda r: (r[query.sort], r["feature"]), reverse=query.desc)
    ordered = present + missing
    return len(ordered), ordered[query.offset:query.offset + query.limit]


def read_traces(info: RunDir, limit: int = 200) -> list[dict]:
    """The run's corpus traces (id, question, text = prompt + completion), at most ``limit``."""
    if not info.traces.is_file():
        return []
    out = []
    with open(info.traces) as f:
        for line in f:
            if len(out) >= limit:
                break
            try:
                t = json.loads(line)
            except json.JSONDecodeError:
                continue
            out.append({"id": str(t.get("id")), "question": t.get("question") or "",
                        "text": (t.get("prompt") or "") + (t.get("completion") or "")})
    return out


class Workbench:
    """The run, the loaded model and SAE, the generation lock and cached index rows."""

    def __init__(self, cfg: ServeConfig, model=None, tokenizer=None, sae=None):
        self.cfg, self.info = cfg, read_run(cfg.run)
        self.bound = load_run(self.info, model, tokenizer, sae, {
            "model": cfg.model, "device": cfg.device, "dtype": cfg.dtype})
        self.model, self.tokenizer, self.sae = self.bound.model, self.bound.tokenizer, self.bound.sae
        self.lock: threading.Lock = threading.Lock()
        self._rows: tuple[tuple, list[dict], dict] | None = None
        self._markers = None
        self._sinks: tuple[SinkRule, str] | None = None
        self._special: frozenset[int] | None = None

    def _index(self) -> tuple[tuple, list[dict], dict]:
        """Index rows and the score they open sorted by, re-read when the analysis, verdicts or
        explanations change (the snippets are read with them, once)."""
        root, feats = self.info.root, self.info.analysis
        watched = [feats / "features.jsonl", root / "validate", feats / "validate", root / "explain"]
        key = tuple(p.stat().st_mtime_ns if p.exists() else 0 for p in watched)
        if self._rows is None or self._rows[0] != key:
            rows = feature_rows(self.info, self.special_ids())
            self._rows = (key, rows, index_sort(rows))
        return self._rows

    def rows(self) -> list[dict]:
        return self._index()[1]

    def index_sort(self) -> dict[str, str]:
        return self._index()[2]

    def markers(self) -> ThinkMarkers:
        if self._markers is None:
            self._markers = self.bound.markers(sentences=True)
        return self._markers

    def steer_defaults(self) -> SteerDefaults:
        """The steer form's defaults (:func:`~.defaults.steer_defaults`) for this run."""
        return steer_defaults(self.info.config, self.markers().single_token,
                              self.cfg.max_new_tokens)

    def steer_example(self) -> dict[str, str]:
        """A prompt and features for the steer form's first click: the run's first question (a
        built-in one without traces) and its top content feature (not dead, rare or formatting)
        by the index's score, clamped at 2x its max activation (``F=2max``)."""
        traces = read_traces(self.info, 1)
        question = traces[0]["question"] if traces and traces[0]["question"] else EXAMPLE_QUESTION
        score = self.index_sort()["score"]
        live = [r for r in self.rows() if r.get("label") not in (*HIDDEN_LABELS, "formatting")
                and isinstance(r.get(score), (int, float)) and (r.get("max_act") or 0) > 0]
        best = max(live, key=lambda r: (r[score], -r["feature"]), default=None)
        return {"prompt": question, "features": f"{best['feature']}=2max" if best else ""}

    def special_ids(self) -> frozenset[int]:
        """Special ids of the sink rule: the tokenizer's control ids and think markers."""
        if self._special is None:
            markers = self.bound.markers(sentences=False)
            self._special = frozenset(control_token_ids(self.tokenizer)) | markers.special_ids
        return self._special

    def sink_rule(self) -> tuple[SinkRule, str]:
        """The sink rule try text uses and its reference: the run's store's (``store``; its
        manifest's, else measured once over it), else (no store, or one that cannot be read)
        the default rule, whose median is each text's own (``text``)."""
        if self._sinks is None:
            self._sinks = (SinkRule(), "text")
            if (self.info.store / MANIFEST).is_file():
                try:
                    self._sinks = (ActivationStore(self.info.store).sink_rule, "store")
                except ThinksaeError:
                    pass  # e.g. an interrupted harvest: each text's own median
        return self._sinks

    def decoding(self) -> Decoding:
        """How the workbench decodes: the run's model and SAE, the tokenizer's markers."""
        return Decoding(self.model, self.tokenizer, self.sae, self.info.hookpoint,
                        markers=self.markers())

    def max_act(self, feature: int) -> float | None:
        rows = self.rows()
        value = rows[feature].get("max_act") if 0 <= feature < len(rows) else None
        return float(value) if isinstance(value, (int, float)) else None
