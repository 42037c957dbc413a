"""`thinksae run`: the whole pipeline (corpus → harvest → train → eval → splice → analyze →
steer → monitor; one record each in `table.TABLE`) into one run directory with a browsable
report, resumable stage by stage."""

from .report import write_report
from .runner import Pipeline, RunConfig, run
from .spec import STAGES, PipelineSpec, preset_names, resolve
from .table import TABLE, Stage, Step, pick_feature

__all__ = ["STAGES", "TABLE", "Pipeline", "PipelineSpec", "RunConfig", "Stage", "Step", "pick_feature",
           "preset_names", "resolve", "run", "write_report"]
