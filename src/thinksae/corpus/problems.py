"""Questions to generate traces from (built-in math problems, GSM8K, a file); answer checks."""

from __future__ import annotations

import ast
import dataclasses
import hashlib
import json
import math
import operator
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from ..chat import THINK_CLOSE
from ..errors import ThinksaeError
from .traces import load_hub_dataset

BUILTIN = "builtin"
GSM8K = "gsm8k"


@dataclass(frozen=True)
class Problem:
    """A question to ask the model, with its known numeric answer when there is one."""

    id: str
    question: str
    answer: float | None = None


def _problem_id(prefix: str, i: int) -> str:
    return f"{prefix}-{i:05d}"


def builtin_problems() -> list[Problem]:
    """The grade-school math word problems shipped with thinksae (``data/math_problems.jsonl``)."""
    text = resources.files("thinksae").joinpath("data/math_problems.jsonl").read_text("utf-8")
    rows = [json.loads(line) for line in text.splitlines() if line.strip()]
    return [Problem(str(r["id"]), r["question"], float(r["answer"])) for r in rows]


def _gsm8k_answer(solution: str) -> float | None:
    """GSM8K solutions end with ``#### <number>``."""
    _, sep, tail = solution.rpartition("####")
    return _parse_number(tail.strip()) if sep else None


def _load_gsm8k(split: str) -> list[Problem]:
    try:
        ds = load_hub_dataset("openai/gsm8k", "main", split=split)
    except ThinksaeError as e:
        raise ThinksaeError(f"{e}; or use --prompts builtin") from None
    return [Problem(_problem_id(f"gsm8k-{split}", i), row["question"],
                    _gsm8k_answer(row["answer"])) for i, row in enumerate(ds)]


def _load_file(path: Path) -> list[Problem]:
    """JSONL objects with a question (and optional id/answer), or plain text, one per line."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as e:
        raise ThinksaeError(f"cannot read prompts {path}: {e.strerror or e}") from None
    stem = path.stem
    problems = []
    for n, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        if path.suffix not in (".jsonl", ".json"):
            problems.append(Problem(_problem_id(stem, len(problems)), line.strip()))
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise ThinksaeError(f"{path}:{n}: not valid JSON ({e.msg})") from None
        question = next((row[k] for k in ("question", "problem", "prompt")
                         if isinstance(row, dict) and isinstance(row.get(k), str)), None)
        if question is None:
            raise ThinksaeError(f"{path}:{n}: no question/problem/prompt field")
        answer = row.get("answer")
        if isinstance(answer, str):
            answer = _gsm8k_answer(answer) if "####" in answer else _parse_number(answer)
        elif isinstance(answer, (int, float)) and not isinstance(answer, bool):
            answer = float(answer)
        else:
            answer = None
        pid = str(row["id"]) if row.get("id") is not None else _problem_id(stem, len(problems))
        problems.append(Problem(pid, question, answer))
    return problems


def load_prompts(source: str = BUILTIN, limit: int | None = None) -> list[Problem]:
    """Questions from ``builtin``, ``gsm8k`` (test split; ``gsm8k:train`` for another split, needs
    the hub) or a file: JSONL with a ``question`` field per line, or plain text, one per line."""
    if source == BUILTIN:
        problems = builtin_problems()
    elif source == GSM8K or source.startswith(GSM8K + ":"):
        problems = _load_gsm8k(source.partition(":")[2] or "test")
    else:
        path = Path(source).expanduser()
        if not path.is_file():
            raise ThinksaeError(
                f"prompts {source!r}: not 'builtin', 'gsm8k' or an existing file"
            )
        problems = _load_file(path)
    if not problems:
        raise ThinksaeError(f"prompts {source!r} hold no questions")
    return problems if limit is None else problems[:limit]


_NUMBER = re.compile(
    r"(?<![\w.])(?P<sign>[-−])?\$?"
    r"(?P<num>\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+(?:\.\d+)?|\.\d+)"
    r"(?:\s*/\s*(?P<den>\d+(?:\.\d+)?)(?![\d.]))?"
)
_FRAC = re.compile(r"\\[dt]?frac\s*\{\s*([-−]?[\d.,]+)\s*\}\s*\{\s*([\d.,]+)\s*\}")


def _parse_number(text: str) -> float | None:
    """The last number in ``text`` (commas, ``$``, minus signs, decimals, ``a/b``, ``\\frac``)."""
    text = text.replace("{,}", ",").replace("\\,", ",")  # LaTeX thousands separators
    text = _FRAC.sub(lambda m: f" {m[1]}/{m[2]} ", text)
    value = None
    for m in _NUMBER.finditer(text):
        number = float(m["num"].replace(",", ""))
        if m["den"] is not None:
            den = float(m["den"])
            if den == 0:
                continue
            number /= den
        value = -number if m["sign"] else number
    return value


def _last_boxed(text: str) -> str | None:
    """Contents of the last ``\\boxed{...}`` (balanced braces), if any."""
    at = text.rfind("\\boxed")
    while at >= 0:
        i = text.find("{", at)
        if i >= 0 and text[at + len("\\boxed"):i].strip() == "":
            depth = 0
            for j in range(i, len(text)):
                depth += {"{": 1, "}": -1}.get(text[j], 0)
                if depth == 0:
                    return text[i + 1:j]
        at = text.rfind("\\boxed", 0, at)
    return None


def extract_numeric_answer(text: str) -> float | None:
    """The model's numeric answer.

    Looks at the text after ``</think>`` when there is one: the last ``\\boxed{...}`` there if
    any, else the last number (``1,234``, ``$5``, ``-3``, ``2.5``, ``3/4``, ``\\frac{3}{4}``).
    """
    if THINK_CLOSE in text:
        text = text.rsplit(THINK_CLOSE, 1)[1]
    boxed = _last_boxed(text)
    if boxed is not None:
        value = _parse_number(boxed)
        if value is not None:
            return value
    return _parse_number(text)


def answers_match(pred: float | str | None, ref: float | str | None, rel_tol: float = 1e-6) -> bool:
    """Whether two answers are the same number (strings are parsed with the rules above)."""
    if isinstance(pred, str):
        pred = extract_numeric_answer(pred)
    if isinstance(ref, str):
        ref = extract_numeric_answer(ref)
    if pred is None or ref is None:
        return False
    return math.isclose(float(pred), float(ref), rel_tol=rel_tol, abs_tol=1e-9)


_BINARY = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul,
           ast.Div: operator.truediv, ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod,
           ast.Pow: operator.pow}
_UNARY = {ast.USub: operator.neg, ast.UAdd: operator.pos}


def safe_arithmetic(expr: str) -> float:
    """Value of an arithmetic expression of numbers, ``+ - * / // % **`` and parentheses only."""

    def value(node: ast.AST) -> float:
        if isinstance(node, ast.Expression):
            return value(node.body)
        if isinstance(node, ast.Constant) and type(node.value) in (int, float):
            return node.value
        if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
            left, right = value(node.left), value(node.right)
            if isinstance(node.op, ast.Pow) and abs(right) > 64:
                raise ThinksaeError(f"exponent too large in {expr!r}")
            return _BINARY[type(node.op)](left, right)
        if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
            return _UNARY[type(node.op)](value(node.operand))
        raise ThinksaeError(f"not plain arithmetic: {ast.dump(node)[:60]} in {expr!r}")

    try:
        tree = ast.parse(expr, mode="eval")
    except SyntaxError:
        raise ThinksaeError(f"not an arithmetic expression: {expr!r}") from None
    return float(value(tree))


