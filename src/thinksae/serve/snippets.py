"""What the features index shows of each feature besides its scores: its top trigger tokens and
one short inline context, read once from the analysis' ``stats.safetensors`` (only the tensors
needed: the token tables and each feature's strongest top example) and ``vocab.json``.

- ``top_tokens``: the feature's tokens by activation mass, largest first, each
  ``{"text", "share"}`` with share = mass(token) / Σ activation of the feature (the share of its
  activation that falls on that token, as the feature page shows it);
- ``context``: its strongest example whose trigger token is not a special token (BOS, role or
  think markers: attention sinks, which say nothing of what the feature reads), among its first
  :data:`EXAMPLES` (the analysis keeps them largest first; the strongest when all are special),
  as ``{"left", "trigger", "right", "act"}``: up to :data:`LEFT` tokens before the trigger token
  and :data:`RIGHT` after it, within the document.
"""

from __future__ import annotations

import json
from pathlib import Path

from safetensors import SafetensorError, safe_open

from ..errors import ThinksaeError
from ..features.report import STATS_FILE, VOCAB_FILE, token_text

TOP_TOKENS = 3
"""Trigger tokens shown per feature."""
LEFT, RIGHT = 8, 4
"""Tokens of context shown before and after the trigger token."""
EXAMPLES = 5
"""Top examples read per feature (to find one whose trigger is not a special token)."""


def _read(path: Path) -> tuple[dict, dict]:
    """The tensors the index needs (the first :data:`EXAMPLES` top examples) and the metadata."""
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = json.loads(f.metadata()["meta"])
            t = {name: f.get_tensor(name) for name in ("tok_ids", "tok_mass", "act_sum")}
            for name in ("top_ctx", "top_val"):
                t[name] = f.get_slice(name)[:, 0:EXAMPLES]
    except (SafetensorError, OSError, KeyError, ValueError, json.JSONDecodeError) as e:
        raise ThinksaeError(f"cannot read feature statistics {path}: {e}") from None
    return t, meta


def _pick(contexts: list[list[int]], values: list[float], window: int,
          special: frozenset[int]) -> int | None:
    """The first top example with a trigger token that is not special (else the first one)."""
    found = [j for j, (ids, v) in enumerate(zip(contexts, values))
             if v >= 0 and len(ids) > window and ids[window] >= 0]
    return next((j for j in found if contexts[j][window] not in special), found[0]) \
        if found else None


def _context(ids: list[int], value: float, window: int, strings: list[str]) -> dict:
    text = [token_text(strings, i) if i >= 0 else None for i in ids]
    left = [x for x in text[max(0, window - LEFT):window] if x is not None]
    right = [x for x in text[window + 1:window + 1 + RIGHT] if x is not None]
    return {"left": "".join(left), "trigger": text[window], "right": "".join(right),
            "act": float(f"{value:.4g}")}


def feature_snippets(analysis: str | Path, special: frozenset[int] = frozenset()) -> list[dict]:
    """Per feature (in feature order) ``{"top_tokens", "context"}`` (module docstring;
    ``special``: the special token ids); an empty list when the analysis has no statistics or
    vocabulary (older or partial analyses)."""
    out_dir = Path(analysis)
    stats, vocab = out_dir / STATS_FILE, out_dir / VOCAB_FILE
    if not stats.is_file() or not vocab.is_file():
        return []
    t, meta = _read(stats)
    try:
        strings = json.loads(vocab.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ThinksaeError(f"cannot read {vocab}: {e}") from None
    window = int(meta.get("window", 0))
    order = t["tok_mass"].argsort(dim=1, descending=True)[:, :TOP_TOKENS]
    ids = t["tok_ids"].gather(1, order).tolist()
    mass = t["tok_mass"].gather(1, order).tolist()
    totals = t["act_sum"].tolist()
    ctx, val = t["top_ctx"].tolist(), t["top_val"].tolist()
    out = []
    for f in range(len(totals)):
        tokens = [{"text": token_text(strings, i), "share": float(f"{m / totals[f]:.3g}")}
                  for i, m in zip(ids[f], mass[f]) if i >= 0 and m > 0 and totals[f] > 0]
        j = _pick(ctx[f], val[f], window, special)
        out.append({"top_tokens": tokens, "context": None if j is None else
                    _context(ctx[f][j], val[f][j], window, strings)})
    return out
