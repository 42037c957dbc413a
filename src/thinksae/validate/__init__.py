"""Is a feature a reasoning feature or a token detector? `thinksae validate` tests each candidate:

- :mod:`.context`: the same trigger tokens inside thinking vs in prompt and answer (store only);
- :mod:`.injection`: the trigger tokens put into neutral text (Ma et al. 2026);
- :mod:`.causal`: ablation and a 2x-max clamp, teacher-forced on held-out traces;
- :mod:`.attribution`: gradient × activation for every latent, checked against real ablations;
- :mod:`.verdicts`: the verdict rule and :func:`read_verdicts` (the dashboard and card get them through
  ``thinksae.annotations``).
"""

from .config import ValidateConfig
from .run import ValidateResult, load_inputs, validate
from .verdicts import VERDICTS, read_verdicts, verdict

__all__ = ["VERDICTS", "ValidateConfig", "ValidateResult", "load_inputs", "read_verdicts", "validate",
           "verdict"]
