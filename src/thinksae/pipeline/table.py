"""The stages of `thinksae run`, declared once: one :class:`~.stage.Stage` record each in
`TABLE`, in running order, with the function that runs it (:mod:`.steps`). The spec checks
(`spec.py`), the hashing and skipping (`markers.py`, `run.py`) and the report (`report.py`) all read
this table.

Adding a stage: write its function in :mod:`.steps` (``fn(p, st) -> Step``: build the config
with ``p.config(st, **paths)`` and return it with the action that writes ``p.dir(st)``), add its
record where it runs, and, if the report shows it, a section in `report.SECTIONS` and the
templates."""

from __future__ import annotations

from ..errors import ThinksaeError
from ..runs import FOLDERS
from .stage import Stage
from .steps import (
    check_monitor,
    check_steer,
    step_analyze,
    step_corpus,
    step_eval,
    step_explain,
    step_harvest,
    step_monitor,
    step_splice,
    step_steer,
    step_train,
    step_validate,
)

TABLE: tuple[Stage, ...] = (
    Stage("corpus", FOLDERS["corpus"], "thinksae.corpus.config:CorpusConfig", step_corpus, managed=("out",)),
    Stage("harvest", FOLDERS["harvest"], "thinksae.store.config:HarvestConfig", step_harvest,
          upstream=("corpus",), managed=("corpus", "out")),
    Stage("train", FOLDERS["train"], "thinksae.train.config:TrainConfig", step_train,
          upstream=("harvest",), managed=("store", "model", "corpus", "hookpoint", "out"),
          all_ranks=True),
    Stage("eval", FOLDERS["eval"], "thinksae.evaluate.config:EvalConfig", step_eval,
          upstream=("train", "harvest"), version=2,
          managed=("run", "sae", "store", "model", "corpus", "out", "update_card")),
    Stage("splice", FOLDERS["splice"], "thinksae.evaluate.config:EvalConfig", step_splice,
          upstream=("train", "harvest"), optional=True, command="eval",
          managed=("run", "sae", "store", "corpus", "out", "update_card"), version=2),
    Stage("analyze", FOLDERS["analyze"], "thinksae.features.config:AnalyzeConfig", step_analyze,
          upstream=("train", "harvest"), managed=("run", "sae", "store", "corpus", "out"), version=2),
    Stage("validate", FOLDERS["validate"], "thinksae.validate.config:ValidateConfig", step_validate,
          upstream=("train", "harvest", "analyze"), optional=True,
          managed=("run", "sae", "store", "analysis", "out", "refresh_dashboard"), default_on=False),
    Stage("explain", FOLDERS["explain"], "thinksae.explain.config:ExplainConfig", step_explain,
          upstream=("train", "harvest", "analyze"), optional=True,
          managed=("run", "sae", "store", "analysis", "out"), default_on=False),
    Stage("steer", FOLDERS["steer"], "thinksae.steer.config:SteerConfig", step_steer,
          upstream=("train", "analyze"), optional=True, managed=("run", "sae", "out"),
          check=check_steer, version=2),
    Stage("monitor", FOLDERS["monitor"], "thinksae.monitor.config:MonitorConfig", step_monitor,
          upstream=("train", "analyze"), optional=True, extra=("question", "rule"),
          managed=("run", "sae", "serve", "live", "alert_log", "rules", "prompt"), check=check_monitor,
          version=2),
)
"""Every stage, in running order. eval: reconstruction on every stored token; splice: the SAE
spliced into the model (CE/KL) on the first tokens of the store."""


def names() -> tuple[str, ...]:
    return tuple(st.name for st in TABLE)


def stage(name: str) -> Stage:
    """The record of the stage ``name``."""
    for st in TABLE:
        if st.name == name:
            return st
    raise ThinksaeError(f"unknown stage {name!r} (stages: {', '.join(names())})")
