"""The monitor engine: generate through the one decoding API (:func:`thinksae.generation.decode.
generate_rows`) and report watched SAE features per token, apply rules, raise alerts.

Per generated token the watched features' values are read at that token's own position (the
decoding API records them while the token is fed, before the next one is chosen), so the event
for a token comes right after its forward pass. Which value (``value``, see
:data:`thinksae.monitor.events.VALUES`; :func:`thinksae.interventions.feature_values`):

- ``topk`` (default): what the SAE says, its ``encode`` of x (any architecture: the full encoder
  GEMM, then the top k or the thresholds): a latent the SAE does not activate reads 0. Cost per
  token: one pass over W_enc (``python bench/monitor.py``).
- ``pre``: relu(pre) at the watched latents only (one small addmm): what a feature would read
  were it active, equal, bit for bit, to the ``topk`` value where it is (tests check this on
  CPU). Many inactive latents have pre > 0, so rules on this value alert where the SAE reads 0.

End-of-sequence tokens end generation and are not fed. When a rule fires its alert is logged
(JSONL) and reported; its action may stop generation or switch on a steering intervention for
every later position. The watched values are read before any steering is applied. Sampling draws
from a stream seeded by ``seed`` and the prompt (as `thinksae steer` seeds its rows).
"""

from __future__ import annotations

import contextlib
import dataclasses
import queue
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from ..chat import Detokenizer, ThinkMarkers, ThinkTracker, build_prompt, stop_ids
from ..corpus.problems import question_id
from ..corpus.segment import control_token_ids
from ..errors import ThinksaeError
from ..generation.batches import Batch
from ..generation.config import GenerationConfig
from ..generation.decode import DecodeStep, Decoding, generate_rows
from ..interventions import feature_values
from ..models.hookpoints import resolve_hookpoint
from .actions import switch_on_steering
from .alerts import AlertLog
from .events import VALUES, AlertEvent, DoneEvent, Event, TokenEvent
from .rules import Rule, RuleEngine, parse_rules, watched_features


def check_value(value: str) -> str:
    """``value`` if it is one of ``VALUES``, else a one-line error."""
    if value not in VALUES:
        raise ThinksaeError(f"--value must be one of {', '.join(VALUES)} (got {value!r})")
    return value


class WatchList:
    """The watched features of ``sae``, and which ``value`` (``topk`` or ``pre``) is read."""

    def __init__(self, sae, features: Sequence[int], value: str = "topk"):
        self.features = [int(f) for f in features]
        bad = [f for f in self.features if not 0 <= f < sae.num_latents]
        if bad:
            raise ThinksaeError(f"feature {bad[0]} is not a latent of the SAE "
                                f"(0..{sae.num_latents - 1})")
        self.sae, self.value = sae, check_value(value)
        self.index = torch.tensor(self.features, dtype=torch.long, device=sae.device)

    def values(self, x: torch.Tensor) -> torch.Tensor:
        """The watched features' values for rows ``x [n, d]`` → float32 ``[n, F]``."""
        return feature_values(self.sae, x, self.index, self.value)


@dataclass
class Plan:
    """A checked request: the prompt (as asked, and templated), its token ids, what to watch,
    the rules, the token limit, the value watched."""

    prompt: str
    ids: list[int]
    watch: WatchList | None
    rules: list[Rule]
    limit: int
    value: str = "topk"
    text: str = ""
    """The prompt as the model reads it (chat-templated unless given templated)."""


