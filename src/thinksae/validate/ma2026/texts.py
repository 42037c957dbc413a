"""The protocol's two text sets.

- **Reasoning**: the run's own thinking — per trace of a corpus traces JSONL (`thinksae corpus`),
  the text between ``<think>`` and ``</think>`` (to the end when a trace never closes it), cut
  into pieces of ``max_tokens`` tokens minus the special tokens the tokenizer adds (BOS), decoded
  back to text; a trace's last, shorter piece is dropped. (Theirs: s1K-1.1 trajectories, the
  first 64 tokens of each.)
- **Non-reasoning**: any text file — JSONL with a ``"text"`` field (or another ``field``), or plain
  text, one item per paragraph (blank-line separated) — a saved ``datasets`` directory or, with
  the hub, a ``datasets`` name (its ``field`` column). Offline, the packaged
  :data:`PLAIN_PROSE` file: plain prose the offline model (Qwen2.5-Coder-1.5B-Instruct, not a
  reasoning model) wrote from everyday prompts with no thinking prompt
  (``scripts/build_plain_prose.py`` made it; each record keeps its prompt and settings).
  (Theirs: the uncopyrighted Pile.)
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from ...chat import THINK_CLOSE, THINK_OPEN
from ...corpus.traces import Trace, iter_traces, load_saved_dataset
from ...errors import ThinksaeError
from ...models.loading import hub_reachable

PLAIN_PROSE = Path(__file__).resolve().parents[2] / "data" / "plain_prose.jsonl"
"""The packaged offline non-reasoning set."""


def thinking_text(trace: Trace) -> str | None:
    """The text between ``<think>`` and ``</think>`` of a trace (None when it has no ``<think>``
    in its completion and its prompt does not end with one)."""
    completion = trace.completion
    at = completion.find(THINK_OPEN)
    if at >= 0:
        body = completion[at + len(THINK_OPEN):]
    elif trace.prompt.rstrip().endswith(THINK_OPEN):
        body = completion
    else:
        return None
    end = body.find(THINK_CLOSE)
    return body if end < 0 else body[:end]


def reasoning_pieces(traces_path: str | Path, tokenizer, max_tokens: int = 64,
                     limit: int | None = None) -> list[str]:
    """The reasoning set from a traces JSONL (module docstring), at most ``limit`` pieces."""
    path = Path(traces_path)
    if not path.is_file():
        raise ThinksaeError(f"traces not found: {path} (give the corpus traces JSONL `thinksae "
                            "corpus` wrote)")
    piece = max_tokens - len(tokenizer("", add_special_tokens=True)["input_ids"])
    if piece < 1:
        raise ThinksaeError(f"max_tokens {max_tokens} leaves no room beside the special tokens")
    out: list[str] = []
    for trace in iter_traces(path):
        body = thinking_text(trace)
        if not body:
            continue
        ids = tokenizer(body, add_special_tokens=False)["input_ids"]
        for s in range(0, len(ids) - piece + 1, piece):
            out.append(tokenizer.decode(ids[s: s + piece], skip_special_tokens=False,
                                        clean_up_tokenization_spaces=False))
            if limit is not None and len(out) >= limit:
                return out
    if not out:
        raise ThinksaeError(f"{path} has no thinking of {piece} tokens or more (no <think> "
                            "section?): no reasoning texts")
    return out


def _from_jsonl(path: Path, field: str) -> list[str]:
    out = []
    for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise ThinksaeError(f"{path}:{i}: not valid JSON ({e.msg}); give JSONL with a "
                                f"{field!r} field or plain text") from None
        if not isinstance(obj, dict) or not isinstance(obj.get(field), str):
            raise ThinksaeError(f"{path}:{i}: expected an object with a string {field!r} field")
        out.append(obj[field])
    return out


def _from_dataset(ds, field: str, source: str) -> list[str]:
    if field not in ds.column_names:
        raise ThinksaeError(f"{source} has no {field!r} column (it has {ds.column_names}); "
                            "name the text column")
    return [t for t in ds[field] if isinstance(t, str)]


def hub_texts(name: str, field: str = "text", split: str = "train", limit: int | None = None
              ) -> list[str]:
    """The ``field`` strings of the first ``limit`` records of a hub ``datasets`` dataset,
    streamed (the Pile is far larger than the few thousand texts the protocol reads)."""
    import datasets

    offline = any(os.environ.get(v, "0").lower() in ("1", "true", "yes")
                  for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"))
    if not offline and not hub_reachable():
        raise ThinksaeError(f"cannot load dataset {name!r}: the Hugging Face hub is unreachable; "
                            "give a local text file")
    out: list[str] = []
    try:
        for row in datasets.load_dataset(name, split=split, streaming=True):
            if field not in row:
                raise ThinksaeError(f"{name} has no {field!r} column (it has {sorted(row)}); "
                                    "name the text column")
            if isinstance(row[field], str) and row[field].strip():
                out.append(row[field])
            if limit is not None and len(out) >= limit:
                break
    except ThinksaeError:
        raise
    except Exception as e:  # network, missing dataset or split: one line for the user
        reason = (str(e).splitlines() or [type(e).__name__])[0][:200]
        raise ThinksaeError(f"cannot load dataset {name!r} ({reason}); give a local text file") \
            from None
    return out


def load_texts(source: str | Path, field: str = "text", split: str = "train",
               limit: int | None = None) -> list[str]:
    """Texts from a JSONL or plain-text file, a saved ``datasets`` directory or a hub
    ``datasets`` name (module docstring); blank texts dropped, at most ``limit``."""
    spec = str(source)
    path = Path(spec).expanduser()
    if path.is_file():
        try:
            head = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise ThinksaeError(f"cannot read {path} as UTF-8 text: {e}") from None
        if path.suffix in (".jsonl", ".json") or head.lstrip().startswith("{"):
            texts = _from_jsonl(path, field)
        else:
            texts = head.replace("\r\n", "\n").split("\n\n")
    elif path.is_dir():
        texts = _from_dataset(load_saved_dataset(path, split), field, spec)
    elif spec.startswith((".", "/", "~")) or spec.endswith((".jsonl", ".json", ".txt")):
        raise ThinksaeError(f"text file not found: {spec}")
    else:
        texts = hub_texts(spec, field, split, limit)
    texts = [t.strip() for t in texts if t.strip()]
    if not texts:
        raise ThinksaeError(f"{spec} holds no text (give JSONL with a {field!r} field or plain "
                            "text, one item per paragraph)")
    return texts[:limit] if limit is not None else texts


def plain_prose(limit: int | None = None) -> list[str]:
    """The packaged offline non-reasoning set (:data:`PLAIN_PROSE`)."""
    if not PLAIN_PROSE.is_file():
        raise ThinksaeError(f"the packaged plain-prose set is missing ({PLAIN_PROSE}); rebuild it "
                            "with scripts/build_plain_prose.py or give a text file")
    return load_texts(PLAIN_PROSE, limit=limit)


def text_sets(traces_path: str | Path, nonreasoning: str | Path | None, tokenizer,
              max_tokens: int = 64, n_texts: int | None = None, field: str = "text"
              ) -> tuple[list[str], list[str]]:
    """``(reasoning, non-reasoning)``: the run's thinking cut into pieces (:func:`reasoning_pieces`)
    and the texts of ``nonreasoning`` (:func:`load_texts`; None: the packaged plain prose), at
    most ``n_texts`` each. Needs only the tokenizer: call it before the model loads."""
    reasoning = reasoning_pieces(traces_path, tokenizer, max_tokens, limit=n_texts)
    other = (load_texts(nonreasoning, field=field, limit=n_texts) if nonreasoning is not None
             else plain_prose(limit=n_texts))
    return reasoning, other
