"""Reasoning traces: prompt + thinking + answer, stored one JSON object per line.

A :class:`Trace` keeps the exact chat-templated prompt that was fed to the model and the text the
model wrote after it, so that ``trace.full_text`` re-tokenizes to what the model saw. Traces come
from our own JSONL files, from ``datasets`` records in a few common layouts, or from generation.
"""

from __future__ import annotations

import dataclasses
import json
import os
import warnings
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import atomic
from ..chat import THINK_CLOSE, THINK_OPEN, render_chat
from ..env import hub_offline
from ..errors import ThinksaeError
from ..models.loading import hub_reachable

ASSISTANT_MARKERS = (
    "<｜Assistant｜>",  # DeepSeek-R1 / R1-Distill
    "<|im_start|>assistant\n",  # Qwen / ChatML
    "<|start_header_id|>assistant<|end_header_id|>\n\n",  # Llama 3
    "<|assistant|>\n",  # Phi / Zephyr style
)
"""Text that ends a chat prompt and starts the assistant's turn, tried in this order."""

_QUESTION_FIELDS = ("question", "problem", "prompt", "input", "instruction")
_THINKING_FIELDS = ("thinking", "reasoning", "reasoning_content", "think", "thought", "cot")
_ANSWER_FIELDS = ("answer", "response", "final_answer", "output", "solution")
_SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
                   "system": "system"}


@dataclass
class Trace:
    """One reasoning trace: the templated prompt and what the model wrote after it."""

    id: str
    prompt: str
    """The fully chat-templated prompt text, exactly what was fed to the model."""
    completion: str
    """What the model wrote after the prompt: thinking, ``</think>``, answer (maybe EOS text)."""
    question: str = ""
    """The raw user question, if known."""
    reference_answer: str | None = None
    """The known correct answer (e.g. the number of a math problem), if any."""
    meta: dict = field(default_factory=dict)
    """Free-form provenance (source, model, generation settings, ...)."""

    @property
    def full_text(self) -> str:
        """Prompt followed by completion: the text to tokenize."""
        return self.prompt + self.completion

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict of all fields."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Trace:
        """Build a trace from a dict; keys that are not fields go into ``meta``."""
        missing = [k for k in ("id", "prompt", "completion") if k not in data]
        if missing:
            raise ThinksaeError(f"trace record lacks {missing} (has {sorted(data)})")
        names = {f.name for f in dataclasses.fields(cls)}
        known = {k: v for k, v in data.items() if k in names}
        extra = {k: v for k, v in data.items() if k not in names}
        known["id"] = str(known["id"])
        ref = known.get("reference_answer")
        if ref is not None and not isinstance(ref, str):
            known["reference_answer"] = str(ref)
        meta = dict(known.pop("meta", None) or {})
        meta.update(extra)
        return cls(**known, meta=meta)


def _json_lines(path: Path) -> Iterator[tuple[int, dict]]:
    """``(line number, object)`` for each non-blank line; an unterminated, broken last line
    (an append cut short by a crash) is skipped with a warning."""
    try:
        data = path.read_bytes()
    except OSError as e:
        raise ThinksaeError(f"cannot read {path}: {e.strerror or e}") from None
    lines = data.split(b"\n")
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            obj = json.loads(line.decode("utf-8"))
        except ValueError as e:  # JSONDecodeError or UnicodeDecodeError
            if i == len(lines) - 1:  # no newline after it: an interrupted append
                warnings.warn(f"{path}: ignoring an incomplete last line", stacklevel=3)
                return
            reason = e.msg if isinstance(e, json.JSONDecodeError) else "not UTF-8"
            raise ThinksaeError(f"{path}:{i + 1}: not valid JSON ({reason})") from None
        if not isinstance(obj, dict):
            raise ThinksaeError(f"{path}:{i + 1}: expected a JSON object, got {type(obj).__name__}")
        yield i + 1, obj


def iter_traces(path: str | os.PathLike) -> Iterator[Trace]:
    """Yield the traces of a JSONL file one by one."""
    path = Path(path)
    for lineno, obj in _json_lines(path):
        try:
            yield Trace.from_dict(obj)
        except (ThinksaeError, TypeError) as e:
            raise ThinksaeError(f"{path}:{lineno}: {e}") from None


