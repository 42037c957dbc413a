"""The monitor engine: generate token by token (KV cache) and report watched SAE features.

Per generated token the hookpoint output x at that token's position is captured by a forward
hook, and the watched features' values are read from it. Which value (``value``, see
:data:`thinksae.monitor.events.VALUES`):

- ``topk`` (default): what the SAE says, its ``encode`` of x (:class:`thinksae.sae.
  SparseAutoencoder`, any architecture: the full encoder GEMM, one row of x times W_enc for all
  latents, then the top k or the thresholds), scattered to all latents and gathered at the
  watched ones: a latent the SAE does not activate reads 0. Cost per token: one pass over W_enc
  (``python bench/monitor.py``).
- ``pre``: ``relu(pre)`` with ``pre = (x - b_dec) @ W_enc[watch].T + b_enc[watch]``, the SAE's
  ``pre_acts`` at the watched latents only (one small addmm): what a feature would read were it
  active, equal, bit for bit, to the ``topk`` value where it is (tests check this on CPU). Many
  inactive latents have ``pre > 0``, so rules on this value alert where the SAE reads 0.

The activation of token t is read when t is fed to the model (its own position), so the event for
a token comes right after its forward pass, before the next token is chosen. End-of-sequence
tokens end generation and are not fed. When a rule fires its alert is logged (JSONL) and yielded;
its action may stop generation or switch on a steering intervention (:mod:`thinksae.steer`) for
every later position. The monitor reads the hookpoint output before any steering is applied.
"""

from __future__ import annotations

import contextlib
import inspect
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from ..errors import ThinksaeError
from ..models import resolve_hookpoint
from .actions import switch_on_steering
from .alerts import AlertLog
from .events import VALUES, AlertEvent, DoneEvent, Event, TokenEvent
from .rules import Rule, RuleEngine, parse_rules, watched_features
from .tokens import Detokenizer, RegionTracker


def check_value(value: str) -> str:
    """``value`` if it is one of ``VALUES``, else a one-line error."""
    if value not in VALUES:
        raise ThinksaeError(f"--value must be one of {', '.join(VALUES)} (got {value!r})")
    return value


class WatchList:
    """The watched features of ``sae``, and how to read ``value`` (``topk`` or ``pre``) at them."""

    def __init__(self, sae, features: Sequence[int], value: str = "topk"):
        self.features = [int(f) for f in features]
        bad = [f for f in self.features if not 0 <= f < sae.num_latents]
        if bad:
            raise ThinksaeError(f"feature {bad[0]} is not a latent of the SAE "
                                f"(0..{sae.num_latents - 1})")
        self.sae, self.value = sae, check_value(value)
        self.index = torch.tensor(self.features, dtype=torch.long, device=sae.device)

    def values(self, x: Tensor) -> Tensor:
        """The watched features' values for rows ``x [n, d]`` → float32 ``[n, F]``."""
        return self.topk(x) if self.value == "topk" else self.pre(x)

    def topk(self, x: Tensor) -> Tensor:
        """The SAE's ``encode`` activations at the watched features ``[n, F]`` (0 where a
        feature is not active)."""
        return self.sae.dense_acts(x.to(self.sae.device))[:, self.index].float()

    def pre(self, x: Tensor) -> Tensor:
        """``relu(pre)`` of the watched features ``[n, F]``, from their encoder rows only."""
        with torch.no_grad():
            return self.sae.pre_acts(x.to(self.sae.device), self.index).relu()


