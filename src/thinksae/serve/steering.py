"""Steer side by side: one prompt decoded twice in one batch (row 0 the baseline, row 1 steered
by the request's features) through the one decoding API, each step's two tokens reported as they
come; then the steered positions and the KL there, as `thinksae steer` measures them (the same
:func:`thinksae.generation.decode.generate_rows`; the prompt positions before the first steered
one prefilled once for both rows). "Save as sweep" runs
`thinksae steer` itself on the same settings, so it writes the same ``steer.json``.

Tokens are reported as the decoding API feeds them (:class:`~thinksae.generation.decode.
DecodeStep`), and each row's last token, which is chosen but never fed, when generation ends.
A generated token is shown as steered, with a KL, when the position that chose it was steered:
token j (at position W + j of a prompt of width W) shows position W + j − 1's flag and
KL(p_clean ‖ p_steered) of its next-token distribution.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..chat import Detokenizer, build_prompt, stop_ids
from ..corpus.problems import question_id
from ..errors import ThinksaeError
from ..generation.batches import Batch
from ..generation.config import GenerationConfig
from ..generation.decode import DecodeStep, Decoding, generate_rows
from ..interventions.spec import Intervention, Window, parse_interventions, parse_sweep, parse_window
from ..steer.config import SteerConfig
from ..steer.run import run as steer_run
from .defaults import SteerDefaults

FIELDS = {"prompt", "features", "sweep", "start", "end", "max_new_tokens", "think_prefill",
          "system_prompt"}


@dataclass
class SteerRequest:
    """A checked steer request (``specs`` as given; ``interventions`` with Smax resolved)."""

    prompt: str
    specs: list[str]
    interventions: list[Intervention]
    window: Window
    max_new_tokens: int
    think_prefill: bool = False
    sweep: list[str] | None = None
    system_prompt: str | None = None


def _specs(value: Any, name: str) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and all(isinstance(v, (str, int)) and not isinstance(v, bool)
                                       for v in value):
        return [str(v) for v in value]
    raise ThinksaeError(f"{name}: expected 'FEATURE=VALUE, ...' or a list of such strings")


def parse_steer(body: Any, num_latents: int, max_new_tokens: int, max_prompt_chars: int,
                max_act: Callable[[int], float | None],
                defaults: SteerDefaults | None = None) -> SteerRequest:
    """A :class:`SteerRequest` from a JSON body, or a one-line ThinksaeError saying what is
    wrong. ``max_act(f)`` gives a feature's max activation for ``Smax`` values; ``defaults``
    (the run's, :func:`~.defaults.steer_defaults`) fill the fields the body leaves out
    (without: sentence .. think_end, no think prefill, no system prompt, 64 tokens)."""
    d = defaults or SteerDefaults("sentence", "think_end", False, None, 64, "")
    if not isinstance(body, dict):
        raise ThinksaeError("expected a JSON object with a prompt and features")
    unknown = sorted(set(body) - FIELDS)
    if unknown:
        raise ThinksaeError(f"unknown field {unknown[0]!r} (fields: {', '.join(sorted(FIELDS))})")
    prompt = body.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        raise ThinksaeError("prompt: missing or empty")
    if len(prompt) > max_prompt_chars:
        raise ThinksaeError(f"prompt: {len(prompt)} characters, at most {max_prompt_chars}")
    specs = _specs(body.get("features", ""), "features")
    sweep = _specs(body["sweep"], "sweep") if body.get("sweep") else None
    sets = parse_sweep(specs, sweep) if sweep else [parse_interventions(specs)]
    limit = body.get("max_new_tokens", min(d.max_new_tokens, max_new_tokens))
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= max_new_tokens:
        raise ThinksaeError(f"max_new_tokens: expected an integer in 1..{max_new_tokens}")
    window = parse_window(body.get("start", d.start), body.get("end", d.end))
    prefill = body.get("think_prefill", d.think_prefill)
    if not isinstance(prefill, bool):
        raise ThinksaeError("think_prefill: expected true or false")
    system = body.get("system_prompt", d.system_prompt)
    if system is not None and (not isinstance(system, str) or len(system) > max_prompt_chars):
        raise ThinksaeError(f"system_prompt: expected a text of at most {max_prompt_chars} "
                            "characters (or null)")
    ivs = sets[0]
    bad = [i.feature for s in sets for i in s if i.feature >= num_latents]
    if bad:
        raise ThinksaeError(f"feature {bad[0]} is not a latent of the SAE (0..{num_latents - 1})")
    need = {i.feature for i in ivs if i.kind == "clamp_max"}
    maxes = {f: max_act(f) for f in need}
    missing = [f for f, v in maxes.items() if v is None]
    if missing:
        raise ThinksaeError(f"feature {missing[0]}: Smax needs its max activation, and the run "
                            "has no analysis row for it")
    return SteerRequest(prompt, specs, [i.resolved(maxes) for i in ivs], window, limit, prefill,
                        sweep, system or None)


def _token_rows(ids: list[int], width: int, stop: set[int]) -> list[int]:
    """Generated ids of a row up to and including its first stop token."""
    out = []
    for t in ids[width:]:
        out.append(t)
        if t in stop:
            break
    return out


class _Streamer:
    """Reports each step's token of both rows (text deltas) as ``token`` events."""

    def __init__(self, emit, tokenizer, stop: set[int]):
        self.emit, self.stop = emit, stop
        self.detok = [Detokenizer(tokenizer), Detokenizer(tokenizer)]
        self.ended = [False, False]
        self.steps = [0, 0]

    def token(self, row: int, token: int) -> None:
        if self.ended[row]:
            return
        self.ended[row] = token in self.stop
        self.emit({"type": "token", "row": ("baseline", "steered")[row], "step": self.steps[row],
                   "id": token, "text": self.detok[row].push(token)})
        self.steps[row] += 1

    def on_step(self, step: DecodeStep) -> None:
        for row, token in enumerate(step.tokens[:2]):
            self.token(row, token)


def stream_steer(dec: Decoding, req: SteerRequest, emit: Callable[[dict], None], cancel) -> None:
    """Generate ``req`` baseline and steered in one batch (greedy) through the decoding API
    (:func:`thinksae.generation.decode.generate_rows`), calling ``emit`` with a ``start`` event,
    ``token`` events as they come and a final ``done`` event (module docstring)."""
    tokenizer = dec.tokenizer
    stop = set(stop_ids(dec.model, tokenizer))
    prompt = build_prompt(tokenizer, req.prompt, req.system_prompt, req.think_prefill)
    width = len(tokenizer(prompt, add_special_tokens=False)["input_ids"])
    emit({"type": "start", "prompt_tokens": width, "features": [i.spec for i in req.interventions],
          "window": req.window.to_dict()})
    streamer = _Streamer(emit, tokenizer, stop)
    t0 = time.perf_counter()
    gen, _ = generate_rows(
        dec._replace(window=req.window), [prompt], [question_id(req.prompt)],
        [Batch([(0, 0), (1, 0)], width)], GenerationConfig(max_new_tokens=req.max_new_tokens),
        [[], req.interventions], kl=True, on_step=streamer.on_step, cancel=cancel)[1][0]
    seconds = time.perf_counter() - t0
    if cancel.is_set():
        emit({"type": "done", "reason": "cancelled"})
        return
    for row in range(2):  # the last token of each row is chosen but never fed through the model
        for token in _token_rows(gen.ids[row].tolist(), width + streamer.steps[row], stop)[:1]:
            streamer.token(row, token)
    emit(_done(tokenizer, gen, stop, req.max_new_tokens, seconds))


def _done(tokenizer, gen, stop: set[int], limit: int, seconds: float) -> dict:
    w, out = gen.width, gen.ids.tolist()
    flags, kl = gen.steered[1].tolist(), gen.kl[1].tolist()
    rows = {}
    for r, name in enumerate(("baseline", "steered")):
        new = _token_rows(out[r], w, stop)
        tokens = []
        for j, t in enumerate(new):
            item = {"id": t, "text": tokenizer.decode([t], skip_special_tokens=False)}
            if r == 1:
                pos = w + j - 1
                item["steered"] = bool(flags[pos])
                item["kl"] = kl[pos] if flags[pos] and math.isfinite(kl[pos]) else None
            tokens.append(item)
        rows[name] = {"text": tokenizer.decode(new, skip_special_tokens=False),
                      "tokens": tokens, "finished": bool(new) and new[-1] in stop}
    kls = [t["kl"] for t in rows["steered"]["tokens"] if t.get("kl") is not None]
    steered_positions = int(gen.steered[1].sum())
    reason = "stopped" if rows["baseline"]["finished"] and rows["steered"]["finished"] else \
        "max_tokens"
    return {"type": "done", "reason": reason, **rows, "steered_positions": steered_positions,
            "mean_kl": sum(kls) / len(kls) if kls else None, "seconds": seconds}


def save_sweep(sae_dir: Path, hookpoint: str, model, tokenizer, req: SteerRequest, out: Path) -> dict:
    """Run `thinksae steer` on ``req`` (a sweep when it has ``sweep`` values) with the loaded
    model; writes ``out/steer.json`` exactly as the CLI does. Returns ``{path, summary}``."""
    cfg = SteerConfig(sae=str(sae_dir), hookpoint=hookpoint, feature=list(req.specs),
                      sweep=list(req.sweep or []), prompt=[req.prompt],
                      start=str(req.window.start), end=str(req.window.end),
                      generation=GenerationConfig(max_new_tokens=req.max_new_tokens,
                                                  think_prefill=req.think_prefill,
                                                  system_prompt=req.system_prompt),
                      out=str(out), show=0, progress=False)
    result = steer_run(cfg, model=model, tokenizer=tokenizer)
    return {"path": str(out / "steer.json"), "mode": result.mode,
            "runs": [{"label": r["label"], "summary": r["summary"]} for r in result.runs]}
