"""Model plumbing for replacing a hookpoint's output: the splice hook, the final hidden state and
the LM head. Used by evaluation (spliced losses), steering and the monitor."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

from torch import Tensor, nn

from ..errors import ThinksaeError
from .hookpoints import decoder_stack


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


def output_head(model: nn.Module) -> nn.Module:
    """The module that maps final hidden states to logits."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if head is None:
        raise ThinksaeError(f"{type(model).__name__} has no LM head: cannot score next tokens")
    return head