def read_traces(path: str | os.PathLike) -> list[Trace]:
    """All traces of a JSONL file."""
    return list(iter_traces(path))


def _trace_line(trace: Trace) -> str:
    return json.dumps(trace.to_dict(), ensure_ascii=False)


def write_traces(traces: Iterable[Trace], path: str | os.PathLike) -> None:
    """Atomically replace ``path`` with the traces as JSONL."""
    data = "".join(_trace_line(t) + "\n" for t in traces)
    atomic.write_bytes(path, data.encode("utf-8"))


def append_trace(path: str | os.PathLike, trace: Trace) -> None:
    """Append one trace as one JSON line (a crash loses at most this trace)."""
    append_traces(path, [trace])


def append_traces(path: str | os.PathLike, traces: Sequence[Trace]) -> None:
    """Append traces as JSON lines in one write (a crash may cut it short; readers drop a cut
    last line)."""
    if not traces:
        return
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    atomic.append_line(path, "\n".join(_trace_line(t).rstrip("\n") for t in traces))


def _strip_duplicate_open(prompt: str, completion: str) -> str:
    """Drop a leading ``<think>`` from the completion when the prompt already ends with one."""
    if prompt.rstrip().endswith(THINK_OPEN) and completion.lstrip().startswith(THINK_OPEN):
        rest = completion.lstrip()[len(THINK_OPEN):]
        if prompt.endswith("\n") and rest.startswith("\n"):
            rest = rest[1:]
        return rest
    return completion


def split_at_assistant(text: str) -> tuple[str, str] | None:
    """Split full text into (prompt, completion) after the last assistant marker, if any."""
    for marker in ASSISTANT_MARKERS:
        at = text.rfind(marker)
        if at >= 0:
            cut = at + len(marker)
            return text[:cut], text[cut:]
    return None


def _first(record: dict, names: tuple[str, ...]) -> str | None:
    for name in names:
        value = record.get(name)
        if isinstance(value, str):
            return value
    return None


def _normalise_messages(raw: list) -> list[dict[str, str]]:
    out = []
    for m in raw:
        if not isinstance(m, dict):
            raise ThinksaeError(f"chat messages must be objects, got {type(m).__name__}")
        role = m.get("role", m.get("from"))
        content = m.get("content", m.get("value"))
        if role not in _SHAREGPT_ROLES or not isinstance(content, str):
            raise ThinksaeError(f"unreadable chat message with keys {sorted(m)} (role {role!r})")
        out.append({"role": _SHAREGPT_ROLES[role], "content": content})
    return out


def _from_record(record: dict, tokenizer) -> tuple[str, str, str, str]:
    """``(layout, prompt, completion, question)`` of one record."""
    if isinstance(record.get("prompt"), str) and isinstance(record.get("completion"), str):
        return "trace", record["prompt"], record["completion"], record.get("question") or ""
    if isinstance(record.get("text"), str):
        split = split_at_assistant(record["text"])
        prompt, completion = split if split else ("", record["text"])
        return "text", prompt, completion, ""
    raw = record.get("messages", record.get("conversations"))
    if isinstance(raw, list) and raw:
        messages = _normalise_messages(raw)
        if messages[-1]["role"] != "assistant":
            raise ThinksaeError("the last chat message is not the assistant's: nothing to trace")
        prompt = render_chat(tokenizer, messages[:-1])
        users = [m["content"] for m in messages if m["role"] == "user"]
        completion = _strip_duplicate_open(prompt, messages[-1]["content"])
        return "messages", prompt, completion, users[-1] if users else ""
    question, thinking = _first(record, _QUESTION_FIELDS), _first(record, _THINKING_FIELDS)
    if question is not None and thinking is not None:
        answer = _first(record, _ANSWER_FIELDS) or ""
        prompt = render_chat(tokenizer, [{"role": "user", "content": question}])
        body = f"{thinking}\n{THINK_CLOSE}\n\n{answer}"
        if prompt.rstrip().endswith(THINK_OPEN):
            completion = body if prompt.endswith("\n") else "\n" + body
        else:
            completion = f"{THINK_OPEN}\n{body}"
        return "question", prompt, completion, question
    raise ThinksaeError(
        f"cannot read traces from records with fields {sorted(record)}: expected "
        "prompt/completion, text, messages (or conversations), or question/thinking/answer"
    )