SAMPLE_SEP = "#"
"""Separates a question's id from the sample number in trace ids (``<question id>#<n>``)."""


def question_of(trace_id: str) -> str:
    """The question id of a trace id (``gsm8k-00012#3`` → ``gsm8k-00012``; an id without a
    sample number is its own question)."""
    head, sep, tail = trace_id.rpartition(SAMPLE_SEP)
    return head if sep and tail.isdigit() else trace_id


def question_id(question: str) -> str:
    """A stable id for a question given without one: a short hash of its text."""
    return "q-" + hashlib.sha256(question.encode("utf-8")).hexdigest()[:12]


def as_problem(item: Problem | str | dict) -> Problem:
    if isinstance(item, Problem):
        return item
    if isinstance(item, str):
        return Problem(question_id(item), item)
    if isinstance(item, dict) and isinstance(item.get("question"), str):
        answer = item.get("answer")
        if isinstance(answer, str):
            answer = extract_numeric_answer(answer)
        return Problem(str(item.get("id") or question_id(item["question"])), item["question"],
                       None if answer is None else float(answer))
    raise ThinksaeError(f"cannot use {type(item).__name__} as a question")


def repeat_problems(problems: list[Problem], samples: int, do_sample: bool) -> list[Problem]:
    """Each problem ``samples`` times, as ``<id>#0``, ``<id>#1``, ... (question-major order);
    the problems as they are for one sample."""
    if samples < 1:
        raise ThinksaeError(f"samples must be at least 1, got {samples}")
    if samples == 1:
        return problems
    if not do_sample:
        raise ThinksaeError(f"samples {samples} needs --do_sample: greedy decoding would write "
                            "the same trace each time")
    return [dataclasses.replace(p, id=f"{p.id}{SAMPLE_SEP}{n}") for p in problems
            for n in range(samples)]
