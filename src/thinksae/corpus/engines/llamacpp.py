"""The llama.cpp engine: a GGUF model run as it is (quantised) on CPU, several sequences at once.

llama-cpp-python's high-level ``Llama`` runs one sequence at a time; here its low-level API decodes
a ``llama_batch`` holding one token of every running sequence per step (each sequence its own KV
cache slot, ``seq_id``), after prefilling each prompt on its own. The context of the last call is
kept: a prompt that extends what a sequence of it already holds (budget forcing's answer pass is
the thinking plus ``</think>``, under the same question id) is fed only its new tokens, instead
of the whole prompt and thinking again. In a fresh context the start the prompts share (chat
template and system prompt) is computed once and copied to every sequence. The loop (budget,
stop tokens, positions) lives in :class:`LlamaCppEngine`; the ctypes calls in
:class:`LlamaCppBackend`, so that a fake backend can test the loop without the compiled package.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass

from ...chat import token_stops
from ...errors import ThinksaeError
from ...generation import GenerationConfig
from .base import Row

AUTO_BATCH = 32
"""Sequences decoded together by `batch_size: auto`. Measured on the offline GGUF (2-core AMD EPYC,
bench/generate.py): 25, 45 and 53 tok/s with 8, 16 and 32 together."""

PREFILL_CHUNK = 512
"""Most prompt tokens per ``llama_decode`` call (``n_batch``)."""

ROOM_SLACK = 16
"""Tokens of room per sequence beyond its longest prompt and twice the budget (see
:class:`LlamaCppEngine`): the ``</think>`` closing a forced answer and what retokenizing moves."""


def cpu_threads() -> int:
    """Cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


class LlamaCppBackend:
    """The llama.cpp model of one GGUF file and, per :meth:`session`, a context holding
    ``n_seqs`` sequences with one sampler each."""

    def __init__(self, path: str | os.PathLike, n_threads: int | None = None):
        import llama_cpp as lc

        logging.getLogger("llama-cpp-python").setLevel(logging.ERROR)  # its load chatter
        self.lc, self.n_threads = lc, n_threads or cpu_threads()
        lc.llama_backend_init()
        self.model = lc.llama_model_load_from_file(str(path).encode(), lc.llama_model_default_params())
        if not self.model:
            raise ThinksaeError(f"llama.cpp cannot load {path}")
        self.vocab = lc.llama_model_get_vocab(self.model)
        self.n_vocab = lc.llama_vocab_n_tokens(self.vocab)
        self.max_seqs = int(getattr(lc, "llama_max_parallel_sequences", lambda: 64)())

    def eos_ids(self) -> list[int]:
        """The model's end-of-sequence and end-of-turn tokens."""
        ids = (self.lc.llama_vocab_eos(self.vocab), self.lc.llama_vocab_eot(self.vocab))
        return sorted({int(i) for i in ids if i >= 0})

    def _sampler(self, sampling: GenerationConfig, seed: int):
        lc = self.lc
        chain = lc.llama_sampler_chain_init(lc.llama_sampler_chain_default_params())
        if not sampling.do_sample:
            lc.llama_sampler_chain_add(chain, lc.llama_sampler_init_greedy())
            return chain
        # the order of transformers' warpers: temperature, then nucleus, then draw
        lc.llama_sampler_chain_add(chain, lc.llama_sampler_init_temp(sampling.temperature))
        lc.llama_sampler_chain_add(chain, lc.llama_sampler_init_top_p(sampling.top_p, 1))
        lc.llama_sampler_chain_add(chain, lc.llama_sampler_init_dist(seed))
        return chain

    @contextlib.contextmanager
    def session(self, n_ctx: int, sampling: GenerationConfig, seeds: list[int]) -> Iterator[_Session]:
        """A fresh context for ``len(seeds)`` sequences of ``n_ctx`` tokens in all."""
        lc = self.lc
        params = lc.llama_context_default_params()
        params.n_ctx, params.n_seq_max = n_ctx, len(seeds)
        params.n_batch = params.n_ubatch = PREFILL_CHUNK
        params.n_threads = params.n_threads_batch = self.n_threads
        ctx = lc.llama_init_from_model(self.model, params)
        if not ctx:
            raise ThinksaeError(f"llama.cpp cannot make a context of {n_ctx} tokens")
        batch = lc.llama_batch_init(max(PREFILL_CHUNK, len(seeds)), 0, 1)
        session = _Session(lc, ctx, batch, lambda seed: self._sampler(sampling, seed))
        session.samplers = [session.make_sampler(s) for s in seeds]
        try:
            yield session
        finally:
            for s in session.samplers:
                lc.llama_sampler_free(s)
            lc.llama_batch_free(batch)
            lc.llama_free(ctx)

    def close(self) -> None:
        if self.model:
            self.lc.llama_model_free(self.model)
            self.model = None


