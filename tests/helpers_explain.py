"""Shared pieces of the explain tests: a scripted explainer model around the tiny model."""

from __future__ import annotations

import re

import torch


class ScriptedModel:
    """Stands in for a chat model: ``generate`` returns set text (a function of the feature named in
    the prompt), every other use (the scorer's forward) goes to the real tiny model."""

    def __init__(self, model, tokenizer, reply=lambda f: f"<think>\nhmm</think>\nExplanation: says {f}",
                 fail_after: int | None = None):
        self.model, self.tok, self.reply, self.fail_after = model, tokenizer, reply, fail_after
        self.prompts: list[str] = []

    def parameters(self):
        return self.model.parameters()

    @property
    def base_model(self):
        return self.model.base_model

    def get_output_embeddings(self):
        return self.model.get_output_embeddings()

    def generate(self, input_ids, attention_mask, max_new_tokens, **_):
        if self.fail_after is not None and len(self.prompts) >= self.fail_after:
            raise KeyboardInterrupt("scripted interruption")
        rows = []
        for ids in input_ids:
            text = self.tok.decode(ids, skip_special_tokens=True)
            self.prompts.append(text)
            f = int(re.search(r"Feature (\d+)\.", text).group(1))
            rows.append(self.tok.encode(self.reply(f), add_special_tokens=False)[:max_new_tokens])
        width = max(len(r) for r in rows)
        pad = self.tok.pad_token_id
        new = torch.tensor([r + [pad] * (width - len(r)) for r in rows])
        return torch.cat([input_ids, new], dim=1)
