"""Hookpoints: sparsify-style module names relative to the decoder stack, and capture with early stop.

``layers.10`` is the output of decoder block 10 (= ``hidden_states[11]`` of Hugging Face's
``output_hidden_states``), ``layers.10.mlp`` and ``layers.10.self_attn`` are that block's MLP and
attention outputs, ``embed_tokens`` the token embeddings. Capturing runs the model only as far as
needed: once every requested hookpoint has fired, the forward pass is abandoned, so later layers and
the LM head never run.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import Tensor, nn

from ..errors import ThinksaeError

_HOOKPOINT = re.compile(r"^(embed_tokens|norm|layers\.(\d+)((?:\.[A-Za-z_]\w*)*))$")
"""The one hookpoint grammar: ``embed_tokens``, ``norm``, ``layers.N`` or ``layers.N.<module path>``
(e.g. ``layers.N.mlp``, ``layers.N.self_attn``, ``layers.N.mlp.down_proj``)."""


class Hookpoint(NamedTuple):
    """A hookpoint name taken apart: ``layers.10.mlp`` → ``("layers.10.mlp", 10, "mlp")``."""

    name: str
    layer: int | None
    """The decoder block, None for ``embed_tokens`` and ``norm``."""
    submodule: str
    """The module path inside the block (``mlp``, ``self_attn``, …), "" for the block's output."""


def parse_hookpoint(name: str) -> Hookpoint | None:
    """One hookpoint name taken apart by the grammar, None when it is not one (no model needed)."""
    m = _HOOKPOINT.match(name) if isinstance(name, str) else None
    if m is None:
        return None
    layer = int(m.group(2)) if m.group(2) is not None else None
    return Hookpoint(name, layer, (m.group(3) or "").removeprefix("."))


def is_hookpoint(name) -> bool:
    """Whether ``name`` is a hookpoint name by the grammar (not whether a model has it)."""
    return parse_hookpoint(name) is not None


class _StopForward(Exception):
    """Raised inside a hook once every requested hookpoint has been captured."""


def decoder_stack(model: nn.Module) -> nn.Module:
    """The module hookpoint names are relative to (``model.model`` for a Qwen2ForCausalLM)."""
    base = getattr(model, "base_model", model)
    if not hasattr(base, "layers"):
        raise ThinksaeError(f"{type(model).__name__} has no decoder stack with `.layers`")
    return base


def num_layers(model: nn.Module) -> int:
    """Number of decoder blocks."""
    return len(decoder_stack(model).layers)


def parse_hookpoints(spec: str | Sequence[str]) -> list[str]:
    """Split a comma-separated hookpoint list, dropping blanks and duplicates (order kept)."""
    names = spec.split(",") if isinstance(spec, str) else list(spec)
    out: list[str] = []
    for name in (n.strip() for n in names):
        if name and name not in out:
            out.append(name)
    if not out:
        raise ThinksaeError("no hookpoint given (e.g. --hookpoint layers.10)")
    return out


def resolve_hookpoint(model: nn.Module, name: str) -> nn.Module:
    """The module behind a hookpoint name; a clear error for unknown names or layers out of range."""
    parsed = parse_hookpoint(name)
    if parsed is None:
        raise ThinksaeError(
            f"unknown hookpoint {name!r}: expected layers.N, layers.N.mlp, layers.N.self_attn, "
            "embed_tokens or norm"
        )
    if parsed.layer is not None:
        n_layers = num_layers(model)
        layer = parsed.layer
        if layer >= n_layers:
            raise ThinksaeError(
                f"hookpoint {name!r}: layer {layer} out of range, the model has {n_layers} "
                f"layers (0..{n_layers - 1})"
            )
    try:
        return decoder_stack(model).get_submodule(name)
    except AttributeError:
        raise ThinksaeError(f"unknown hookpoint {name!r}: no such module in the model") from None


def _first_tensor(output) -> Tensor:
    return output[0] if isinstance(output, (tuple, list)) else output


@torch.inference_mode()
def capture(
    model: nn.Module,
    hookpoints: str | Sequence[str],
    input_ids: Tensor,
    attention_mask: Tensor | None = None,
) -> dict[str, Tensor]:
    """Run ``model`` on a batch and return each hookpoint's output ``[batch, seq, d]``.

    The forward stops right after the last requested hookpoint has produced its output. Hooks
    are always removed, also when the forward raises.
    """
    names = parse_hookpoints(hookpoints)
    modules = {name: resolve_hookpoint(model, name) for name in names}
    captured: dict[str, Tensor] = {}

    def make_hook(name: str):
        def hook(_module, _inputs, output):
            captured[name] = _first_tensor(output).detach()
            if len(captured) == len(names):
                raise _StopForward

        return hook

    handles = [mod.register_forward_hook(make_hook(n)) for n, mod in modules.items()]
    try:
        decoder_stack(model)(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
    except _StopForward:
        pass
    finally:
        for h in handles:
            h.remove()
    missing = [n for n in names if n not in captured]
    if missing:
        raise ThinksaeError(f"hookpoints {missing} never ran during the forward pass")
    return {n: captured[n] for n in names}
