"""Explainers: a local chat model (transformers ``generate``, prompts batched) or an
OpenAI-compatible chat endpoint (vLLM, llama.cpp server, Ollama) by URL. Both return raw replies;
:func:`~thinksae.explain.prompts.parse_explanation` takes the explanation out of them."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Protocol

import torch

from ..errors import ThinksaeError
from .prompts import EXPLAINER_SYSTEM


class Explainer(Protocol):
    key: str
    """Names the explainer and its settings in the cache."""
    opens_think: bool
    """Whether the prompt itself opens a ``<think>`` block (the reply then starts inside it)."""

    def replies(self, prompts: list[str]) -> list[str]: ...


def _messages(prompt: str) -> list[dict]:
    return [{"role": "system", "content": EXPLAINER_SYSTEM}, {"role": "user", "content": prompt}]


class LocalExplainer:
    """Greedy generation with a local model, ``batch_size`` prompts at a time (left-padded)."""

    def __init__(self, model, tokenizer, name: str, max_new_tokens: int = 128, batch_size: int = 8):
        self.model, self.tok = model, tokenizer
        self.max_new_tokens, self.batch_size = max_new_tokens, batch_size
        self.key = f"local:{name}:greedy:{max_new_tokens}"
        self.opens_think = False
        self.forwards = 0

    def _text(self, prompt: str) -> str:
        if getattr(self.tok, "chat_template", None):
            text = self.tok.apply_chat_template(_messages(prompt), add_generation_prompt=True,
                                                tokenize=False)
            self.opens_think = text.rstrip().endswith("<think>")
            return text
        return f"{EXPLAINER_SYSTEM}\n\n{prompt}\n"

    @torch.inference_mode()
    def replies(self, prompts: list[str]) -> list[str]:
        device = next(self.model.parameters()).device
        side, self.tok.padding_side = self.tok.padding_side, "left"
        out: list[str] = []
        try:
            for a in range(0, len(prompts), self.batch_size):
                texts = [self._text(p) for p in prompts[a : a + self.batch_size]]
                enc = self.tok(texts, return_tensors="pt", padding=True, add_special_tokens=False)
                pad = self.tok.pad_token_id if self.tok.pad_token_id is not None else self.tok.eos_token_id
                gen = self.model.generate(input_ids=enc["input_ids"].to(device),
                                          attention_mask=enc["attention_mask"].to(device),
                                          max_new_tokens=self.max_new_tokens, do_sample=False,
                                          pad_token_id=pad)
                new = gen[:, enc["input_ids"].shape[1]:]
                self.forwards += int(new.shape[1])
                out += self.tok.batch_decode(new, skip_special_tokens=True)
        finally:
            self.tok.padding_side = side
        return out


def _first_line(text: str) -> str:
    line = next((ln.strip() for ln in str(text).splitlines() if ln.strip()), "")
    return line[:160]


class EndpointExplainer:
    """POSTs each prompt to ``{url}/chat/completions`` (``url`` like ``http://host:8000/v1``).
    A timeout, an HTTP error or a reply without ``choices[0].message.content`` raises a one-line
    :class:`ThinksaeError`."""

    def __init__(self, url: str, model: str, timeout: float = 120.0, max_tokens: int = 512,
                 api_key: str | None = None):
        if not url.startswith(("http://", "https://")):
            raise ThinksaeError(f"--endpoint must be an http(s) URL (got {url!r})")
        base = url.rstrip("/")
        self.url = base if base.endswith("/chat/completions") else base + "/chat/completions"
        self.model, self.timeout, self.max_tokens, self.api_key = model, timeout, max_tokens, api_key
        self.key = f"endpoint:{base}:{model}:greedy:{max_tokens}"
        self.opens_think = False

    def _post(self, prompt: str) -> str:
        body = json.dumps({"model": self.model, "messages": _messages(prompt),
                           "max_tokens": self.max_tokens, "temperature": 0.0}).encode()
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        req = urllib.request.Request(self.url, data=body, headers=headers, method="POST")
        where = f"explainer endpoint {self.url}"
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                raw = resp.read()
        except urllib.error.HTTPError as e:
            detail = _first_line(e.read().decode("utf-8", "replace"))
            raise ThinksaeError(f"{where} answered HTTP {e.code}: {detail or e.reason}") from None
        except TimeoutError:
            raise ThinksaeError(f"{where} did not answer within {self.timeout:g} s") from None
        except urllib.error.URLError as e:
            if isinstance(e.reason, TimeoutError):
                raise ThinksaeError(f"{where} did not answer within {self.timeout:g} s") from None
            raise ThinksaeError(f"{where} is unreachable: {_first_line(e.reason)}") from None
        try:
            content = json.loads(raw)["choices"][0]["message"]["content"]
        except (ValueError, KeyError, IndexError, TypeError):
            raise ThinksaeError(f"{where} sent no usable JSON (want choices[0].message.content): "
                                f"{_first_line(raw.decode('utf-8', 'replace'))!r}") from None
        if not isinstance(content, str):
            raise ThinksaeError(f"{where} sent a non-text message content")
        return content

    def replies(self, prompts: list[str]) -> list[str]:
        return [self._post(p) for p in prompts]
