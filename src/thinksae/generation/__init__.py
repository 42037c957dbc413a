"""How the model generates, written once.

- :mod:`.config`: the options `thinksae corpus`, `steer` and `monitor` share
  (:class:`GenerationConfig`) and the seeds sampling draws from (light: no torch);
- :mod:`.batches`: prompts left-padded into batches of rows;
- :mod:`.decode`: the one decoding API — generate rows with per-row interventions, recorded
  features and a per-token callback, then the steered positions and the KL there
  (:func:`~.decode.generate_rows`); `thinksae steer`, `thinksae monitor` and the workbench's steer
  and monitor pages all decode through it;
- :mod:`.prefill`, :mod:`.sampling`, :mod:`.kl`: its parts (shared prompt prefill, per-row
  sampling streams, teacher-forced KL).
"""

from .config import GenerationConfig, batch_seed, generation_field

__all__ = ["GenerationConfig", "batch_seed", "generation_field"]