def traces_from_records(
    records: Iterable[dict],
    tokenizer=None,
    limit: int | None = None,
    source: str = "",
) -> list[Trace]:
    """Build traces from a ``datasets`` dataset or a list of dicts.

    Layouts (detected per record): ``prompt``/``completion`` (our own); ``text`` (full text, split
    after the last assistant marker when there is one); ``messages`` or ShareGPT ``conversations``
    (earlier turns rendered with the chat template, the final assistant turn is the completion);
    ``question`` + ``thinking`` (+ ``answer``), templated as ``<think>\\n…\\n</think>\\n\\n…``.
    """
    traces = []
    for i, record in enumerate(records):
        if limit is not None and i >= limit:
            break
        record = dict(record)
        layout, prompt, completion, question = _from_record(record, tokenizer)
        ref = record.get("reference_answer")
        meta = dict(record.get("meta") or {}) if isinstance(record.get("meta"), dict) else {}
        meta.setdefault("layout", layout)
        if source:
            meta.setdefault("source", source)
        traces.append(Trace(
            id=str(record["id"]) if record.get("id") is not None else f"trace-{i:06d}",
            prompt=prompt,
            completion=completion,
            question=question or "",
            reference_answer=None if ref is None else str(ref),
            meta=meta,
        ))
    return traces


def _hub_error(source: str, reason: str) -> ThinksaeError:
    return ThinksaeError(
        f"cannot load dataset {source!r} from the Hugging Face hub ({reason}); "
        "pass a local JSONL file or a saved datasets directory instead"
    )


def load_saved_dataset(path: Path, split: str = "train"):
    """A ``datasets`` directory saved with ``save_to_disk`` (split ``split`` of a DatasetDict),
    or one clear error."""
    import datasets

    try:
        ds = datasets.load_from_disk(str(path))
    except (FileNotFoundError, ValueError) as e:
        raise ThinksaeError(f"{path} is not a saved datasets directory: {e}") from None
    if isinstance(ds, datasets.DatasetDict):
        if split not in ds:
            raise ThinksaeError(f"{path} has splits {list(ds)}, not {split!r}")
        ds = ds[split]
    return ds


def load_hub_dataset(source: str, *args, split: str = "train"):
    """``datasets.load_dataset(source, *args, split=split)`` with one clear error when offline."""
    import datasets

    if not hub_offline() and not hub_reachable():
        raise _hub_error(source, "the hub is unreachable")
    try:
        return datasets.load_dataset(source, *args, split=split)
    except Exception as e:  # network, missing dataset, missing split: one line for the user
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise _hub_error(source, reason[:200]) from None


def load_traces(
    source: str | os.PathLike,
    tokenizer=None,
    split: str = "train",
    limit: int | None = None,
) -> list[Trace]:
    """Traces from a JSONL file, a local ``datasets`` directory (``save_to_disk``) or a hub id.

    ``tokenizer`` is needed only for records whose prompt must be chat-templated.
    """
    spec = str(source)
    path = Path(spec).expanduser()
    if path.is_file():
        records = (obj for _, obj in _json_lines(path))
        return traces_from_records(records, tokenizer, limit=limit, source=spec)
    if path.is_dir():
        return traces_from_records(load_saved_dataset(path, split), tokenizer, limit=limit,
                                   source=spec)
    looks_local = spec.startswith((".", "/", "~")) or spec.count("/") > 1
    if looks_local or spec.endswith((".jsonl", ".json", ".txt")):
        raise ThinksaeError(f"traces not found: {spec} (no such file or directory)")
    ds = load_hub_dataset(spec, split=split)
    if limit is not None:
        ds = ds.select(range(min(limit, len(ds))))
    return traces_from_records(ds, tokenizer, source=spec)
