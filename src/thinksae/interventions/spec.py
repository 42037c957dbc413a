"""Intervention specs (``--feature``) and steering windows (``--start``/``--end``).

Grammar of one ``--feature`` spec, ``FEATURE=VALUE``:

===========  =========  =====================================================================
VALUE        kind       new activation f'_i of feature i (f_i is what the SAE reports there)
===========  =========  =====================================================================
``2.5``      clamp      f'_i = 2.5 (an unsigned number; also where the feature did not fire)
``x4``       scale      f'_i = 4 · f_i (``*4`` works too; ``x0`` = ablate where it fired)
``+3``       add        f'_i = f_i + 3, i.e. x gets 3 · W_dec[i] added (``-3`` subtracts)
``off``      ablate     f'_i = 0 (``ablate`` works too)
``2max``     clamp_max  f'_i = 2 · (max of f_i over the baseline generations of the prompt
                        set, at the positions of the steering window in the regions the SAE
                        was trained on; see :mod:`.regions`): AIRI's strength × max activation
===========  =========  =====================================================================

f_i is the feature's top-k activation (0 where it is not among the k active latents). Values
must be finite. Several specs may be given (``--feature`` repeated or comma-separated), each
feature at most once (also in the Python API: :func:`check_unique`). With ``--sweep`` features
are given as bare indices and the swept VALUEs (same grammar) are applied to all of them in turn.

Steering window: which token positions' hookpoint outputs are changed.

- start ``prompt``: from the last prompt token on (every generated token is sampled steered);
  ``think``: from the ``<think>`` token on; ``sentence``: from the end of the first sentence of
  thinking on (the first token after ``<think>`` + 1 that ends with ``.``, ``?``, ``!`` or holds a
  line break; R1 ignores steering during its "Okay, so the user…" opening); ``N``: after the first
  N thinking tokens (``0`` = ``think``).
- end ``think_end`` (or ``</think>``): up to, not including, the ``</think>`` token (the answer
  is not steered); ``none``: to the end of generation; ``M``: up to the M-th thinking token.
Steering always stops at an end-of-sequence token. The opening ``<think>`` is the first one among
the prompt's final 4 tokens (a template that prefills it), else the first one generated.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from ..errors import ThinksaeError

KINDS = ("clamp", "scale", "add", "ablate", "clamp_max")
STARTS = ("prompt", "think", "sentence")
ENDS = ("think_end", "none")
_INDEX = re.compile(r"^\d+$")
_GRAMMAR = "VALUE: N (clamp), xS (scale), +A or -A (add), off (ablate), Smax (S x max act.)"


@dataclass(frozen=True)
class Intervention:
    """One feature's change: ``f'_i`` from ``f_i`` by ``kind`` with ``value``."""

    feature: int
    kind: str
    value: float = 0.0

    def new_value(self, f):
        """f'_i for activations ``f`` (a tensor or a float)."""
        if self.kind == "clamp_max":
            raise ThinksaeError(f"--feature {self.spec}: the feature's max activation is not "
                                "known yet (resolve it first)")
        if self.kind == "clamp":
            return f * 0 + self.value
        if self.kind == "scale":
            return f * self.value
        if self.kind == "add":
            return f + self.value
        return f * 0

    @property
    def spec(self) -> str:
        """The canonical ``FEATURE=VALUE`` text."""
        return f"{self.feature}={value_text(self.kind, self.value)}"

    def affine(self) -> tuple[float, float]:
        """``(m, a)`` with f'_i = m · f_i + a (clamp: 0, v; scale: s, 0; add: 1, a; ablate: 0, 0)."""
        if self.kind == "clamp_max":
            self.new_value(0.0)  # refuses
        return {"clamp": (0.0, self.value), "scale": (self.value, 0.0), "add": (1.0, self.value),
                "ablate": (0.0, 0.0)}[self.kind]

    def resolved(self, max_acts: dict[int, float]) -> Intervention:
        """A ``clamp_max`` as the clamp to strength × the feature's max activation."""
        if self.kind != "clamp_max":
            return self
        return Intervention(self.feature, "clamp", self.value * float(max_acts[self.feature]))

    def to_dict(self) -> dict:
        return {"feature": self.feature, "kind": self.kind, "value": self.value, "spec": self.spec}


def value_text(kind: str, value: float) -> str:
    """``("scale", 4.0)`` → ``x4``; the inverse of :func:`parse_value`."""
    num = f"{value:g}"
    return {"clamp": num, "scale": f"x{num}", "add": f"{value:+g}", "ablate": "off",
            "clamp_max": f"{num}max"}[kind]


