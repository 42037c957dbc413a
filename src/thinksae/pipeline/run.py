"""`thinksae run`: the stages of `TABLE` (corpus → harvest → train → eval → (splice) →
analyze → (steer) → (monitor)) then the report, in one run directory, resumable stage by stage."""

from __future__ import annotations

import os
import time
from pathlib import Path

import yaml

from .. import atomic
from ..runs import RUN_CONFIG
from ..versions import stack_versions
from . import table
from .config import RunConfig
from .context import Models, Paths, build_config
from .markers import read_marker, run_stage, stage_hash
from .report import write_report
from .spec import VERSIONS_KEY, PipelineSpec, resolve
from .stage import Stage, Step


class Pipeline:
    """One `thinksae run`: the stages of `TABLE` in order, each skipped when it is done for
    the hash it would have now. The stage functions read what they need from here."""

    def __init__(self, spec: PipelineSpec, progress: bool = True):
        self.spec, self.progress = spec, progress
        self.paths = Paths(Path(spec.out), spec.hookpoint)
        self.models = Models(progress)
        self.hashes: dict[str, str] = {}
        self.sae_dir: Path | None = None
        self.rank = int(os.environ.get("RANK", "0"))

    def log(self, msg: str) -> None:
        print(msg, flush=True)

    def config(self, st: Stage, **extra):
        """The config of stage ``st``; ``extra``: the options `thinksae run` manages."""
        return build_config(st, self.spec, self.progress, extra)

    def dir(self, stage: str | Stage) -> Path:
        """The folder of a stage in the run directory."""
        return self.paths.stage_dir(stage)

    def step(self, st: Stage) -> Step | None:
        """Plan stage ``st``: its config and action, and its hash into ``hashes``."""
        step = st.run(self, st)
        if step is not None:
            self.hashes[st.name] = stage_hash(st.name, step.cfg,
                                              [self.hashes[u] for u in st.upstream],
                                              self.paths.root, step.extra, st.version)
        return step

    def _wait_for(self, stage: str) -> None:
        """Rank > 0: wait until rank 0 has finished ``stage`` with the expected config."""
        want, said = self.hashes[stage], False
        while True:
            marker = read_marker(self.dir(stage)) or {}
            if marker.get("status") == "done" and marker.get("hash") == want:
                return
            if not said:
                self.log(f"[run] rank {self.rank}: waiting for rank 0 to finish {stage}")
                said = True
            time.sleep(5)

    def _join(self, st: Stage, step: Step) -> None:
        """Rank > 0 (torchrun): join a stage every rank runs, once its upstream is done."""
        for upstream in st.upstream:
            self._wait_for(upstream)
        marker = read_marker(self.dir(st)) or {}
        if not (marker.get("status") == "done" and marker.get("hash") == self.hashes[st.name]):
            step.action()

    def run(self) -> Path | None:
        """Run every stage the spec turns on; rank 0 writes the report and returns its index."""
        stages = [st for st in table.TABLE if self.spec.stages.get(st.name) is not None]
        if self.rank != 0:  # torchrun: rank 0 runs every stage, the others join train (DDP)
            last = max((i for i, st in enumerate(stages) if st.all_ranks), default=-1)
            for st in stages[:last + 1]:
                step = self.step(st)
                if step is not None and st.all_ranks:
                    self._join(st, step)
            return None
        self.paths.root.mkdir(parents=True, exist_ok=True)
        atomic.write_json(self.paths.root / RUN_CONFIG,
                          {**self.spec.to_dict(), VERSIONS_KEY: stack_versions()})
        for st in stages:
            step = self.step(st)
            if step is not None:
                run_stage(st.name, self.dir(st), step.cfg, self.hashes[st.name], step.action,
                          self.log)
        index = write_report(self.paths.root, self.sae_dir if self.spec.sae else None)
        self.log(f"[run] report: {index}")
        return index


def run(cfg: RunConfig) -> Path | None:
    """Resolve the pipeline spec and run it; returns the report's index.html."""
    spec = resolve(cfg.config, cfg.preset, {"out": cfg.out, "model": cfg.model,
                                            "device": cfg.device})
    if cfg.show_config:
        print(yaml.safe_dump(spec.to_dict(), sort_keys=False, allow_unicode=True), end="")
        return Path(spec.out) / "index.html"
    return Pipeline(spec, cfg.progress).run()
