"""Read a GGUF file's key/value header alone, and turn it into a transformers config.

``gguf.GGUFReader`` parses every field, tokenizer arrays included, and every tensor record: 28 s
for the offline model's header on a busy 2-core CPU. Here the scalar keys are read and arrays are
skipped (their element count is kept), so the header of a 1 GB GGUF reads in well under a second.
Value type codes are `gguf.GGUFValueType`'s.
"""

from __future__ import annotations

import os
import struct
from typing import Any, BinaryIO, NamedTuple

from ..errors import ThinksaeError

_MAGIC = b"GGUF"
_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q",
            11: "<q", 12: "<d"}
_STRING, _ARRAY = 8, 9


class ArrayInfo(NamedTuple):
    """What the header keeps of an array value (its elements are skipped)."""

    item_type: int
    count: int


def _read(f: BinaryIO, fmt: str):
    size = struct.calcsize(fmt)
    data = f.read(size)
    if len(data) != size:
        raise ThinksaeError(f"{f.name}: GGUF header truncated")
    return struct.unpack(fmt, data)[0]


def _string(f: BinaryIO) -> str:
    n = _read(f, "<Q")
    data = f.read(n)
    if len(data) != n:
        raise ThinksaeError(f"{f.name}: GGUF header truncated")
    return data.decode("utf-8", errors="replace")


def _skip_array(f: BinaryIO, item: int, count: int) -> None:
    if item in _SCALARS:
        f.seek(count * struct.calcsize(_SCALARS[item]), os.SEEK_CUR)
    elif item == _STRING:
        for _ in range(count):
            f.seek(_read(f, "<Q"), os.SEEK_CUR)
    elif item == _ARRAY:
        for _ in range(count):
            _skip_array(f, _read(f, "<I"), _read(f, "<Q"))
    else:
        raise ThinksaeError(f"{f.name}: unknown GGUF value type {item}")


def read_gguf_header(path: str | os.PathLike) -> dict[str, Any]:
    """The scalar and string keys of a GGUF header; an array key maps to an `ArrayInfo`."""
    with open(path, "rb", buffering=1 << 16) as f:
        if f.read(4) != _MAGIC:
            raise ThinksaeError(f"{path} is not a GGUF file (no GGUF magic)")
        version = _read(f, "<I")
        if version not in (2, 3):
            raise ThinksaeError(f"{path}: unsupported GGUF version {version}")
        _read(f, "<Q")  # tensor count
        out: dict[str, Any] = {}
        for _ in range(_read(f, "<Q")):
            key, kind = _string(f), _read(f, "<I")
            if kind in _SCALARS:
                out[key] = _read(f, _SCALARS[kind])
            elif kind == _STRING:
                out[key] = _string(f)
            elif kind == _ARRAY:
                item, count = _read(f, "<I"), _read(f, "<Q")
                out[key] = ArrayInfo(item, count)
                _skip_array(f, item, count)
            else:
                raise ThinksaeError(f"{path}: unknown GGUF value type {kind} for key {key!r}")
    return out


def gguf_config(path: str | os.PathLike):
    """A transformers config with the GGUF's shapes, or None for an architecture transformers'
    GGUF support does not map. Maps keys with transformers' own GGUF table."""
    from transformers import AutoConfig
    from transformers.integrations.ggml import GGUF_CONFIG_MAPPING

    header = read_gguf_header(path)
    arch = header.get("general.architecture")
    mapping = GGUF_CONFIG_MAPPING.get(arch) if isinstance(arch, str) else None
    if mapping is None:
        return None
    kwargs = {}
    for key, attr in mapping.items():
        value = header.get(f"{arch}.{key}")
        if attr is not None and value is not None and not isinstance(value, ArrayInfo):
            kwargs[attr] = value
    tokens = header.get("tokenizer.ggml.tokens")
    if isinstance(tokens, ArrayInfo) and "vocab_size" not in kwargs:
        kwargs["vocab_size"] = tokens.count
    try:
        return AutoConfig.for_model(arch, **kwargs)
    except (ValueError, KeyError):
        return None
