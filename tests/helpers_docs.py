"""The commands and example files of the README and the docs site, read from their fenced blocks.

A command is a line of a ``bash``/``sh``/``shell``/``console`` block that starts ``thinksae``,
``python``, ``torchrun`` or ``bash`` (after ``$ `` and ``VAR=value`` prefixes; a trailing ``\\``
continues it). A comment at its end holding ``needs: REASON, ...`` marks it as not run by the
tests, for the reasons of `REASONS` (docs/contributing.md explains the convention). A block whose
first line is ``# file: NAME`` is an example file the commands read.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path
from typing import NamedTuple

import yaml

ROOT = Path(__file__).resolve().parents[1]

REASONS = {
    "hub": "downloads from the Hugging Face hub",
    "gpu": "needs CUDA",
    "offline-model": "needs the 1.1 GB offline GGUF and minutes per stage",
    "network": "installs or downloads from PyPI",
    "long": "runs for many minutes or hours",
    "server": "serves until stopped",
    "endpoint": "needs an OpenAI-compatible server",
    "writes-checkout": "rewrites files of the checkout",
}
"""The reasons a marker may give, and what each means."""

RECORDS = {"docs/findings.md": ("offline-model", "long")}
"""Pages kept as a record of a run (not edited to carry markers): their commands count as marked
with these reasons."""

PENDING_OPTIONS = {"--run": "`--run DIR` (issue 30: every stage takes the run directory)"}
"""Options the docs already use that a command may not have yet: a command using one its parser
lacks is skipped with this reason instead of failed, and runs once the option exists."""

PROGRAMS = ("thinksae", "python", "python3", "torchrun", "bash")
SHELL_LANGS = ("bash", "sh", "shell", "console")
_FENCE = re.compile(r"^(\s*)(```+|~~~+)\s*([\w-]*)")
_MARKER = re.compile(r"needs:\s*([\w-]+(?:\s*,\s*[\w-]+)*)")
_FILE = re.compile(r"^#\s*file:\s*(\S+)\s*$")
_ASSIGN = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")


class Block(NamedTuple):
    page: str
    line: int
    lang: str
    lines: list[str]


class DocCommand(NamedTuple):
    page: str
    """Path of the page relative to the checkout."""
    line: int
    text: str
    """The command without its trailing comment, continuation lines joined."""
    needs: tuple[str, ...]
    """The marker's reasons (empty: the tests run it)."""

    @property
    def id(self) -> str:
        return f"{self.page}:{self.line}"

    @property
    def argv(self) -> list[str]:
        """The command's words without ``VAR=value`` prefixes."""
        words = shlex.split(self.text)
        while words and _ASSIGN.match(words[0]):
            words.pop(0)
        return words

    @property
    def program(self) -> str:
        return self.argv[0]

    @property
    def thinksae_argv(self) -> list[str] | None:
        """The arguments of `thinksae` this command runs (also through ``python -m thinksae``
        and ``torchrun … -m thinksae``), None for other commands."""
        words = self.argv
        if words[0] == "thinksae":
            return words[1:]
        if words[0] in ("python", "python3", "torchrun") and "-m" in words:
            i = words.index("-m")
            if words[i + 1:i + 2] == ["thinksae"]:
                return words[i + 2:]
        return None


def nav_pages(mkdocs_yml: Path = ROOT / "mkdocs.yml") -> list[str]:
    """The site's pages in nav order, as paths relative to the checkout."""
    def walk(node) -> list[str]:
        if isinstance(node, str):
            return [node] if node.endswith(".md") else []
        if isinstance(node, dict):
            return [p for v in node.values() for p in walk(v)]
        if isinstance(node, list):
            return [p for v in node for p in walk(v)]
        return []
    config = yaml.safe_load(mkdocs_yml.read_text())
    return [f"{config.get('docs_dir', 'docs')}/{p}" for p in walk(config.get("nav", []))]


def pages() -> list[str]:
    """README.md, the site's pages in nav order, then any other page of docs/ (sorted)."""
    order = ["README.md", *nav_pages()]
    rest = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "docs").rglob("*.md"))
    return order + [p for p in rest if p not in order]


def blocks(page: str) -> list[Block]:
    """The fenced blocks of a page (indented ones, e.g. inside admonitions, dedented)."""
    out: list[Block] = []
    open_fence: tuple[str, str, int, str, list[str]] | None = None
    for n, line in enumerate((ROOT / page).read_text().splitlines(), 1):
        if open_fence is None:
            m = _FENCE.match(line)
            if m:
                open_fence = (m.group(1), m.group(2), n, m.group(3).lower(), [])
            continue
        indent, fence, start, lang, body = open_fence
        if line.strip().startswith(fence) and line.strip().strip(fence[0]) == "":
            out.append(Block(page, start + 1, lang, body))
            open_fence = None
        else:
            body.append(line[len(indent):] if line.startswith(indent) else line.lstrip())
    return out


def split_comment(line: str) -> tuple[str, str]:
    """``(command, comment)``: the comment starts at a ``#`` that begins a word outside quotes."""
    quote = None
    for i, ch in enumerate(line):
        if quote:
            quote = None if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch == "#" and (i == 0 or line[i - 1].isspace()):
            return line[:i].rstrip(), line[i + 1:].strip()
    return line.rstrip(), ""


def commands(page: str) -> list[DocCommand]:
    """The commands of a page's shell blocks, with their markers."""
    out = []
    record = RECORDS.get(page, ())
    for block in blocks(page):
        if block.lang not in SHELL_LANGS:
            continue
        pending, first = "", 0
        for n, raw in enumerate(block.lines, block.line):
            line = raw.strip()
            if not pending:
                line = line.removeprefix("$ ")
                first = n
            text, comment = split_comment(line)
            if text.endswith("\\"):
                pending += text[:-1] + " "
                continue
            text, pending = (pending + text).strip(), ""
            if not text:
                continue
            cmd = DocCommand(page, first, text, ())
            if cmd.program not in PROGRAMS:
                continue
            marker = _MARKER.search(comment)
            needs = tuple(r.strip() for r in marker.group(1).split(",")) if marker else ()
            out.append(cmd._replace(needs=needs or record))
    return out


def all_commands() -> list[DocCommand]:
    return [c for page in pages() for c in commands(page)]


def example_files() -> list[tuple[str, str, str]]:
    """``(page, name, content)`` of every block whose first line is ``# file: NAME``."""
    out = []
    for page in pages():
        for block in blocks(page):
            m = _FILE.match(block.lines[0].strip()) if block.lines else None
            if m:
                out.append((page, m.group(1), "\n".join(block.lines[1:]) + "\n"))
    return out
