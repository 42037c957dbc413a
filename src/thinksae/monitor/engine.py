"""The monitor engine: generate token by token (KV cache) and report watched SAE features.

Per generated token the hookpoint output x at that token's position is captured by a forward
hook and the watched features' pre-activations are computed from just their encoder rows::

    pre = (x - b_dec) @ W_enc[watch].T + b_enc[watch]        (one addmm in the SAE's dtype)

which is the arithmetic of :meth:`thinksae.sae.Sae.encode` restricted to those rows, so the
reported ``relu(pre)`` equals, bit for bit, a full encode's activation of that token wherever the
feature is among its k active latents (tests check this on CPU; tokens are encoded one at a time,
as generated; a GEMM over many tokens at once may block its sums differently). A TopK SAE
reports 0 for a feature outside the top k, which a watch-list cannot know without ranking all
latents: with ``full_encode`` the engine runs the full encoder GEMM and top-k too and reports
the actual TopK activations (``topk``) and which watched features are active.

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
from .events import AlertEvent, DoneEvent, Event, TokenEvent
from .rules import Rule, RuleEngine, parse_rules, watched_features
from .tokens import Detokenizer, RegionTracker


def preactivations(x: Tensor, weight: Tensor, bias: Tensor, b_dec: Tensor,
                   compute_dtype: torch.dtype) -> Tensor:
    """``(x - b_dec) @ weight.T + bias`` for rows ``x [n, d]``, float32 ``[n, rows]``; the same
    operations, in the same order, as the SAE's encoder (:func:`thinksae.sae.kernels.topk_encode`)."""
    centred = x.float() - b_dec.float()
    return torch.addmm(bias.to(compute_dtype), centred.to(compute_dtype),
                       weight.to(compute_dtype).T).float()