def _number(text: str, what: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ThinksaeError(f"{what}: {text!r} is not a number; {_GRAMMAR}") from None
    if not math.isfinite(value):
        raise ThinksaeError(f"{what}: value {text!r} is not finite (NaN and inf are not allowed)")
    return value


def parse_value(text: str, what: str = "--feature value") -> tuple[str, float]:
    """``(kind, value)`` of a VALUE (module docstring grammar)."""
    t = text.strip()
    if not t:
        raise ThinksaeError(f"{what}: missing value; {_GRAMMAR}")
    if t.lower() in ("off", "ablate"):
        return "ablate", 0.0
    if t[0] in "xX*":
        if len(t) == 1:
            raise ThinksaeError(f"{what}: {t!r} lacks a scale factor; {_GRAMMAR}")
        return "scale", _number(t[1:], what)
    if t[0] in "+-":
        if len(t) == 1:
            raise ThinksaeError(f"{what}: {t!r} lacks an amount; {_GRAMMAR}")
        return "add", _number(t, what)
    if t.lower().endswith("max"):
        return "clamp_max", _number(t[:-3] or "1", what)
    return "clamp", _number(t, what)


def split_specs(items: list[str] | str) -> list[str]:
    """Repeated and comma-separated items, blanks dropped."""
    items = [items] if isinstance(items, str) else list(items)
    return [s.strip() for item in items for s in item.split(",") if s.strip()]


def _feature_index(text: str, spec: str) -> int:
    t = text.strip()
    if not _INDEX.match(t):
        raise ThinksaeError(f"--feature {spec!r}: feature {t!r} is not a non-negative integer index")
    return int(t)


def parse_intervention(spec: str) -> Intervention:
    """One ``FEATURE=VALUE`` spec."""
    if "=" not in spec:
        raise ThinksaeError(f"--feature {spec!r}: expected FEATURE=VALUE, e.g. 123=0, 123=x4, "
                            "123=+2.5 or 123=off")
    feature, _, value = spec.partition("=")
    index = _feature_index(feature, spec)
    kind, number = parse_value(value, f"--feature {spec!r}")
    return Intervention(index, kind, number)


def _check_unique(features: list[int]) -> None:
    seen = set()
    for f in features:
        if f in seen:
            raise ThinksaeError(f"--feature {f} given more than once")
        seen.add(f)


def parse_interventions(specs: list[str] | str) -> list[Intervention]:
    """All ``--feature`` specs (repeated and/or comma-separated), each feature at most once."""
    out = [parse_intervention(s) for s in split_specs(specs)]
    if not out:
        raise ThinksaeError("no --feature given (e.g. --feature 123=0 --feature 456=x4)")
    _check_unique([i.feature for i in out])
    return out


def parse_sweep(features: list[str] | str, values: list[str] | str) -> list[list[Intervention]]:
    """One intervention list per swept value: every bare ``--feature`` index set to that value."""
    specs = split_specs(features)
    if not specs:
        raise ThinksaeError("--sweep needs --feature (bare indices, e.g. --feature 123)")
    for s in specs:
        if "=" in s:
            raise ThinksaeError(f"--feature {s!r}: with --sweep give bare feature indices (e.g. "
                                f"{s.partition('=')[0]}); the values come from --sweep")
    indices = [_feature_index(s, s) for s in specs]
    _check_unique(indices)
    points = [parse_value(v, f"--sweep {v!r}") for v in split_specs(values)]
    if not points:
        raise ThinksaeError("--sweep holds no values (e.g. --sweep x0,x1,x2,x4)")
    return [[Intervention(f, kind, v) for f in indices] for kind, v in points]


def check_unique(interventions: list[Intervention]) -> None:
    """One steering setting changes each feature at most once (twice would add its change twice)."""
    seen = set()
    for i in interventions:
        if i.feature in seen:
            raise ThinksaeError(f"feature {i.feature} is given more than once in one steering "
                                "setting (its change would be applied twice)")
        seen.add(i.feature)


def check_features(interventions: list[Intervention], num_latents: int) -> None:
    """Every feature index must be a latent of the SAE."""
    for i in interventions:
        if i.feature >= num_latents:
            raise ThinksaeError(f"--feature {i.feature}: unknown feature, the SAE has "
                                f"{num_latents} latents (0..{num_latents - 1})")


@dataclass(frozen=True)
class Window:
    """Where steering starts and ends (module docstring); ints count thinking tokens."""

    start: str | int = "sentence"
    end: str | int = "think_end"

    def to_dict(self) -> dict:
        return {"start": self.start, "end": self.end}


def _count(text: str, what: str, minimum: int) -> int:
    if not _INDEX.match(text):
        raise ThinksaeError(f"--{what} {text!r}: expected "
                            + (", ".join(STARTS) if what == "start" else ", ".join(ENDS))
                            + " or a number of thinking tokens")
    value = int(text)
    if value < minimum:
        raise ThinksaeError(f"--{what} {value}: must be at least {minimum}")
    return value


def parse_window(start: str | int = "sentence", end: str | int = "think_end") -> Window:
    """A :class:`Window` from the ``--start``/``--end`` texts; start after end is refused."""
    s, e = str(start).strip().lower(), str(end).strip().lower()
    s = s if s in STARTS else _count(s, "start", 0)
    e = "think_end" if e in ("</think>", "think_end") else e
    e = e if e in ENDS else _count(e, "end", 1)
    if isinstance(e, int) and isinstance(s, int) and s >= e:
        raise ThinksaeError(f"--start {s} is not before --end {e}: nothing would be steered")
    return Window(s, e)
