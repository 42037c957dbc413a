"""Shard files: safetensors written atomically, read back memory-mapped (no copy of the whole file)."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

from .. import atomic
from ..errors import ThinksaeError

_NUMPY = {
    "F32": np.float32,
    "F16": np.float16,
    "BF16": np.uint16,  # numpy has no bfloat16: read the bits, reinterpret in torch
    "I64": np.int64,
    "I32": np.int32,
    "I16": np.int16,
    "U8": np.uint8,
    "I8": np.int8,
}


def write_shard(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    """Write tensors to a safetensors file atomically (deterministic bytes for equal tensors)."""
    with atomic.atomic_path(path) as tmp:
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp))


def memmap_shard(path: Path) -> dict[str, np.ndarray]:
    """Map each tensor of a safetensors file as a read-only numpy array (bf16 as uint16 bits)."""
    try:
        with open(path, "rb") as f:
            (header_len,) = struct.unpack("<Q", f.read(8))
            header = json.loads(f.read(header_len))
    except (OSError, struct.error, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ThinksaeError(f"cannot read shard {path}: {e}") from None
    size = path.stat().st_size
    arrays: dict[str, np.ndarray] = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        begin, end = info["data_offsets"]
        if 8 + header_len + end > size:
            raise ThinksaeError(f"shard {path} is truncated (tensor {name!r} runs past the end)")
        shape = tuple(info["shape"])
        if end == begin:
            arrays[name] = np.zeros(shape, dtype=_NUMPY[info["dtype"]])
            continue
        arrays[name] = np.memmap(
            path, dtype=_NUMPY[info["dtype"]], mode="r", offset=8 + header_len + begin, shape=shape
        )
    return arrays


def to_torch(array: np.ndarray, dtype_name: str) -> torch.Tensor:
    """A numpy array from :func:`memmap_shard` (fancy-indexed copy) as a torch tensor."""
    tensor = torch.from_numpy(np.array(array))  # a writable copy
    if dtype_name == "bfloat16":
        tensor = tensor.view(torch.bfloat16)
    return tensor
