"""Model plumbing for replacing a hookpoint's output: the splice hook, the final hidden state (of
a whole pass, or of the blocks above a block's output run alone) and the LM head. Used by
evaluation (spliced losses), steering and the monitor."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

from torch import Tensor, nn

from ..errors import ThinksaeError
from .hookpoints import decoder_stack, parse_hookpoint

RESUMABLE_TYPES = frozenset({"qwen2", "qwen3", "llama", "mistral"})
"""Model types whose decoder stack hands its input embeddings to block 0 unchanged (no scaling,
no positional addition), so the blocks above block N run alone from block N's output give what a
whole pass gives (tests check it bit for bit)."""


@contextlib.contextmanager
def splice(module: nn.Module, replace: Callable[[Tensor], Tensor]) -> Iterator[None]:
    """While open, ``module``'s output is ``replace(output)`` (for a tuple output: its first
    element; the rest passes through)."""

    def hook(_module, _inputs, output):
        if isinstance(output, tuple):
            return (replace(output[0]), *output[1:])
        if isinstance(output, list):
            return [replace(output[0]), *output[1:]]
        return replace(output)

    handle = module.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


def final_hidden(model: nn.Module, input_ids: Tensor, attention_mask: Tensor | None) -> Tensor:
    """The decoder stack's last hidden state (after the final norm) ``[batch, seq, d_model]``."""
    out = decoder_stack(model)(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
    return out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]


def resume_layer(model: nn.Module, hookpoint: str) -> int | None:
    """The block whose output ``hookpoint`` is, when the blocks above it can run alone from that
    output (:func:`final_hidden_from`); None otherwise (a sub-module of a block, the embeddings,
    or a model type not in :data:`RESUMABLE_TYPES`)."""
    parsed = parse_hookpoint(hookpoint)
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    if parsed is None or parsed.layer is None or parsed.submodule or model_type not in RESUMABLE_TYPES:
        return None
    return parsed.layer


@contextlib.contextmanager
def _only_blocks_above(stack: nn.Module, layer: int) -> Iterator[None]:
    """While open, the stack holds only its blocks above ``layer`` (and the config their types)."""
    blocks, config = stack.layers, getattr(stack, "config", None)
    types = getattr(config, "layer_types", None)
    stack.layers = nn.ModuleList(list(blocks)[layer + 1:])
    if types is not None:
        config.layer_types = list(types)[layer + 1:]
    try:
        yield
    finally:
        stack.layers = blocks
        if types is not None:
            config.layer_types = types


def final_hidden_from(model: nn.Module, layer: int, x: Tensor, attention_mask: Tensor | None
                      ) -> Tensor:
    """The last hidden state (after the final norm) of a pass whose block ``layer`` output is
    ``x`` ``[batch, seq, d_model]``: only the blocks above it run (``layer`` from
    :func:`resume_layer`). Equals :func:`final_hidden` with that output spliced in, for the
    cost of the blocks above. Not thread-safe: the stack is changed while it runs."""
    stack = decoder_stack(model)
    with _only_blocks_above(stack, layer):
        out = stack(inputs_embeds=x, attention_mask=attention_mask, use_cache=False)
    return out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]


def output_head(model: nn.Module) -> nn.Module:
    """The module that maps final hidden states to logits."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if head is None:
        raise ThinksaeError(f"{type(model).__name__} has no LM head: cannot score next tokens")
    return head