class Monitor:
    """Watches ``features`` of ``sae`` at ``hookpoint`` while ``model`` generates, and applies
    ``rules`` (a list of :class:`Rule` or their JSON objects). ``value``: what is watched and
    compared, ``topk`` (the SAE's activation, default) or ``pre`` (module docstring)."""

    def __init__(self, model, tokenizer, sae, hookpoint: str, features: Sequence[int] = (),
                 rules: Sequence[Rule | dict] = (), *, value: str = "topk",
                 alert_log: str | Path | None = None, max_new_tokens: int = 256,
                 do_sample: bool = False, temperature: float = 0.6, top_p: float = 0.95,
                 seed: int = 0, system_prompt: str | None = None, think_prefill: bool = False):
        resolve_hookpoint(model, hookpoint)  # an unknown hookpoint is refused now
        self.dec = Decoding(model, tokenizer, sae, hookpoint)
        self.model, self.tokenizer, self.sae, self.hookpoint = model, tokenizer, sae, hookpoint
        self.value = check_value(value)
        self.rules = self.check_rules(rules)
        check_rule_values(self.rules, self.value)
        self.features = watched_features(self.rules, features)
        WatchList(sae, self.features)  # validates the indices
        self.log = AlertLog(alert_log) if alert_log else None
        self.generation = GenerationConfig(max_new_tokens, do_sample, temperature, top_p, seed,
                                           system_prompt, think_prefill)
        self.generation.check()
        self.max_new_tokens = max_new_tokens
        self.markers = ThinkMarkers.from_tokenizer(tokenizer, stop_ids(model, tokenizer),
                                                   sentences=False,
                                                   special_ids=control_token_ids(tokenizer))

    def check_rules(self, rules: Sequence[Rule | dict], source: str = "rules") -> list[Rule]:
        """Rules validated against the SAE (dicts are parsed; Rule objects re-checked)."""
        raw = [r.to_dict() if isinstance(r, Rule) else r for r in rules]
        return parse_rules(raw, source, self.sae.num_latents)

    def prompt_text(self, prompt: str, templated: bool = False) -> str:
        g = self.generation
        return prompt if templated else build_prompt(self.tokenizer, prompt, g.system_prompt,
                                                     g.think_prefill)

    def prepare(self, prompt: str, *, features: Sequence[int] | None = None,
                rules: Sequence[Rule | dict] | None = None, max_new_tokens: int | None = None,
                templated: bool = False, source: str = "rules", value: str | None = None) -> Plan:
        """Check a request and tokenise its prompt (errors now, not at the first token)."""
        value = self.value if value is None else check_value(value)
        rule_list = self.rules if rules is None else self.check_rules(rules, source)
        check_rule_values(rule_list, value)
        feats = self.features if features is None and rules is None else watched_features(
            rule_list, self.features if features is None else features)
        limit = self.max_new_tokens if max_new_tokens is None else max_new_tokens
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise ThinksaeError(f"max_new_tokens must be an integer >= 1 (got {limit!r})")
        watch = WatchList(self.sae, feats, value) if feats else None
        text = self.prompt_text(prompt, templated)
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        if not ids:
            raise ThinksaeError("the prompt is empty")
        return Plan(prompt, ids, watch, rule_list, limit, value, text)

    def watch(self, prompt: str, *, features: Sequence[int] | None = None,
              rules: Sequence[Rule | dict] | None = None, max_new_tokens: int | None = None,
              templated: bool = False, value: str | None = None, cancel=None) -> Iterator[Event]:
        """Generate from ``prompt`` (a question, chat-templated unless ``templated``) and yield a
        :class:`TokenEvent` per token, :class:`AlertEvent` s as rules fire, and a final
        :class:`DoneEvent`. ``features``/``rules``/``value`` replace the monitor's for this call
        (the rules' features are always watched); a set ``cancel`` (a ``threading.Event``) ends
        generation after the current token. Bad arguments raise before generation starts."""
        plan = self.prepare(prompt, features=features, rules=rules,
                            max_new_tokens=max_new_tokens, templated=templated, value=value)
        return self.run(plan, cancel)

    def run(self, plan: Plan, cancel=None) -> Iterator[Event]:
        """The events of a prepared generation (see :meth:`watch`), lazily: the generation runs in
        a thread that waits after each event until the next one is asked for, so a ``cancel``
        set between two events ends it before another token is fed (leaving the iteration
        early cancels it the same way)."""
        cancel = cancel or threading.Event()
        events: queue.Queue = queue.Queue()
        asked, closed, done = threading.Semaphore(0), threading.Event(), object()

        def put(event: Event) -> None:
            events.put(event)
            while not closed.is_set() and not asked.acquire(timeout=0.05):
                pass

        def work():
            try:
                self.emit(plan, put, cancel)
            except BaseException as e:  # handed to the iterating thread
                events.put(e)
            finally:
                events.put(done)

        thread = threading.Thread(target=work, daemon=True)
        thread.start()
        try:
            while (item := events.get()) is not done:
                if isinstance(item, BaseException):
                    raise item
                yield item
                asked.release()
        finally:
            closed.set()
            cancel.set()
            thread.join()

    def emit(self, plan: Plan, put: Callable[[Event], None], cancel=None) -> None:
        """Generate ``plan`` and hand every event to ``put`` (the core of :meth:`run`)."""
        follow = _Follower(self, plan, put)
        gen = dataclasses.replace(self.generation, max_new_tokens=plan.limit + 1)
        with contextlib.ExitStack() as stack:
            follow.stack = stack
            out = generate_rows(
                self.dec, [plan.text], [question_id(plan.prompt)], [Batch([(0, 0)], len(plan.ids))],
                gen, [[]], kl=False, record=plan.watch.features if plan.watch else (),
                record_value=plan.value, on_step=follow.step, cancel=cancel)[0][0]
        put(follow.done(out, cancel))


