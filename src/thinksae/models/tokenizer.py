"""The tokenizer of a model spec alone, without its weights (importing traces, reading a store)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from ..errors import ThinksaeError
from . import dequant_cache as dq
from .loading import TOKENIZER_FILES, pretrained_kwargs
from .offline import default_cache_dir


def _dequant_copy(source: str, kwargs: dict) -> Path | None:
    """A verified de-quantised copy (any dtype) of the GGUF in ``kwargs``: it holds the GGUF's own
    tokenizer, already converted (reading it from the GGUF takes ~13 s for the offline model)."""

    if "gguf_file" not in kwargs or not dq.enabled():
        return None
    if not any((default_cache_dir() / dq.DEQUANT_SUBDIR).glob("*-*")):  # no copy at all: hash nothing
        return None
    sha = dq.gguf_sha256(Path(source) / kwargs["gguf_file"])
    for dtype in ("float32", "bfloat16", "float16"):
        entry = dq.entry_dir(sha, dtype)
        if dq.problem(entry, sha, dtype) is None:
            return entry
    return None


def load_tokenizer(spec: str):
    """The tokenizer of ``spec``: a model spec as `load_model` takes it (hub id, local directory,
    .gguf, ``offline``) or a directory holding only tokenizer files. A GGUF's comes from its
    de-quantised copy when one checks out (see :mod:`.dequant_cache`), else from the GGUF."""
    from transformers import AutoTokenizer

    path = Path(spec).expanduser()
    if path.is_dir() and any((path / f).is_file() for f in TOKENIZER_FILES):
        source, kwargs = str(path), {"local_files_only": True}
    else:
        source, kwargs = pretrained_kwargs(spec)
        copy = _dequant_copy(source, kwargs)
        if copy is not None:
            source, kwargs = str(copy), {"local_files_only": True}
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
