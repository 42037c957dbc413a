"""Prompts: the explainer's (a feature's top contexts with the firing tokens marked, its activation
quantiles, trigger-token shares, regions and logit lens) and the scorer's (an explanation, then one
context), plus parsing the explainer's answer (a reasoning model's ``<think>`` part stripped).

Changing any text here changes what the cache holds: bump :data:`PROMPT_VERSION`.
"""

from __future__ import annotations

from typing import NamedTuple

from ..errors import ThinksaeError

PROMPT_VERSION = "thinksae-explain/2"
"""Names the prompt texts below; part of every cache key."""

MARK_L, MARK_R = "<<", ">>"
MAX_EXPLANATION_CHARS = 200


class Context(NamedTuple):
    """A window of tokens around one position of one trace, with the feature's activation on each."""

    tokens: list[str]
    acts: list[float]
    centre: int
    """Index of the centre token in ``tokens``."""
    doc: int
    position: int
    quantile: int
    """Activation bin of the centre token, 1 = highest; 0 for a non-activating context."""

    @property
    def act(self) -> float:
        return self.acts[self.centre]


def show(text: str) -> str:
    return text.replace("\n", "↵").replace("\t", "→")


def render(ctx: Context, marks: set[int] | frozenset[int] = frozenset()) -> str:
    """The context's text with the tokens at ``marks`` wrapped in ``<<…>>`` (adjacent marked tokens
    share one pair); newlines and tabs made visible so that a context stays on one line."""
    out, open_ = [], False
    for j, tok in enumerate(ctx.tokens):
        if j in marks and not open_:
            out.append(MARK_L)
            open_ = True
        elif j not in marks and open_:
            out.append(MARK_R)
            open_ = False
        out.append(show(tok))
    if open_:
        out.append(MARK_R)
    return "".join(out)


def firing(ctx: Context, threshold: float = 0.0) -> set[int]:
    """Positions where the feature fires above ``threshold`` times the context's peak."""
    peak = max(ctx.acts, default=0.0)
    return {j for j, a in enumerate(ctx.acts) if a > 0 and a >= threshold * peak}


EXPLAINER_SYSTEM = (
    "You interpret features of a sparse autoencoder trained on a language model's hidden states. "
    "Each feature fires on some tokens. From the evidence given, say in a few words what the "
    "feature detects."
)


def explainer_prompt(feature: int, contexts: list[Context], row: dict, det: dict,
                     top_tokens: int = 8) -> str:
    """The user message: marked contexts and the feature's statistics."""
    lines = [f"Feature {feature}.", "",
             "Text excerpts where it fires most (firing tokens between << and >>, activation first):"]
    for i, ctx in enumerate(contexts, 1):
        lines.append(f"{i}. [{ctx.act:.3g}] {render(ctx, firing(ctx))}")
    quant = hist_quantiles(det.get("hist"))
    lines += ["", f"Fires on {row.get('fires', '?')} tokens (frequency {_g(row.get('freq'))}); "
              f"mean activation {_g(row.get('mean_act'))}, max {_g(row.get('max_act'))}"
              + (f"; activation quantiles {quant}" if quant else "") + "."]
    shares = [f"{show(t['text'])!r} {_pct(t['share'])}" for t in det.get("tokens", [])[:top_tokens]]
    if shares:
        lines.append("Tokens it fires on (share of its activation): " + ", ".join(shares) + ".")
    rates = {k: v for k, v in det.get("region_rates", {}).items() if v is not None}
    if rates:
        lines.append("Firing rate per region of the reasoning trace: "
                     + ", ".join(f"{k} {_g(v)}" for k, v in rates.items()) + ".")
    for side, name in (("lens_pos", "promotes"), ("lens_neg", "suppresses")):
        if det.get(side):
            lines.append(f"Next tokens it {name} (logit lens): "
                         + ", ".join(repr(show(t["text"])) for t in det[side][:top_tokens]) + ".")
    lines += ["", "Answer with one short explanation (at most 15 words) on a last line of the form",
              "Explanation: <what the feature detects>"]
    return "\n".join(lines)


def hist_quantiles(hist: dict | None, qs: tuple[float, ...] = (0.5, 0.9, 0.99)) -> str:
    """Activation quantiles read from the log-binned histogram (each the upper edge of its bin)."""
    if not hist or not hist.get("counts"):
        return ""
    counts, edges = hist["counts"], hist["edges"]
    total, out = sum(counts), []
    for q in qs:
        run = 0
        for j, c in enumerate(counts):
            run += c
            if run >= q * total:
                out.append(f"{100 * q:g}% ≤ {edges[j + 1]:.3g}")
                break
    return ", ".join(out)


def _g(x) -> str:
    return "?" if x is None else f"{x:.3g}"


def _pct(x) -> str:
    return "?" if x is None else f"{100 * x:.0f}%"


def baseline_explanation(det: dict, top_tokens: int = 5) -> str:
    """The no-LLM explanation: the feature's top trigger tokens by activation mass."""
    toks = [repr(show(t["text"])) for t in det.get("tokens", [])[:top_tokens]]
    return "fires on: " + (", ".join(toks) if toks else "(no tokens)")


def strip_think(text: str, opened: bool = False) -> str:
    """The answer after a reasoning model's thinking: the text after the last ``</think>``.
    Thinking that never closed (``<think>`` in the text, or ``opened`` by the prompt) leaves no
    answer: returns ``""``."""
    if "</think>" in text:
        return text.rsplit("</think>", 1)[1]
    if opened or "<think>" in text:
        return ""
    return text


def parse_explanation(text: str, opened_think: bool = False) -> str:
    """The explanation in an explainer's reply: the last ``Explanation:`` line after the thinking
    (else the first non-empty line), quotes and markup trimmed, at most 200 characters."""
    answer = strip_think(text, opened_think).strip()
    if not answer:
        raise ThinksaeError("the explainer gave no answer after its thinking (give it more "
                            "--max_new_tokens, or use a non-reasoning explainer)")
    lines = [ln.strip() for ln in answer.splitlines() if ln.strip()]
    tagged = [ln for ln in lines if ln.lower().lstrip("*# ").startswith("explanation:")]
    line = tagged[-1].lstrip("*# ")[len("explanation:"):] if tagged else lines[0]
    line = line.strip().strip("*").strip().strip("\"'`").strip()
    if not line:
        raise ThinksaeError(f"the explainer's answer holds no explanation: {answer[:80]!r}")
    return line[:MAX_EXPLANATION_CHARS]


class ScorerPrompt(NamedTuple):
    """A scoring question: ``prefix`` is shared by every context of one explanation (cached once),
    each ``suffix`` holds one context; the answer is read from the next token's yes/no odds."""

    prefix: str
    suffixes: list[str]


def detection_prompt(explanation: str, texts: list[str]) -> ScorerPrompt:
    prefix = ("A feature of a language model is described below. For each excerpt, answer yes if "
              "the feature fires somewhere in it (the description matches), else no.\n\n"
              f"Description: {explanation}\n\n")
    return ScorerPrompt(prefix, [f"Excerpt: {t}\nAnswer (yes/no):" for t in texts])


def fuzzing_prompt(explanation: str, texts: list[str]) -> ScorerPrompt:
    prefix = ("A feature of a language model is described below. In each excerpt some tokens are "
              f"marked with {MARK_L} {MARK_R}; answer yes if the marked tokens are the ones the "
              "description is about, else no.\n\n"
              f"Description: {explanation}\n\n")
    return ScorerPrompt(prefix, [f"Excerpt: {t}\nAnswer (yes/no):" for t in texts])