class _Session:
    """One context: prefill a sequence, or decode one token of several, and sample."""

    def __init__(self, lc, ctx, batch, make_sampler):
        self.lc, self.ctx, self.batch, self.make_sampler = lc, ctx, batch, make_sampler
        self.samplers: list = []

    def forget(self, seq: int, keep: int) -> None:
        """Drop what sequence ``seq`` holds from position ``keep`` on."""
        if not self.lc.llama_memory_seq_rm(self.lc.llama_get_memory(self.ctx), seq, keep, -1):
            raise ThinksaeError(f"llama.cpp could not trim sequence {seq} to {keep} tokens")

    def share_prefix(self, seqs: list[int], ids: list[int]) -> None:
        """Feed ``ids`` to the first of ``seqs`` (all empty) and copy it to the others: each then
        holds ``ids``, computed once. (Between KV streams llama.cpp copies whole sequences only.)"""
        for start in range(0, len(ids), PREFILL_CHUNK):
            self._decode([(seqs[0], t, start + j, False)
                          for j, t in enumerate(ids[start:start + PREFILL_CHUNK])])
        memory = self.lc.llama_get_memory(self.ctx)
        for seq in seqs[1:]:
            self.lc.llama_memory_seq_cp(memory, seqs[0], seq, -1, -1)

    def reseed(self, seq: int, seed: int) -> None:
        """A fresh sampler for sequence ``seq``."""
        self.lc.llama_sampler_free(self.samplers[seq])
        self.samplers[seq] = self.make_sampler(seed)

    def _decode(self, entries: list[tuple[int, int, int, bool]]) -> None:
        """Decode (seq, token, pos, wants logits) entries as one batch."""
        b = self.batch
        b.n_tokens = len(entries)
        for j, (seq, token, pos, logits) in enumerate(entries):
            b.token[j], b.pos[j], b.n_seq_id[j], b.logits[j] = token, pos, 1, logits
            b.seq_id[j][0] = seq
        rc = self.lc.llama_decode(self.ctx, b)
        if rc != 0:
            raise ThinksaeError(f"llama_decode failed (code {rc}): context too small or invalid tokens")

    def prefill(self, seq: int, ids: list[int], held: int = 0) -> int:
        """Feed a prompt to sequence ``seq``, which already holds its first ``held`` ids; its
        first new token."""
        for start in range(held, len(ids), PREFILL_CHUNK):
            chunk = ids[start:start + PREFILL_CHUNK]
            last = start + len(chunk) == len(ids)
            self._decode([(seq, t, start + j, last and j == len(chunk) - 1)
                          for j, t in enumerate(chunk)])
        return int(self.lc.llama_sampler_sample(self.samplers[seq], self.ctx, -1))

    def step(self, seqs: list[int], tokens: list[int], positions: list[int]) -> list[int]:
        """Feed one token to each of ``seqs`` (at ``positions``); the next token of each."""
        self._decode([(s, t, p, True) for s, t, p in zip(seqs, tokens, positions)])
        return [int(self.lc.llama_sampler_sample(self.samplers[s], self.ctx, j))
                for j, s in enumerate(seqs)]


@dataclass
class _KeptSession:
    """The last call's context, left open: which sequence holds which question, and its ids."""

    stack: contextlib.ExitStack
    session: _Session
    per_seq: int
    """Tokens each sequence has room for."""
    seq_of: dict[str, int]
    ids_of: dict[int, list[int]]
    """Per sequence, the ids its KV cache holds."""

    def held_prefix(self, keys: list[str], rows: list[list[int]], budget: int) -> list[int] | None:
        """Per row, how many of its first ids the sequence of its question already holds (one
        at least is fed again, for its logits); None when some row cannot continue here."""
        if len(set(keys)) != len(keys) or any(k not in self.seq_of for k in keys):
            return None
        if any(not r or len(r) + budget > self.per_seq for r in rows):
            return None
        return [min(_common_prefix(self.ids_of[self.seq_of[k]], r), len(r) - 1) for k, r in zip(keys, rows)]


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


