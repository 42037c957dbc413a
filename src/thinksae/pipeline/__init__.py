"""`thinksae run`: the whole pipeline (corpus → harvest → train → eval → splice → analyze →
steer → monitor) into one run directory with a browsable report, resumable stage by stage."""

from .report import write_report
from .runner import Pipeline, RunConfig, pick_feature, run
from .spec import STAGES, PipelineSpec, preset_names, resolve

__all__ = ["STAGES", "Pipeline", "PipelineSpec", "RunConfig", "pick_feature", "preset_names",
           "resolve", "run", "write_report"]