def _cache_kwarg(model) -> str:
    """``cache`` in recent transformers, ``past_key_values`` before."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def _sample(logits: Tensor, do_sample: bool, temperature: float, top_p: float,
            generator: torch.Generator | None) -> int:
    if not do_sample:
        return int(logits.argmax())
    probs = torch.softmax(logits.float() / temperature, -1)
    sorted_p, order = probs.sort(descending=True)
    keep = sorted_p.cumsum(-1) - sorted_p < top_p
    sorted_p = sorted_p * keep
    choice = torch.multinomial(sorted_p / sorted_p.sum(), 1, generator=generator)
    return int(order[choice])


@dataclass
class Plan:
    """A checked request: the prompt's token ids, what to watch, the rules, the token limit,
    the value watched."""

    prompt: str
    ids: list[int]
    watch: WatchList | None
    rules: list[Rule]
    limit: int
    value: str = "topk"


class Monitor:
    """Watches ``features`` of ``sae`` at ``hookpoint`` while ``model`` generates, and applies
    ``rules`` (a list of :class:`Rule` or their JSON objects). ``value``: what is watched and
    compared, ``topk`` (the SAE's activation, default) or ``pre`` (module docstring)."""

    def __init__(self, model, tokenizer, sae, hookpoint: str, features: Sequence[int] = (),
                 rules: Sequence[Rule | dict] = (), *, value: str = "topk",
                 alert_log: str | Path | None = None, max_new_tokens: int = 256,
                 do_sample: bool = False, temperature: float = 0.6, top_p: float = 0.95,
                 seed: int = 0, system_prompt: str | None = None, think_prefill: bool = False):
        self.model, self.tokenizer, self.sae, self.hookpoint = model, tokenizer, sae, hookpoint
        self.module = resolve_hookpoint(model, hookpoint)
        self.value = check_value(value)
        self.rules = self.check_rules(rules)
        check_rule_values(self.rules, self.value)
        self.features = watched_features(self.rules, features)
        WatchList(sae, self.features)  # validates the indices
        self.log = AlertLog(alert_log) if alert_log else None
        if max_new_tokens < 1:
            raise ThinksaeError(f"max_new_tokens must be at least 1 (got {max_new_tokens})")
        if do_sample and not (temperature > 0 and 0 < top_p <= 1):
            raise ThinksaeError("temperature must be > 0 and top_p in (0, 1] when sampling")
        self.max_new_tokens, self.do_sample = max_new_tokens, do_sample
        self.temperature, self.top_p, self.seed = temperature, top_p, seed
        self.system_prompt, self.think_prefill = system_prompt, think_prefill
        from ..corpus.generate import stop_ids
        from ..corpus.segment import control_token_ids

        self.stop_ids = set(stop_ids(model, tokenizer))
        self.special_ids = control_token_ids(tokenizer)

    def check_rules(self, rules: Sequence[Rule | dict], source: str = "rules") -> list[Rule]:
        """Rules validated against the SAE (dicts are parsed; Rule objects re-checked)."""
        raw = [r.to_dict() if isinstance(r, Rule) else r for r in rules]
        out = parse_rules(raw, source, self.sae.num_latents)
        return out

    def prompt_ids(self, prompt: str, templated: bool = False) -> list[int]:
        from ..corpus import build_prompt

        text = prompt if templated else build_prompt(self.tokenizer, prompt, self.system_prompt,
                                                     self.think_prefill)
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        if not ids:
            raise ThinksaeError("the prompt is empty")
        return ids

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
        return Plan(prompt, self.prompt_ids(prompt, templated), watch, rule_list, limit, value)

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

    @torch.inference_mode()
    def run(self, plan: Plan, cancel=None) -> Iterator[Event]:
        """The events of a prepared generation (see :meth:`watch`)."""
        yield from self._generate(plan, RuleEngine(plan.rules), cancel)

    def _generate(self, plan: Plan, engine: RuleEngine, cancel) -> Iterator[Event]:
        from transformers import DynamicCache

        ids, watch, limit, prompt = plan.ids, plan.watch, plan.limit, plan.prompt
        model, device = self.model, next(self.model.parameters()).device
        run_id, t0 = uuid.uuid4().hex[:12], time.perf_counter()
        regions = RegionTracker(self.tokenizer, ids, self.special_ids)
        detok = Detokenizer(self.tokenizer)
        generator = None
        if self.do_sample:
            generator = torch.Generator(device=device).manual_seed(self.seed)
        captured: list[Tensor] = []

        def hook(_module, _inputs, output):
            out = output[0] if isinstance(output, (tuple, list)) else output
            captured.append(out[:, -1].detach())

        generated: list[int] = []
        reason, fired_by = "max_tokens", None
        with contextlib.ExitStack() as stack:
            if watch is not None:
                handle = self.module.register_forward_hook(hook)
                stack.callback(handle.remove)
            cache = {_cache_kwarg(model): DynamicCache()}
            step_ids = torch.tensor([ids], dtype=torch.long, device=device)
            logits = model(input_ids=step_ids, **cache, use_cache=True,
                           logits_to_keep=1).logits[0, -1]
            steering_on: set[str] = set()
            position = len(ids)
            for step in range(limit):
                if cancel is not None and cancel.is_set():
                    reason = "cancelled"
                    break
                token = _sample(logits, self.do_sample, self.temperature, self.top_p, generator)
                if token in self.stop_ids:
                    reason = "eos"
                    break
                captured.clear()
                step_ids = torch.tensor([[token]], dtype=torch.long, device=device)
                logits = model(input_ids=step_ids, **cache, use_cache=True,
                               logits_to_keep=1).logits[0, -1]
                generated.append(token)
                event = self._token_event(token, detok.push(token), position, step,
                                          regions.push(token), plan.value, watch, captured)
                position += 1
                yield event
                for rule, values in engine.step(event.region, event.acts):
                    alert = AlertEvent(rule.name, rule.severity, step, event.position, event.text,
                                       event.region, values, rule.threshold, rule.action,
                                       value=plan.value, message=rule.message, run_id=run_id,
                                       time=time.time())
                    if self.log is not None:
                        self.log.append(alert, prompt)
                    yield alert
                    if rule.action == "steer" and rule.name not in steering_on:
                        steering_on.add(rule.name)
                        stack.enter_context(switch_on_steering(
                            model, self.sae, self.hookpoint, rule.steer))
                    elif rule.action == "stop" and fired_by is None:
                        fired_by = rule.name
                if fired_by is not None:
                    reason = "stopped"
                    break
        text = self.tokenizer.decode(generated, skip_special_tokens=False,
                                     clean_up_tokenization_spaces=False)
        yield DoneEvent(reason, len(generated), text, fired_by, time.perf_counter() - t0, run_id)

    def _token_event(self, token: int, text: str, position: int, step: int, region: str,
                     value: str, watch: WatchList | None, captured: list[Tensor]) -> TokenEvent:
        if watch is None:
            return TokenEvent(token, text, position, step, region, {}, value)
        if len(captured) != 1:
            raise ThinksaeError(f"hookpoint {self.hookpoint} ran {len(captured)} times for one "
                                "token (expected once)")
        x = captured[0]
        if x.shape[-1] != self.sae.d_in:
            raise ThinksaeError(f"the SAE has d_in {self.sae.d_in}, but the model's "
                                f"{self.hookpoint} output has width {x.shape[-1]}")
        acts = watch.values(x)[0].tolist()
        return TokenEvent(token, text, position, step, region, dict(zip(watch.features, acts)),
                          value)


def check_rule_values(rules: Sequence[Rule], value: str) -> None:
    """A rule written for the other value would compare its threshold with the wrong quantity."""
    for rule in rules:
        if rule.value is not None and rule.value != value:
            raise ThinksaeError(f"rule {rule.name!r} is written for value {rule.value}, but the "
                                f"monitor watches {value} (--value {rule.value} to watch it)")