class LlamaCppEngine:
    """Generation with llama.cpp: prompts as HF tokenizer ids, one KV sequence per prompt.

    Each context gives a sequence room for the longest prompt, twice the budget and
    :data:`ROOM_SLACK` tokens, so the answer pass of budget forcing (thinking + ``</think>`` +
    ``answer_tokens``) continues in it while ``answer_tokens`` + the closing tokens ≤
    ``max_new_tokens`` + ``ROOM_SLACK``; else (or for any other prompts) a fresh context is made,
    with the same tokens out."""

    name = "llama.cpp"

    def __init__(self, path: str | os.PathLike, tokenizer, sampling: GenerationConfig, backend=None):
        self.tokenizer, self.sampling = tokenizer, sampling
        self.backend = backend if backend is not None else LlamaCppBackend(path)
        self.model_name = str(path)
        if len(tokenizer) > self.backend.n_vocab:
            raise ThinksaeError(f"the tokenizer has {len(tokenizer)} tokens, the GGUF model "
                                f"{self.backend.n_vocab}: they do not belong together")
        self.stop = set(token_stops(tokenizer, self.backend.eos_ids()))
        self._kept: _KeptSession | None = None

    def auto_batch_size(self, max_len: int) -> int:
        """:data:`AUTO_BATCH` sequences (the KV cache of a quantised 1.5B model is small)."""
        return min(AUTO_BATCH, self.backend.max_seqs)

    def generate(self, prompts: list[str], keys: list[str], budget: int, stage: str = "") -> list[Row]:
        """Per prompt the new ids up to the first stop token, and whether it stopped; at most
        ``max_seqs`` prompts run at once."""
        seeds = self.sampling.row_seeds(keys, stage)
        rows = [self.tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
        n = self.backend.max_seqs
        return [row for i in range(0, len(rows), n)
                for row in self._generate(rows[i:i + n], keys[i:i + n], seeds[i:i + n], budget)]

    def _place(self, rows: list[list[int]], keys: list[str], seeds: list[int],
               budget: int) -> tuple[_KeptSession, list[int], list[int]]:
        """The context to run ``rows`` in, each row's sequence, and how many of its ids that
        sequence already holds: the kept context when every row extends its question's
        sequence there, else a fresh one (the kept one closed first)."""
        kept = self._kept
        held = kept.held_prefix(keys, rows, budget) if kept is not None else None
        if kept is not None and held is not None:
            seqs = [kept.seq_of[k] for k in keys]
            for seq, seed, n in zip(seqs, seeds, held):
                kept.session.forget(seq, n)
                kept.session.reseed(seq, seed)
            return kept, seqs, held
        self._release()
        per_seq = max(map(len, rows)) + 2 * budget + ROOM_SLACK
        stack = contextlib.ExitStack()
        session = stack.enter_context(self.backend.session(len(rows) * per_seq, self.sampling, seeds))
        self._kept = _KeptSession(stack, session, per_seq, {k: i for i, k in enumerate(keys)}, {})
        seqs = list(range(len(rows)))
        # the prompts' common start (chat template, system prompt) is computed once, not per row
        shared = min(_common_prefix(rows[0], r) for r in rows) if len(rows) > 1 else 0
        shared = min(shared, min(map(len, rows)) - 1)  # each row feeds one token at least
        if shared > 0:
            session.share_prefix(seqs, rows[0][:shared])
        return self._kept, seqs, [max(shared, 0)] * len(rows)

    def _generate(self, rows: list[list[int]], keys: list[str], seeds: list[int],
                  budget: int) -> list[Row]:
        out: list[list[int]] = [[] for _ in rows]
        finished = [False] * len(rows)
        kept, seqs, held = self._place(rows, keys, seeds, budget)
        try:
            self._decode(kept, seqs, rows, held, budget, out, finished)
        except BaseException:  # what the context holds is unknown now: never continue in it
            self._release()
            raise
        return [Row(ids, f) for ids, f in zip(out, finished)]

    def _decode(self, kept: _KeptSession, seqs: list[int], rows: list[list[int]], held: list[int],
                budget: int, out: list[list[int]], finished: list[bool]) -> None:
        """Prefill each row into its sequence, then decode the running ones together, one token
        each per step, filling ``out`` and ``finished``."""
        session = kept.session
        token = [session.prefill(s, r, n) for s, r, n in zip(seqs, rows, held)]
        for s, r in zip(seqs, rows):
            kept.ids_of[s] = list(r)
        active = list(range(len(rows)))
        for step in range(budget):
            for i in active:
                if token[i] in self.stop:
                    finished[i] = True
                else:
                    out[i].append(token[i])
            active = [i for i in active if not finished[i]]
            if not active or step == budget - 1:
                break
            new = session.step([seqs[i] for i in active], [token[i] for i in active],
                               [len(kept.ids_of[seqs[i]]) for i in active])
            for i, t in zip(active, new):
                kept.ids_of[seqs[i]].append(token[i])
                token[i] = t

    def _release(self) -> None:
        """Close the kept context."""
        if self._kept is not None:
            self._kept.stack.close()
            self._kept = None

    def close(self) -> None:
        self._release()
        close = getattr(self.backend, "close", None)
        if close is not None:
            close()

