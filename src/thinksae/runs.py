"""A run directory, read once: where `thinksae run` put each stage's output, and ``--run DIR`` for
every stage command.

Layout (the folders are the pipeline table's, :data:`FOLDERS`)::

    run_config.json            the resolved pipeline config: model, hookpoint, device, dtype,
                               tokenizer, sae (a pretrained SAE) and one section per stage
    corpus/traces.jsonl        the traces
    store/<hookpoint>/         the activation store
    sae/<hookpoint>/           the trained SAE (or the config's pretrained ``sae``)
    features/                  the analysis (and its dashboard)
    eval/ splice/ validate/ explain/ steer/ monitor/

``thinksae <command> --run DIR`` fills the options a command leaves unset from the run:
:func:`with_run` (the SAE, store, analysis, corpus, model, tokenizer, hookpoint, device and
dtype, as the command has them), and writes what the command makes into ``DIR/cli/<command>``
unless ``--out`` is given, so a run's own stage folders stay as `thinksae run` left them.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import ThinksaeError

RUN_CONFIG = "run_config.json"
"""The file that marks a `thinksae run` directory."""
FOLDERS = {"corpus": "corpus", "harvest": "store", "train": "sae", "eval": "eval",
           "splice": "splice", "analyze": "features", "validate": "validate",
           "explain": "explain", "steer": "steer", "monitor": "monitor"}
"""Each pipeline stage's folder in a run directory."""
CLI_FOLDER = "cli"
"""Where stage commands given ``--run`` write (``<run>/cli/<command>``), unless ``--out``."""


@dataclass(frozen=True)
class RunDir:
    """A run directory and its config (module docstring)."""

    root: Path
    config: dict[str, Any]
    hookpoint: str

    @property
    def sae_dir(self) -> Path:
        """The pretrained SAE the config names, else the trained one."""
        sae = self.config.get("sae")
        return Path(sae) if sae and Path(sae).exists() else self.stage_dir("train") / self.hookpoint

    @property
    def store(self) -> Path:
        return self.stage_dir("harvest") / self.hookpoint

    @property
    def analysis(self) -> Path:
        return self.stage_dir("analyze")

    @property
    def traces(self) -> Path:
        return self.stage_dir("corpus") / "traces.jsonl"

    def stage_dir(self, stage: str) -> Path:
        return self.root / FOLDERS[stage]

    def cli_out(self, command: str) -> Path:
        return self.root / CLI_FOLDER / command


def read_run(run_dir: str | Path) -> RunDir:
    """The run's config, checked (a one-line error when ``run_dir`` is not a run directory)."""
    root = Path(run_dir)
    path = root / RUN_CONFIG
    if not path.is_file():
        raise ThinksaeError(f"{root} is not a run directory (no {RUN_CONFIG}); make one with "
                            "`thinksae run`")
    try:
        config = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ThinksaeError(f"cannot read {path}: {e}") from None
    hookpoint = config.get("hookpoint") if isinstance(config, dict) else None
    if not isinstance(hookpoint, str) or not hookpoint:
        raise ThinksaeError(f"{path} names no hookpoint")
    return RunDir(root, config, hookpoint)


def _from_run(run: RunDir, name: str) -> Any:
    """The value field ``name`` takes from ``run`` (None when the run has none)."""
    paths = {"sae": run.sae_dir, "store": run.store, "analysis": run.analysis,
             "corpus": run.traces}
    if name in paths:
        path = paths[name]
        return str(path) if path.exists() else None
    return run.config.get(name)


def with_run(cfg, command: str, fill: tuple[str, ...]):
    """``cfg`` with ``fill`` fields that are None taken from its ``--run`` directory, and its
    ``out`` (when None) set to ``<run>/cli/<command>`` (a file name kept from the field's
    ``out_name`` metadata); ``cfg`` itself when it names no run. The ``sae``'s hookpoint comes
    with it when the command has ``hookpoint``."""
    if getattr(cfg, "run", None) is None:
        return cfg
    run = read_run(cfg.run)
    changes = {name: _from_run(run, name) for name in (*fill, "hookpoint")
               if hasattr(cfg, name) and getattr(cfg, name) is None}
    names = {f.name: f for f in dataclasses.fields(cfg)}
    if "out" in names and cfg.out is None:
        leaf = names["out"].metadata.get("out_name")
        changes["out"] = str(run.cli_out(command) / leaf if leaf else run.cli_out(command))
    return dataclasses.replace(cfg, **{k: v for k, v in changes.items() if v is not None})


def with_defaults(cfg, **defaults):
    """``cfg`` with each field of ``defaults`` that is None set to its default (what a field
    left unset means once no ``--run`` filled it)."""
    changes = {k: v for k, v in defaults.items() if getattr(cfg, k) is None}
    return dataclasses.replace(cfg, **changes) if changes else cfg


def need(cfg, name: str, what: str) -> None:
    """A one-line error when the option ``name`` is still unset (neither given nor from
    ``--run``)."""
    if getattr(cfg, name) is None:
        raise ThinksaeError(f"give --{name} ({what}) or --run (a run directory of `thinksae run`)")
