"""Is a feature a reasoning feature or a token detector? `thinksae validate` tests each candidate:

- :mod:`.context`: the same trigger tokens inside thinking vs in prompt and answer (store only);
- :mod:`.injection`: the trigger tokens put into neutral text;
- :mod:`.causal`: ablation and a 2x-max clamp, teacher-forced on held-out traces;
- :mod:`.attribution`: gradient × activation for every latent, checked against real ablations;
- :mod:`.verdicts`: the verdict rule and :func:`read_verdicts` (the dashboard and card get them
  through ``thinksae.annotations``);
- :mod:`.ma2026`: Ma et al. 2026's token-injection protocol, run by ``--protocol ma2026`` or
  ``both`` (:mod:`.theirs`), its verdicts beside ours (:mod:`.side_by_side`).

`thinksae validate`: :mod:`.config`, :mod:`.run`.
"""

from ..lazy import lazy_exports

__getattr__, __dir__, __all__ = lazy_exports(__name__, {
    "ValidateConfig": "config", "ValidateResult": "run", "load_inputs": "run", "validate": "run:run",
    "VERDICTS": "verdicts", "read_verdicts": "verdicts", "verdict": "verdicts",
    "agreement": "side_by_side", "side_by_side_rows": "side_by_side",
})
