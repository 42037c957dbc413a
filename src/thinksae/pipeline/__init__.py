"""`thinksae run`: the whole pipeline (corpus → harvest → train → eval → splice → analyze →
steer → monitor; one record each in `table.TABLE`) into one run directory with a browsable
report, resumable stage by stage. :mod:`.config`, :mod:`.run`; :mod:`.stage` (the record),
:mod:`.steps` (the stage functions), :mod:`.table`, :mod:`.spec` (configs and presets),
:mod:`.context`, :mod:`.markers` (hash and skip), :mod:`.report`."""

from ..lazy import lazy_exports

__getattr__, __dir__, __all__ = lazy_exports(__name__, {
    "RunConfig": "config", "Pipeline": "run", "run_pipeline": "run:run",
    "write_report": "report", "STAGES": "spec", "PipelineSpec": "spec", "preset_names": "spec",
    "resolve": "spec", "TABLE": "table", "Stage": "stage", "Step": "stage",
    "pick_feature": "steps",
})
