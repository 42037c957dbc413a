"""Monitor rules: a small validated format (JSON or YAML) and their evaluation token by token.

A rules file is a list of rules, or an object ``{"rules": [...]}``. One rule::

    name: backtracking-burst     # required, unique
    feature: 1234                # or features: [12, 34] with match: any | all
    threshold: 2.5               # required: a watched value >= threshold (or <= with below: true)
    consecutive: 3               # the condition holds on M consecutive tokens (default 1)
    window: 8                    # compare the mean over the last N tokens instead of each token
    region: think                # think | answer | any (default any)
    value: topk                  # optional: the value the rule expects the monitor to watch,
                                 # topk (the SAE's activation) or pre (ReLU pre-activation)
    severity: warning            # info | warning | critical (default warning)
    once: false                  # fire at most once per generation (default: each time the
                                 # condition becomes true again after having been false)
    action: stop                 # none (default), stop, or {steer: "1234=0,56=x0.5"}
    message: "optional text for the alert"

Tokens outside the rule's region are skipped and reset its consecutive count and window. A rule
fires on the token where its condition has held for ``consecutive`` tokens in a row; it can fire
again only after the condition was false once (``once: true``: never again).

A rule compares the value the monitor watches (``thinksae monitor --value``, default ``topk``: the
SAE's activation, 0 outside the top k; see :data:`thinksae.monitor.events.VALUES`). A rule that
names a ``value`` is refused by a monitor watching the other one, since its threshold was meant
for that quantity.
"""

from __future__ import annotations

import json
import math
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ThinksaeError
from ..interventions.spec import check_features, parse_interventions
from .events import VALUES

SEVERITIES = ("info", "warning", "critical")
REGIONS = ("any", "think", "answer")
MATCHES = ("any", "all")
_FIELDS = {"name", "feature", "features", "match", "threshold", "below", "consecutive", "window",
           "region", "value", "severity", "once", "action", "message"}
MAX_RULES = 256


@dataclass(frozen=True)
class Rule:
    """One validated rule (module docstring)."""

    name: str
    features: tuple[int, ...]
    threshold: float
    match: str = "any"
    below: bool = False
    consecutive: int = 1
    window: int = 1
    region: str = "any"
    value: str | None = None
    """The value (``topk`` or ``pre``) the rule was written for; None: whichever is watched."""
    severity: str = "warning"
    once: bool = False
    action: str = "none"
    steer: str | None = None
    """Intervention specs (steer grammar, e.g. ``12=0,34=x2``) for ``action == "steer"``."""
    message: str = ""

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "features": list(self.features),
                               "match": self.match, "threshold": self.threshold,
                               "below": self.below, "consecutive": self.consecutive,
                               "window": self.window, "region": self.region,
                               "severity": self.severity, "once": self.once,
                               "action": {"steer": self.steer} if self.steer else self.action}
        if self.value is not None:
            out["value"] = self.value
        if self.message:
            out["message"] = self.message
        return out


def _fail(where: str, text: str) -> ThinksaeError:
    return ThinksaeError(f"{where}: {text}")


