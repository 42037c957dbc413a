"""Generate reasoning traces with a model, appending each to JSONL as it is made (resumable)."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ..errors import ThinksaeError
from ..generation import GenerationConfig
from .problems import Problem, extract_numeric_answer
from .traces import THINK_CLOSE, THINK_OPEN, Trace, append_traces, iter_traces, render_chat

THINK_SYSTEM_PROMPT = (
    "Think step by step inside <think> </think> tags, then give the final answer."
)
"""A system prompt that makes a non-reasoning chat model write a thinking section."""

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


def _as_problem(item: Problem | str | dict) -> Problem:
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


def build_prompt(tokenizer, question: str, system_prompt: str | None = None,
                 think_prefill: bool = False) -> str:
    """The chat-templated prompt for ``question``; a system prompt the template rejects (or
    silently drops) is folded into the user message instead. ``think_prefill`` ends the prompt
    with ``<think>\n`` (as the current R1 hub template does) unless the template already did,
    so that the model starts inside its thinking."""
    text = _templated(tokenizer, question, system_prompt)
    if think_prefill and not text.rstrip().endswith(THINK_OPEN):
        text += f"{THINK_OPEN}\n"
    return text


def _templated(tokenizer, question: str, system_prompt: str | None) -> str:
    user = {"role": "user", "content": question}
    if not system_prompt:
        return render_chat(tokenizer, [user])
    try:
        text = render_chat(tokenizer, [{"role": "system", "content": system_prompt}, user])
    except ThinksaeError:
        text = None
    if text is None or system_prompt not in text:
        folded = {"role": "user", "content": f"{system_prompt}\n\n{question}"}
        text = render_chat(tokenizer, [folded])
    return text


def _done_ids(out_path: Path) -> dict[str, Trace]:
    """Traces already in ``out_path`` by id. An unterminated last line is a write cut short by
    a crash: it is cut off (or, if it is whole JSON, ended) so that new lines start clean."""
    if not out_path.exists():
        return {}
    data = out_path.read_bytes()
    if data and not data.endswith(b"\n"):
        cut = data.rfind(b"\n") + 1
        try:
            json.loads(data[cut:])
        except ValueError:
            with open(out_path, "r+b") as f:
                f.truncate(cut)
                os.fsync(f.fileno())
        else:
            with open(out_path, "ab") as f:
                f.write(b"\n")
                os.fsync(f.fileno())
    return {t.id: t for t in iter_traces(out_path)}


def all_done(out_path: str | os.PathLike, ids: Sequence[str]) -> bool:
    """Whether every id in ``ids`` already has a whole trace line in ``out_path`` (read only: a
    cut-short last line does not count and is left for the resuming run to repair)."""
    path = Path(out_path)
    if not path.is_file():
        return False
    done = set()
    for line in path.read_bytes().split(b"\n")[:-1]:  # whole lines only
        try:
            done.add(json.loads(line).get("id"))
        except (ValueError, AttributeError):
            continue
    return set(ids) <= done


def stop_ids(model, tokenizer) -> list[int]:
    """EOS ids of the tokenizer and the model's generation config, and the pad id."""
    return token_stops(tokenizer, getattr(getattr(model, "generation_config", None), "eos_token_id", None))


def token_stops(tokenizer, extra_eos: int | Sequence[int] | None = None) -> list[int]:
    """The tokenizer's EOS id, ``extra_eos`` (an engine's own end-of-generation ids) and the pad id."""
    ids = set()
    for source in (tokenizer.eos_token_id, extra_eos):
        if isinstance(source, int):
            ids.add(source)
        elif source is not None:
            ids.update(int(i) for i in source)
    if not ids:
        raise ThinksaeError("the tokenizer has no end-of-sequence token: cannot stop generation")
    if tokenizer.pad_token_id is not None:
        ids.add(int(tokenizer.pad_token_id))
    return sorted(ids)


def trim_at_stop(new_ids: list[int], stop: set[int], pad_id: int | None) -> tuple[list[int], bool]:
    """Generated ids up to (not including) the first stop token; whether it stopped."""
    for i, t in enumerate(new_ids):
        if t in stop:
            return new_ids[:i], True
    while new_ids and new_ids[-1] == pad_id:
        new_ids = new_ids[:-1]
    return new_ids, False


def still_thinking(prompt: str, completion: str) -> bool:
    """Whether a trace's thinking was opened (in the prompt or the completion) and never closed."""
    opened = prompt.rstrip().endswith(THINK_OPEN) or THINK_OPEN in completion
    return opened and THINK_CLOSE not in completion


def close_thinking(completion: str) -> str:
    """``completion`` with its thinking closed, ready for the answer to follow."""
    return completion + ("" if completion.endswith("\n") else "\n") + f"{THINK_CLOSE}\n\n"


