"""The tokenizer of a model spec alone, without its weights (importing traces, reading a store)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from ..errors import ThinksaeError
from .loading import _pretrained_kwargs

_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")


def load_tokenizer(spec: str):
    """The tokenizer of ``spec``: a model spec as `load_model` takes it (hub id, local directory,
    .gguf, ``offline``) or a directory holding only tokenizer files."""
    from transformers import AutoTokenizer

    path = Path(spec).expanduser()
    if path.is_dir() and any((path / f).is_file() for f in _TOKENIZER_FILES):
        source, kwargs = str(path), {"local_files_only": True}
    else:
        source, kwargs = _pretrained_kwargs(spec)
    try:
        return AutoTokenizer.from_pretrained(source, **kwargs)
    except (OSError, ValueError) as e:
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ThinksaeError(f"cannot load the tokenizer of {spec}: {reason}") from None


def tokenizer_hash(tokenizer) -> str:
    """Hash of a tokenizer's vocabulary and added tokens: detects corpora tokenised differently."""
    vocab = sorted(tokenizer.get_vocab().items())
    added = sorted((t.content, i) for i, t in tokenizer.added_tokens_decoder.items())
    blob = json.dumps([vocab, added], ensure_ascii=False).encode()
    return hashlib.sha256(blob).hexdigest()[:16]
