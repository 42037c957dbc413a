"""SAEBench's metrics, offline, on thinksae's SAEs and models (Karvonen et al. 2025, arXiv
2503.09532): the core metrics, feature absorption on the first-letter task, and k-sparse probing.
Every metric is over non-special, non-sink tokens (:mod:`thinksae.sinks`).

One entry per metric family, each with an options dataclass and a result with ``to_dict()``:

- :func:`core_eval` (:class:`CoreOptions` → :class:`CoreMetrics`): model + SAE + token batches;
  :func:`core_eval_store`: the reconstruction half on an activation store;
- :func:`absorption_eval` (:class:`AbsorptionOptions` → :class:`AbsorptionResult`);
- :func:`store_probing` (:class:`ProbingOptions` → :class:`StoreProbing`) on a store's region
  and behaviour labels; :func:`probe_classes` on any labelled set of pooled units.
"""

from .absorption import AbsorptionOptions, AbsorptionResult, absorption_eval
from .core import CoreMetrics
from .core_run import CoreOptions, core_eval, core_eval_store
from .sparse_probing import ProbingOptions, ProbingResult, probe_classes
from .store_labels import StoreProbing, sentence_end_ids, store_probing

__all__ = [
    "AbsorptionOptions", "AbsorptionResult", "CoreMetrics", "CoreOptions", "ProbingOptions",
    "ProbingResult", "StoreProbing", "absorption_eval", "core_eval", "core_eval_store",
    "probe_classes", "sentence_end_ids", "store_probing",
]