class WatchList:
    """The encoder rows of the watched features, gathered once."""

    def __init__(self, sae, features: Sequence[int]):
        self.features = [int(f) for f in features]
        bad = [f for f in self.features if not 0 <= f < sae.num_latents]
        if bad:
            raise ThinksaeError(f"feature {bad[0]} is not a latent of the SAE "
                                f"(0..{sae.num_latents - 1})")
        idx = torch.tensor(self.features, dtype=torch.long, device=sae.device)
        self.sae = sae
        self.index = idx
        self.weight = sae.encoder.weight.detach()[idx].contiguous()
        self.bias = sae.encoder.bias.detach()[idx].contiguous()

    def acts(self, x: Tensor) -> Tensor:
        """``relu(pre)`` of the watched features for rows ``x [n, d]`` → ``[n, F]``."""
        sae = self.sae
        return preactivations(x.to(sae.device), self.weight, self.bias, sae.b_dec.detach(),
                              sae.dtype).relu()

    def full(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Full encode: watched ``relu(pre)`` ``[n, F]`` (taken from the full GEMM), the TopK
        activations of the watched features ``[n, F]`` (0 outside the top k), and the top-k
        latent indices ``[n, k]``."""
        sae = self.sae
        pre = preactivations(x.to(sae.device), sae.encoder.weight.detach(),
                             sae.encoder.bias.detach(), sae.b_dec.detach(), sae.dtype)
        vals, top = pre.topk(sae.cfg.k, dim=-1, sorted=False)
        dense = torch.zeros_like(pre).scatter_(-1, top, vals.relu())
        return pre[:, self.index].relu(), dense[:, self.index], top


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
    """A checked request: the prompt's token ids, what to watch, the rules, the token limit."""

    prompt: str
    ids: list[int]
    watch: WatchList | None
    rules: list[Rule]
    limit: int


class Monitor:
    """Watches ``features`` of ``sae`` at ``hookpoint`` while ``model`` generates, and applies
    ``rules`` (a list of :class:`Rule` or their JSON objects)."""

    def __init__(self, model, tokenizer, sae, hookpoint: str, features: Sequence[int] = (),
                 rules: Sequence[Rule | dict] = (), *, full_encode: bool = False,
                 alert_log: str | Path | None = None, max_new_tokens: int = 256,
                 do_sample: bool = False, temperature: float = 0.6, top_p: float = 0.95,
                 seed: int = 0, system_prompt: str | None = None, think_prefill: bool = False):
        self.model, self.tokenizer, self.sae, self.hookpoint = model, tokenizer, sae, hookpoint
        self.module = resolve_hookpoint(model, hookpoint)
        self.rules = self.check_rules(rules)
        self.features = watched_features(self.rules, features)
        WatchList(sae, self.features)  # validates the indices
        self.full_encode = full_encode
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
                templated: bool = False, source: str = "rules") -> Plan:
        """Check a request and tokenise its prompt (errors now, not at the first token)."""
        rule_list = self.rules if rules is None else self.check_rules(rules, source)
        feats = self.features if features is None and rules is None else watched_features(
            rule_list, self.features if features is None else features)
        if any(r.value == "topk" for r in rule_list) and not self.full_encode:
            name = next(r.name for r in rule_list if r.value == "topk")
            raise ThinksaeError(f"rule {name!r} reads value topk, which needs the full encode")
        limit = self.max_new_tokens if max_new_tokens is None else max_new_tokens
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise ThinksaeError(f"max_new_tokens must be an integer >= 1 (got {limit!r})")
        watch = WatchList(self.sae, feats) if feats else None
        return Plan(prompt, self.prompt_ids(prompt, templated), watch, rule_list, limit)

    def watch(self, prompt: str, *, features: Sequence[int] | None = None,
              rules: Sequence[Rule | dict] | None = None, max_new_tokens: int | None = None,
              templated: bool = False, cancel=None) -> Iterator[Event]:
        """Generate from ``prompt`` (a question, chat-templated unless ``templated``) and yield a
        :class:`TokenEvent` per token, :class:`AlertEvent` s as rules fire, and a final
        :class:`DoneEvent`. ``features``/``rules`` replace the monitor's for this call (the
        rules' features are always watched); a set ``cancel`` (a ``threading.Event``) ends
        generation after the current token. Bad arguments raise before generation starts."""
        plan = self.prepare(prompt, features=features, rules=rules,
                            max_new_tokens=max_new_tokens, templated=templated)
        return self.run(plan, cancel)

    @torch.inference_mode()
    def run(self, plan: Plan, cancel=None) -> Iterator[Event]:
        """The events of a prepared generation (see :meth:`watch`)."""
        yield from self._generate(plan.ids, plan.watch, RuleEngine(plan.rules), plan.limit,
                                  cancel, plan.prompt)

    def _generate(self, ids: list[int], watch: WatchList | None, engine: RuleEngine, limit: int,
                  cancel, prompt: str) -> Iterator[Event]:
        from transformers import DynamicCache

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
                                          regions.push(token), watch, captured)
                position += 1
                yield event
                for rule, values in engine.step(event.region, event.acts, event.topk):
                    alert = AlertEvent(rule.name, rule.severity, step, event.position, event.text,
                                       event.region, values, rule.threshold, rule.action,
                                       rule.message, run_id, time.time())
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
                     watch: WatchList | None, captured: list[Tensor]) -> TokenEvent:
        if watch is None:
            return TokenEvent(token, text, position, step, region, {})
        if len(captured) != 1:
            raise ThinksaeError(f"hookpoint {self.hookpoint} ran {len(captured)} times for one "
                                "token (expected once)")
        x = captured[0]
        if x.shape[-1] != self.sae.d_in:
            raise ThinksaeError(f"the SAE has d_in {self.sae.d_in}, but the model's "
                                f"{self.hookpoint} output has width {x.shape[-1]}")
        if not self.full_encode:
            acts = watch.acts(x)[0].tolist()
            return TokenEvent(token, text, position, step, region, dict(zip(watch.features, acts)))
        acts_t, topk_t, _ = watch.full(x)
        topk = topk_t[0].tolist()
        return TokenEvent(token, text, position, step, region,
                          dict(zip(watch.features, acts_t[0].tolist())),
                          dict(zip(watch.features, topk)),
                          [f for f, v in zip(watch.features, topk) if v > 0])