def left_pad(tokenizer, prompts: list[str], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids of the prompts (no added special tokens: the template has them), left-padded."""
    rows = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        if r:
            ids[i, width - len(r):] = torch.as_tensor(r)
            mask[i, width - len(r):] = 1
    return ids, mask


@torch.inference_mode()
def generate_traces(
    model,
    tokenizer,
    questions: Sequence[Problem | str | dict],
    out_path: str | os.PathLike,
    generation: GenerationConfig | None = None,
    batch_size: int | str = 8,
    progress: bool = True,
    answer_tokens: int = 0,
    engine=None,
) -> list[Trace]:
    """Generate one trace per question and append each to ``out_path`` as soon as it is made.

    Questions whose id is already in ``out_path`` are skipped (resume). Prompts are
    chat-templated (with ``generation.system_prompt`` if given, ``<think>\n`` appended with
    ``think_prefill``), batched (``batch_size`` questions, or ``"auto"``: see
    :func:`~thinksae.corpus.engines.auto_batch_size`) and generated by ``engine`` (default: the
    Hugging Face ``model``, left-padded; see :mod:`thinksae.corpus.engines`) until EOS (or a pad
    token) or ``max_new_tokens``; the new token ids are decoded by ``tokenizer`` with special
    tokens kept and the trailing EOS/padding removed. Knobs not in ``generation`` (top_k,
    repetition penalty, ...) are the model's generation-config defaults on the HF engine.
    Sampling is seeded from ``generation.seed`` and the question ids, so a resumed run samples
    like an uninterrupted one.
    With ``answer_tokens``, a trace that stops still inside its thinking (end of text, or the
    token budget) gets ``</think>`` appended and up to ``answer_tokens`` more tokens generated
    after it (budget forcing, as in s1): every trace then has an answer; ``meta`` says
    ``forced_answer`` (and ``engine`` which engine wrote it). Returns the traces of all
    ``questions``, in order.
    """
    from .engines import HFEngine, auto_batch_size, check_batch_size

    gen = generation or GenerationConfig()
    check_batch_size(batch_size)
    gen.check()
    if answer_tokens < 0:
        raise ThinksaeError(f"answer_tokens must be >= 0, got {answer_tokens}")
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    problems = list({p.id: p for p in map(_as_problem, questions)}.values())
    prompts = {p.id: build_prompt(tokenizer, p.question, gen.system_prompt, gen.think_prefill)
               for p in problems}
    max_new_tokens = gen.max_new_tokens
    if engine is None:
        engine = HFEngine(model, tokenizer, gen)
    if batch_size == "auto":
        batch_size = auto_batch_size(engine, tokenizer, list(prompts.values()),
                                     max_new_tokens + answer_tokens)
    done = _done_ids(out_path)
    # Batches are fixed slices of the whole question list, so a resumed run generates exactly the
    # batches (same rows, same padding) an uninterrupted one would; a batch cut short is redone.
    batches = [problems[i:i + batch_size] for i in range(0, len(problems), batch_size)]
    todo = [b for b in batches if any(p.id not in done for p in b)]
    settings = _trace_settings(engine, gen, answer_tokens)

    bar = tqdm(total=len(problems), initial=len(problems) - sum(map(len, todo)), desc="generate",
               unit="trace", disable=not progress)
    try:
        for batch in todo:
            made = _generate_batch(engine, tokenizer, batch, [prompts[p.id] for p in batch],
                                   max_new_tokens, answer_tokens, settings, done)
            append_traces(out_path, made)  # one write per batch: a batch lands whole or not at all
            for trace in made:
                done[trace.id] = trace
            bar.update(len(made))
    finally:
        bar.close()
    return [done[p.id] for p in problems]


def _trace_settings(engine, gen: GenerationConfig, answer_tokens: int) -> dict:
    """What every trace's ``meta`` records of how it was generated (options at their off
    value are left out, as traces written before them have none)."""
    settings = {"model": engine.model_name, "engine": engine.name, "do_sample": gen.do_sample,
                "max_new_tokens": gen.max_new_tokens, "seed": gen.seed,
                **(dict(temperature=gen.temperature, top_p=gen.top_p) if gen.do_sample else {})}
    if gen.system_prompt:
        settings["system_prompt"] = gen.system_prompt
    if gen.think_prefill:
        settings["think_prefill"] = True
    if answer_tokens:
        settings["answer_tokens"] = answer_tokens
    return settings


def _generate_batch(engine, tokenizer, batch: list[Problem], prompts: list[str],
                    max_new_tokens: int, answer_tokens: int, settings: dict,
                    done: dict[str, Trace]) -> list[Trace]:
    """The traces of one batch's questions not in ``done``: thinking, then (budget forcing) the
    answers of the rows whose thinking is still open."""

    def decode(ids: list[int]) -> str:
        return tokenizer.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)

    rows = engine.generate(prompts, [p.id for p in batch], max_new_tokens)
    completions = [decode(ids) for ids, _ in rows]
    forced = [answer_tokens > 0 and still_thinking(p, c) for p, c in zip(prompts, completions)]
    answers: dict[int, tuple[list[int], bool]] = {}
    if any(forced):
        which = [i for i, f in enumerate(forced) if f]
        closed = [close_thinking(completions[i]) for i in which]
        more = engine.generate([prompts[i] + closed[j] for j, i in enumerate(which)],
                               [batch[i].id for i in which], answer_tokens, stage="answer")
        for j, i in enumerate(which):
            answers[i] = more[j]
            completions[i] = closed[j] + decode(more[j][0])
    made = []
    for row, (problem, prompt) in enumerate(zip(batch, prompts, strict=True)):
        if problem.id in done:
            continue
        new_ids, finished = rows[row]
        meta = {**settings, "finished": finished, "num_new_tokens": len(new_ids)}
        if row in answers:
            meta.update(forced_answer=True, thinking_finished=finished,
                        finished=answers[row][1], answer_new_tokens=len(answers[row][0]))
        answer = problem.answer
        made.append(Trace(
            id=problem.id, prompt=prompt, completion=completions[row], question=problem.question,
            reference_answer=None if answer is None else _format_number(answer), meta=meta,
        ))
    return made


def _format_number(x: float) -> str:
    """``12.0`` → ``"12"``, ``2.5`` → ``"2.5"``."""
    return str(int(x)) if float(x).is_integer() else repr(float(x))
