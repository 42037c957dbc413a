"""The docs site: the generated command reference matches the CLI, the site builds in strict mode
(broken links and missing pages fail), and the README stays a short guide."""

from __future__ import annotations

import importlib.util
import io
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = ROOT / "docs" / "reference"


def _gen_reference():
    spec = importlib.util.spec_from_file_location("gen_reference", ROOT / "scripts" / "gen_reference.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def gen():
    return _gen_reference()


def test_the_command_reference_is_current(gen):
    stale = gen.stale()
    assert stale == [], (f"docs/reference is stale ({', '.join(stale)}): run "
                         "`python scripts/gen_reference.py` and commit the pages")


def test_the_reference_has_every_option_of_every_command(gen):
    from thinksae.cli import build_parser

    commands = gen.leaf_parsers(build_parser())
    assert {c for c, _ in commands} >= {"run", "corpus", "harvest", "train", "eval", "analyze",
                                        "validate", "explain", "steer", "monitor", "serve",
                                        "convert", "feature", "models fetch-offline"}
    for command, sub in commands:
        sub.print_help(io.StringIO())
        page = (REFERENCE / gen.page_name(command)).read_text()
        for action in sub._actions:
            for flag in action.option_strings:
                if flag not in ("-h", "--help"):
                    assert f"`{flag}" in page or f", {flag}" in page, f"{command}: {flag} missing"
            if action.help and action.help != "==SUPPRESS==" and "help" not in action.dest:
                text = gen.table_cell(gen.clean_help(action.help))
                assert text in page, f"{command}: help of {action.dest}"


def test_a_changed_missing_or_extra_page_is_stale(gen, tmp_path):
    assert gen.stale(tmp_path) == sorted(gen.pages())  # nothing written yet
    gen.write(tmp_path)
    assert gen.stale(tmp_path) == []
    (tmp_path / "steer.md").write_text((tmp_path / "steer.md").read_text().replace("Smax", "S"))
    (tmp_path / "train.md").unlink()
    (tmp_path / "old-command.md").write_text("# gone\n")
    assert gen.stale(tmp_path) == ["old-command.md", "steer.md", "train.md"]


def test_types_and_keys_come_from_the_dataclasses(gen):
    page = (REFERENCE / "train.md").read_text()
    assert "| `-k, --k` | `sae.k` | `int` | `32` |" in page  # a nested config: a dotted key
    assert "| `--store` | `store` | `str | None` | `None` |" in page
    steer = (REFERENCE / "steer.md").read_text()
    assert "| `--max_new_tokens` | `max_new_tokens` | `int` | `512` |" in steer  # a flat group
    assert "| `--sae` | `sae` | `str | None` | `None` |" in steer
    assert "| `--run` | `run` | `str | None` | `None` |" in steer


def _mkdocs_build(config: Path, site: Path, cwd: Path) -> subprocess.CompletedProcess:
    """`mkdocs build --strict` (never with -q: quiet hides the warnings strict mode counts)."""
    return subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-f",
                           str(config), "-d", str(site)], cwd=cwd, capture_output=True, text=True,
                          timeout=600, env={"PATH": "/usr/bin:/bin", "NO_MKDOCS_2_WARNING": "1",
                                            "PYTHONPATH": str(ROOT / "src")})


needs_mkdocs = pytest.mark.skipif(
    importlib.util.find_spec("mkdocs") is None or importlib.util.find_spec("material") is None,
    reason="mkdocs and mkdocs-material are not installed (pip install -e '.[docs]')")


@needs_mkdocs
def test_the_site_builds_strictly(tmp_path):
    done = _mkdocs_build(ROOT / "mkdocs.yml", tmp_path / "site", ROOT)
    assert done.returncode == 0, done.stdout + done.stderr
    site = tmp_path / "site"
    for page in ("index.html", "getting-started/index.html", "stages/steer/index.html",
                 "reference/steer/index.html", "performance/index.html", "findings/index.html",
                 "changelog/index.html"):
        assert (site / page).is_file(), page
    assert not list(site.rglob("findings-traces*")), "the traces are data, not part of the site"
    assert "Round of 2026-11-24" in (site / "changelog" / "index.html").read_text()


@needs_mkdocs
def test_a_broken_link_fails_the_build(tmp_path):
    """The strict build is a real check: the same site with one bad link does not build."""
    work = tmp_path / "copy"
    shutil.copytree(ROOT / "docs", work / "docs")
    shutil.copy(ROOT / "mkdocs.yml", work)
    shutil.copy(ROOT / "CHANGELOG.md", work)
    assert _mkdocs_build(work / "mkdocs.yml", tmp_path / "ok", work).returncode == 0
    page = work / "docs" / "stages" / "train.md"
    page.write_text(page.read_text() + "\nSee [the missing page](no-such-page.md).\n")
    done = _mkdocs_build(work / "mkdocs.yml", tmp_path / "bad", work)
    assert done.returncode != 0 and "no-such-page.md" in done.stdout + done.stderr


def test_the_readme_is_a_short_guide():
    lines = (ROOT / "README.md").read_text().splitlines()
    assert len(lines) <= 220
    text = "\n".join(lines)
    for must in ("bash scripts/demo.sh", "bash scripts/test.sh", "runs/offline-demo/index.html",
                 "thinksae serve runs/offline-demo", "seed-study", "--run runs/offline-demo"):
        assert must in text, must