class _Follower:
    """Turns the decoding API's steps into token and alert events, and applies rule actions."""

    def __init__(self, mon: Monitor, plan: Plan, put: Callable[[Event], None]):
        self.mon, self.plan, self.put = mon, plan, put
        self.run_id, self.t0 = uuid.uuid4().hex[:12], time.perf_counter()
        self.engine = RuleEngine(plan.rules)
        self.tracker = ThinkTracker(mon.markers, len(plan.ids), _text_of(mon.tokenizer))
        for t in plan.ids:
            self.tracker.push(t)
        self.detok = Detokenizer(mon.tokenizer)
        self.generated: list[int] = []
        self.fired_by: str | None = None
        self.steering_on: set[str] = set()
        self.stack: contextlib.ExitStack | None = None

    def step(self, step: DecodeStep) -> bool:
        """One fed token: its event, the rules, their actions; True ends generation."""
        token, plan = step.tokens[0], self.plan
        self.generated.append(token)
        region = self.tracker.push(token)
        acts = {} if plan.watch is None else dict(zip(plan.watch.features,
                                                      step.values[0].tolist()))
        position = len(plan.ids) + step.step
        event = TokenEvent(token, self.detok.push(token), position, step.step, region, acts,
                           plan.value)
        self.put(event)
        for rule, values in self.engine.step(region, acts):
            self._alert(rule, values, event)
        return self.fired_by is not None or len(self.generated) >= plan.limit

    def _alert(self, rule: Rule, values: dict, event: TokenEvent) -> None:
        mon, plan = self.mon, self.plan
        alert = AlertEvent(rule.name, rule.severity, event.step, event.position, event.text,
                           event.region, values, rule.threshold, rule.action, value=plan.value,
                           message=rule.message, run_id=self.run_id, time=time.time())
        if mon.log is not None:
            mon.log.append(alert, plan.prompt)
        self.put(alert)
        if rule.action == "steer" and rule.name not in self.steering_on:
            self.steering_on.add(rule.name)
            self.stack.enter_context(switch_on_steering(mon.model, mon.sae, mon.hookpoint,
                                                        rule.steer))
        elif rule.action == "stop" and self.fired_by is None:
            self.fired_by = rule.name

    def done(self, out, cancel) -> DoneEvent:
        """The final event: why generation ended, its text and time."""
        gen, row = out
        if self.fired_by is not None:
            reason = "stopped"
        elif len(self.generated) >= self.plan.limit:
            reason = "max_tokens"
        elif cancel is not None and cancel.is_set():
            reason = "cancelled"
        else:
            chosen = gen.ids[row, gen.width + len(self.generated):].tolist()
            reason = "eos" if chosen and chosen[0] in self.mon.markers.stop_ids else "max_tokens"
        text = self.mon.tokenizer.decode(self.generated, skip_special_tokens=False,
                                         clean_up_tokenization_spaces=False)
        return DoneEvent(reason, len(self.generated), text, self.fired_by,
                         time.perf_counter() - self.t0, self.run_id)


def _text_of(tokenizer):
    def text_of(ids: list[int]) -> str:
        return tokenizer.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)
    return text_of


def check_rule_values(rules: Sequence[Rule], value: str) -> None:
    """A rule written for the other value would compare its threshold with the wrong quantity."""
    for rule in rules:
        if rule.value is not None and rule.value != value:
            raise ThinksaeError(f"rule {rule.name!r} is written for value {rule.value}, but the "
                                f"monitor watches {value} (--value {rule.value} to watch it)")
