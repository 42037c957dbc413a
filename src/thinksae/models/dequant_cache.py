"""A de-quantised copy of a GGUF model in the cache, so that only the first load de-quantises.

De-quantising the offline GGUF takes ~2 minutes on a CPU, on every load. After the first load the
model (safetensors), its config and the GGUF's tokenizer are saved to
``<cache>/dequant/<sha256 of the GGUF, 16 hex>-<dtype>/``; later loads read that directory, which
is disk-bound. The offline model's copy takes 7.1 GB in float32 (its LM head is not tied), 3.6 GB
in bfloat16.

The copy is written into a temporary directory that is renamed into place once whole, its manifest
(``thinksae-dequant.json``) written last. "Verified" on load means, cheaply: the manifest names
this GGUF checksum and dtype; every file has its recorded size; small files (config, tokenizer)
hash to their recorded SHA-256; each ``.safetensors`` file's header (tensor names, shapes, offsets)
and 16 blocks of 64 KiB spread over its data hash as recorded. The full SHA-256 of each file is
recorded at write time too (hashing 6 GB on every load would cost more than it saves). A copy
that fails the check, or fails to load, is reported in one warning line and replaced.
``THINKSAE_DEQUANT_CACHE=0`` (or ``load_model(dequant_cache=False)``) turns the copy off.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
from pathlib import Path

from ..atomic import atomic_dir, sha256_file, write_json
from ..env import env_flag
from .offline import _exclusive, _fingerprint, _marker, default_cache_dir

DEQUANT_SUBDIR = "dequant"
MANIFEST = "thinksae-dequant.json"
FORMAT = 1
ENV_SWITCH = "THINKSAE_DEQUANT_CACHE"
"""Environment switch (:func:`thinksae.env.env_flag`; default on): off disables the de-quantised copy."""
_SMALL = 64 << 20
"""Files up to this size are fully hashed on every load."""
_SAMPLES, _SAMPLE_BYTES = 16, 64 << 10


def enabled(option: bool | None = None) -> bool:
    """``option`` if given, else the environment switch (default on)."""
    if option is not None:
        return option
    return env_flag(ENV_SWITCH, True)


def warn(message: str) -> None:
    """One line on stderr."""
    print(f"thinksae: warning: {message}", file=sys.stderr, flush=True)


def gguf_sha256(gguf: Path) -> str:
    """SHA-256 of a GGUF; taken from `fetch_offline`'s marker when it vouches for this very file."""
    try:
        recorded = json.loads(_marker(gguf).read_text())
        if recorded == _fingerprint(recorded["sha256"], gguf.stat()):
            return recorded["sha256"]
    except (OSError, ValueError, KeyError, TypeError):
        pass
    return sha256_file(gguf)


def entry_dir(source_sha256: str, dtype: str, cache_dir: Path | None = None) -> Path:
    """Directory of the copy of the GGUF with checksum ``source_sha256`` in ``dtype``."""
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    return root / DEQUANT_SUBDIR / f"{source_sha256[:16]}-{dtype}"


def _safetensors_digests(path: Path, size: int) -> dict[str, str]:
    """SHA-256 of the header (length prefix + JSON) and of 16 evenly spread 64 KiB blocks."""
    with open(path, "rb") as f:
        prefix = f.read(8)
        header = hashlib.sha256(prefix + f.read(int.from_bytes(prefix, "little")))
        samples = hashlib.sha256()
        for i in range(_SAMPLES):
            f.seek(max(0, size - _SAMPLE_BYTES) * i // (_SAMPLES - 1))
            samples.update(f.read(_SAMPLE_BYTES))
    return {"header_sha256": header.hexdigest(), "samples_sha256": samples.hexdigest()}


def _describe(path: Path, full: bool) -> dict:
    """What the manifest records of a file (``full``: also the whole file's SHA-256)."""
    size = path.stat().st_size
    out: dict = {"size": size}
    if path.suffix == ".safetensors" and size >= 8:
        out.update(_safetensors_digests(path, size))
    if full or size <= _SMALL:
        out["sha256"] = sha256_file(path)
    return out


def problem(entry: Path, source_sha256: str, dtype: str) -> str | None:
    """Why the copy in ``entry`` cannot be used (None: it checks out; see the module docstring)."""
    try:
        manifest = json.loads((entry / MANIFEST).read_text())
        files = manifest["files"]
    except FileNotFoundError:
        return "missing"
    except (OSError, ValueError, KeyError, TypeError) as e:
        return f"unreadable manifest ({e})"
    if (manifest.get("format"), manifest.get("source_sha256"), manifest.get("dtype")) != (
            FORMAT, source_sha256, dtype):
        return "the manifest is for another GGUF, dtype or format"
    for name, want in files.items():
        path = entry / name
        if not path.is_file() or path.stat().st_size != want.get("size"):
            return f"{name} is missing or has the wrong size"
        got = _describe(path, full=False)
        if any(got[k] != want.get(k) for k in got if k != "size"):
            return f"{name} does not match its recorded checksum"
    return None


def _save_model(model, directory: Path) -> None:
    """Weights (one safetensors file, tied weights once), config and generation config.

    transformers refuses ``save_pretrained`` on a model it loaded from a GGUF (the GGUF
    quantisation config stays attached), so the files are written here, that config left out.
    """
    from safetensors.torch import save_model

    save_model(model, str(directory / "model.safetensors"), metadata={"format": "pt"})
    config = json.loads(model.config.to_json_string(use_diff=False))
    config.pop("quantization_config", None)
    write_json(directory / "config.json", config)
    if getattr(model, "generation_config", None) is not None:
        model.generation_config.save_pretrained(directory)


def write_entry(entry: Path, model, tokenizer, source_sha256: str, dtype: str) -> bool:
    """Save ``model`` and ``tokenizer`` as the verified copy in ``entry``; True when written.

    Skipped with a warning when the disk lacks room; any failure leaves no partial copy behind.
    """
    need = sum(p.numel() * p.element_size() for p in model.state_dict().values()) + (64 << 20)
    entry.parent.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(entry.parent).free
    if free < need * 1.05:
        warn(f"not keeping a de-quantised copy in {entry.parent}: it needs {need / 1e9:.1f} GB, "
             f"{free / 1e9:.1f} GB free")
        return False
    with _exclusive(entry.parent / ".lock"):
        if problem(entry, source_sha256, dtype) is None:  # another process wrote it meanwhile
            return True
        for stale in entry.parent.glob(f".{entry.name}.*.tmp"):  # from a killed writer
            shutil.rmtree(stale, ignore_errors=True)
        try:
            with atomic_dir(entry) as tmp:
                _save_model(model, tmp)
                tokenizer.save_pretrained(tmp)
                files = {p.name: _describe(p, full=True) for p in sorted(tmp.iterdir()) if p.is_file()}
                write_json(tmp / MANIFEST, {"format": FORMAT, "source_sha256": source_sha256,
                                            "dtype": dtype, "files": files})
                for p in tmp.iterdir():  # a shared, read-only artefact, like the GGUF
                    p.chmod(0o644)
                tmp.chmod(0o755)
        except OSError as e:
            warn(f"could not keep a de-quantised copy in {entry}: {e.strerror or e}")
            return False
    return True
