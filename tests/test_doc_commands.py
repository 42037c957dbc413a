"""Every command in README.md and the docs runs, or says why not (docs/contributing.md).

Unmarked commands run in order in one workspace that holds what the pages refer to: ``my-model``
(a random 12-layer Qwen2 with the real R1 tokenizer, saved as a model directory), a run of the
offline-demo preset on it, ``configs/`` and the pages' example files. The run is the docs' "your
own model" recipe, `OWN_MODEL` — run end to end by the workspace fixture, so the command's own
test then finds every stage done — and ``runs/offline-demo`` points at it (the demo's run
directory, without the offline model). Marked commands are parsed by the real CLI parser
(``thinksae …``) or checked to exist (scripts).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import torch
from helpers_docs import PENDING_OPTIONS, REASONS, ROOT, DocCommand, all_commands, example_files

from thinksae.cli import build_parser, main

pytestmark = pytest.mark.slow

COMMANDS = all_commands()
RUNNABLE = list({c.text: c for c in reversed(COMMANDS) if not c.needs}.values())[::-1]
"""Unmarked commands, each distinct text once (its first place), in page order."""
MARKED = [c for c in COMMANDS if c.needs]
OWN_MODEL = "thinksae run --preset offline-demo --model ./my-model --out runs/my-model"
"""The README's and docs/own-model.md's recipe: the demo's preset on a local model directory."""


def _subparser(argv: list[str]):
    """The parser of the command ``argv`` names (``models fetch-offline`` too), and its name."""
    parser, name = build_parser(), []
    for word in argv:
        subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        if not subs or word not in subs[0].choices:
            break
        parser = subs[0].choices[word]
        name.append(word)
    return parser, " ".join(name)


def _pending(argv: list[str]) -> str | None:
    """Why the command cannot run yet: it uses a pending option its parser does not have."""
    sub, name = _subparser(argv)
    sub.print_help(io.StringIO())  # simple_parsing adds the dataclass options when help is asked
    have = {s for a in sub._actions for s in a.option_strings}
    for word in argv:
        option = word.split("=")[0]
        if option in PENDING_OPTIONS and option not in have:
            return f"`thinksae {name}` has no {option} yet: {PENDING_OPTIONS[option]}"
    return None


def _parse(argv: list[str]) -> None:
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err):
            build_parser().parse_args(argv)
    except SystemExit as e:
        pytest.fail(f"thinksae {' '.join(argv)}: the parser refuses it: {err.getvalue().strip()}"
                    f" (exit {e.code})")


def _script(cmd: DocCommand) -> Path | None:
    """The file a ``bash``/``python`` command runs, None for ``-m`` modules and ``-c`` code."""
    words = cmd.argv[1:]
    while words and words[0].startswith("-"):
        if words[0] in ("-m", "-c"):
            return None
        words = words[1:]
    return ROOT / words[0] if words else None


def test_the_pages_have_commands_and_the_markers_are_known():
    assert len(COMMANDS) >= 20 and RUNNABLE and MARKED
    assert OWN_MODEL in {c.text for c in RUNNABLE}, "the own-model recipe the workspace runs"
    unknown = [(c.id, r) for c in COMMANDS for r in c.needs if r not in REASONS]
    assert unknown == [], f"unknown marker reasons (docs/contributing.md lists them): {unknown}"


def test_example_file_names_are_unique():
    names = Counter(name for _, name, _ in example_files())
    assert [n for n, k in names.items() if k > 1] == []


@pytest.mark.parametrize("cmd", MARKED, ids=lambda c: c.id)
def test_a_marked_command_is_still_a_valid_command(cmd: DocCommand):
    argv = cmd.thinksae_argv
    if argv is not None:
        why = _pending(argv)
        if why:
            pytest.skip(why)
        _parse(argv)
        return
    script = _script(cmd)
    assert script is None or script.is_file(), f"{cmd.id}: {script} does not exist"


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """The directory the unmarked commands run in (see the module docstring)."""
    from conftest import TINY_CONFIG, r1_tokenizer
    from transformers import Qwen2Config, Qwen2ForCausalLM

    root = tmp_path_factory.mktemp("docs-workspace")
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(Qwen2Config(**{**TINY_CONFIG, "num_hidden_layers": 12})).eval()
    model.save_pretrained(root / "my-model")
    r1_tokenizer().save_pretrained(root / "my-model")
    (root / "configs").symlink_to(ROOT / "configs")
    for _, name, content in example_files():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(content)
    cwd, threads = Path.cwd(), torch.get_num_threads()
    env = {k: os.environ.get(k) for k in ("HF_HUB_OFFLINE", "THINKSAE_CACHE")}
    os.environ.update(HF_HUB_OFFLINE="1", THINKSAE_CACHE=str(root / "cache"))
    torch.set_num_threads(1)
    os.chdir(root)
    try:
        assert main([*OWN_MODEL.split()[1:], "--progress", "false"]) == 0
        (root / "runs" / "offline-demo").symlink_to("my-model")
        yield root
    finally:
        os.chdir(cwd)
        torch.set_num_threads(threads)
        for k, v in env.items():
            os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)


@pytest.mark.parametrize("cmd", RUNNABLE, ids=lambda c: c.id)
def test_an_unmarked_command_runs(cmd: DocCommand, workspace):
    argv = cmd.thinksae_argv
    if argv is not None:
        why = _pending(argv)
        if why:
            pytest.skip(why)
        assert Path.cwd() == workspace
        assert main(argv) == 0, f"{cmd.id}: `{cmd.text}` failed"
        return
    program = sys.executable if cmd.program.startswith("python") else cmd.program
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    done = subprocess.run([program, *cmd.argv[1:]], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, f"{cmd.id}: `{cmd.text}` exited {done.returncode}:\n" \
                                 f"{done.stdout[-2000:]}{done.stderr[-2000:]}"