def _int_field(where: str, key: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise _fail(where, f"field {key!r} must be an integer >= {minimum} (got {value!r})")
    return value


def _bool_field(where: str, key: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise _fail(where, f"field {key!r} must be true or false (got {value!r})")
    return value


def _choice(where: str, key: str, value: Any, choices: tuple[str, ...]) -> str:
    if not isinstance(value, str) or value.lower() not in choices:
        raise _fail(where, f"field {key!r} must be one of {', '.join(choices)} (got {value!r})")
    return value.lower()


def _value(where: str, value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, str) and value.lower() == "act":
        raise _fail(where, "field 'value': 'act' is now called 'pre' (ReLU pre-activation); the "
                           "default, topk, is the SAE's activation (0 outside the top k)")
    return _choice(where, "value", value, VALUES)


def _features(where: str, data: Mapping) -> tuple[int, ...]:
    if ("feature" in data) == ("features" in data):
        raise _fail(where, "give exactly one of the fields 'feature' or 'features'")
    key = "feature" if "feature" in data else "features"
    raw = [data[key]] if key == "feature" else data[key]
    if not isinstance(raw, list) or not raw:
        raise _fail(where, f"field {key!r} must be a non-empty list of feature indices")
    out = tuple(_int_field(where, key, f, 0) for f in raw)
    if len(set(out)) != len(out):
        raise _fail(where, f"field {key!r} lists a feature more than once")
    return out


def _action(where: str, value: Any, num_latents: int | None) -> tuple[str, str | None]:
    if isinstance(value, str) and value.lower() in ("none", "stop"):
        return value.lower(), None
    if isinstance(value, Mapping) and set(value) == {"steer"} and isinstance(value["steer"], str):
        try:
            ivs = parse_interventions(value["steer"])
            if num_latents is not None:
                check_features(ivs, num_latents)
        except ThinksaeError as e:
            raise _fail(where, f"field 'action': steer {str(e).replace('--feature ', '')}") from None
        if any(i.kind == "clamp_max" for i in ivs):
            raise _fail(where, "field 'action': steer values like 2max need a baseline; give a "
                               "number")
        return "steer", ",".join(i.spec for i in ivs)
    raise _fail(where, f"field 'action' must be none, stop or {{steer: \"FEATURE=VALUE,...\"}} "
                       f"(got {value!r})")


def parse_rule(data: Any, where: str, num_latents: int | None = None) -> Rule:
    """One rule from its JSON/YAML object; errors are one line naming ``where`` and the field."""
    if not isinstance(data, Mapping):
        raise _fail(where, f"a rule must be an object with a name, features and a threshold "
                           f"(got {type(data).__name__})")
    name = data.get("name")
    if not isinstance(name, str) or not name.strip():
        raise _fail(where, "field 'name' is missing or empty")
    where = f"{where} ({name.strip()!r})"
    unknown = sorted(set(data) - _FIELDS, key=str)
    if unknown:
        raise _fail(where, f"unknown field {unknown[0]!r} (fields: {', '.join(sorted(_FIELDS))})")
    features = _features(where, data)
    if num_latents is not None:
        bad = [f for f in features if f >= num_latents]
        if bad:
            raise _fail(where, f"feature {bad[0]} is not a latent of the SAE (0..{num_latents - 1})")
    if "threshold" not in data:
        raise _fail(where, "field 'threshold' is missing")
    thr = data["threshold"]
    if isinstance(thr, bool) or not isinstance(thr, (int, float)) or not math.isfinite(thr):
        raise _fail(where, f"field 'threshold' must be a finite number (got {thr!r})")
    message = data.get("message", "")
    if not isinstance(message, str):
        raise _fail(where, f"field 'message' must be text (got {message!r})")
    action, steer = _action(where, data.get("action", "none"), num_latents)
    return Rule(
        name=name.strip(), features=features, threshold=float(thr),
        match=_choice(where, "match", data.get("match", "any"), MATCHES),
        below=_bool_field(where, "below", data.get("below", False)),
        consecutive=_int_field(where, "consecutive", data.get("consecutive", 1), 1),
        window=_int_field(where, "window", data.get("window", 1), 1),
        region=_choice(where, "region", data.get("region", "any"), REGIONS),
        value=_value(where, data.get("value")),
        severity=_choice(where, "severity", data.get("severity", "warning"), SEVERITIES),
        once=_bool_field(where, "once", data.get("once", False)),
        action=action, steer=steer, message=message)


def parse_rules(data: Any, source: str = "rules", num_latents: int | None = None) -> list[Rule]:
    """Rules from a decoded document: a list, or an object with a ``rules`` list."""
    if isinstance(data, Mapping):
        extra = sorted(set(data) - {"rules"}, key=str)
        if extra:
            raise ThinksaeError(f"{source}: unknown top-level key {extra[0]!r} (expected 'rules')")
        data = data.get("rules")
    if not isinstance(data, list):
        raise ThinksaeError(f"{source}: expected a list of rules (or {{rules: [...]}})")
    if len(data) > MAX_RULES:
        raise ThinksaeError(f"{source}: {len(data)} rules, at most {MAX_RULES} are allowed")
    rules, seen = [], set()
    for i, item in enumerate(data):
        rule = parse_rule(item, f"{source}: rule {i + 1}", num_latents)
        if rule.name in seen:
            raise ThinksaeError(f"{source}: rule {i + 1} ({rule.name!r}): field 'name' repeats "
                                "an earlier rule's name")
        seen.add(rule.name)
        rules.append(rule)
    return rules


def load_rules(path: str | Path, num_latents: int | None = None) -> list[Rule]:
    """Rules from a ``.json`` file, or YAML (``.yaml``/``.yml`` or anything else)."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as e:
        raise ThinksaeError(f"cannot read rules file {path}: {e.strerror or e}") from None
    if path.suffix.lower() == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise ThinksaeError(f"{path}: not valid JSON (line {e.lineno}: {e.msg})") from None
    else:
        import yaml

        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            line = f"line {mark.line + 1}: " if mark is not None else ""
            reason = getattr(e, "problem", None) or str(e).splitlines()[0]
            raise ThinksaeError(f"{path}: not valid YAML ({line}{reason})") from None
    return parse_rules(data, str(path), num_latents)


def watched_features(rules: Iterable[Rule], extra: Iterable[int] = ()) -> list[int]:
    """The features to watch: ``extra`` first, then those the rules read (order kept, unique)."""
    out = list(dict.fromkeys(int(f) for f in extra))
    for rule in rules:
        out.extend(f for f in rule.features if f not in out)
    return out


@dataclass
class _State:
    run: int = 0
    armed: bool = True
    fired: int = 0
    history: deque = field(default_factory=deque)


class RuleEngine:
    """Evaluates rules on a stream of tokens; :meth:`step` returns the rules that fire."""

    def __init__(self, rules: list[Rule]):
        self.rules = list(rules)
        self.states = [_State(history=deque(maxlen=r.window)) for r in self.rules]

    def reset(self) -> None:
        self.states = [_State(history=deque(maxlen=r.window)) for r in self.rules]

    def step(self, region: str, acts: Mapping[int, float]) -> list[tuple[Rule, dict[int, float]]]:
        """Feed one token (its region and watched values); ``(rule, values that decided)`` for
        every rule that fires on it."""
        fired = []
        for rule, st in zip(self.rules, self.states):
            if rule.region != "any" and rule.region != region:
                st.run, st.armed = 0, True
                st.history.clear()
                continue
            st.history.append([float(acts.get(f, 0.0)) for f in rule.features])
            if len(st.history) < rule.window:
                st.run = 0
                continue
            means = [sum(col) / rule.window for col in zip(*st.history)]
            hits = [(m <= rule.threshold) if rule.below else (m >= rule.threshold) for m in means]
            ok = any(hits) if rule.match == "any" else all(hits)
            if not ok:
                st.run, st.armed = 0, True
                continue
            st.run += 1
            if st.run >= rule.consecutive and st.armed and not (rule.once and st.fired):
                st.armed = False
                st.fired += 1
                fired.append((rule, dict(zip(rule.features, means))))
        return fired
