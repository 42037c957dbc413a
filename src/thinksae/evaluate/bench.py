"""SAEBench's metrics inside `thinksae eval`: eval.json's ``saebench`` section.

- **core** (:mod:`.saebench.core`): over the kept tokens, from the same SAE pass as thinksae's own
  metrics (store mode: the reconstruction half) and, with a model, from the same spliced passes:
  the SAE's x̂ and the zero ablation replace exactly the tokens the spliced losses replace (the
  non-sink tokens of the splice regions), so no extra model pass runs; the KL for the zero
  ablation is scored in those passes too. CE and KL are over the kept positions that have a next
  token (SAEBench also scores the KL at each document's last token).
- **probing** (:func:`.saebench.store_probing`): the store's region and behaviour labels on the
  traces of the eval split, with the store's sink rule.
- **absorption** (:func:`.saebench.absorption_eval`): the first-letter task with the model.

Each family's numbers go with their one-line definitions (:mod:`.saebench.definitions`).
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import torch
from torch import Tensor

from ..errors import ThinksaeError
from ..sinks import SinkRule
from .bench_options import absorption_options, probing_options
from .config import EvalConfig
from .saebench.absorption import absorption_eval
from .saebench.core import CoreMetrics, CoreStats, LossSums, core_metrics
from .saebench.definitions import definitions
from .saebench.store_labels import sentence_end_ids, store_probing

SPLICED_TO_CORE = {"ce_clean": "ce_clean", "ce_spliced": "ce_sae", "ce_zero": "ce_zero",
                   "kl_spliced": "kl_sae", "kl_zero": "kl_zero"}
"""The spliced passes' per-position losses under the core metrics' names."""


class CoreSums:
    """Running sums of the core metrics over the kept tokens of an evaluation."""

    def __init__(self, d_in: int, num_latents: int, with_losses: bool):
        self.stats = CoreStats(d_in, num_latents)
        self.losses = LossSums() if with_losses else None

    def add_tokens(self, x: Tensor, x_hat: Tensor, latent_acts: Tensor, latent_indices: Tensor
                   ) -> None:
        """Add kept tokens: activations, reconstructions ``[n, d_in]`` and their latents."""
        self.stats.update(x, x_hat, latent_acts, latent_indices)

    def add_positions(self, losses: dict[str, Tensor]) -> None:
        """Add kept positions: the spliced passes' per-position losses (``ce_clean``,
        ``ce_spliced``, ``ce_zero``, ``kl_spliced``, ``kl_zero``), each ``[m]``."""
        rows = {core: losses[name] for name, core in SPLICED_TO_CORE.items()}
        m = len(rows["ce_clean"])
        if m:
            self.losses.update(rows, torch.ones(m, dtype=torch.bool, device=rows["ce_clean"].device))

    def result(self, sinks: dict[str, Any]) -> CoreMetrics:
        return core_metrics(self.stats, self.losses, sinks)


def run_probing(cfg: EvalConfig, store, sae, rule: SinkRule, docs, tokenizer,
                families: tuple[str, ...], skipped: dict[str, str]) -> dict[str, Any]:
    """k-sparse probing of each family in ``families`` on the traces ``docs``; a family the
    traces cannot support is skipped with the reason (an error with ``--probing true``)."""
    opts = probing_options(cfg.saebench)
    ends = sentence_end_ids(tokenizer) if tokenizer is not None else None
    out: dict[str, Any] = {"regions": None, "behaviours": None, "skipped": dict(skipped),
                           "behaviour_units": "think sentences" if ends is not None else
                           "think windows (no tokenizer for sentence ends: --model or --tokenizer)"}
    for family in families:
        try:
            result = store_probing(store, sae, opts, rule, ends, docs, families=(family,),
                                   chunk_tokens=cfg.chunk_tokens)
        except ThinksaeError as e:
            if cfg.saebench.probing:
                raise
            out["skipped"][family] = str(e).removeprefix(f"probing {family}: ")
            continue
        out[family] = getattr(result, family).to_dict()
        out.update(tokens=result.tokens, sink_tokens=result.sink_tokens, traces=result.traces)
    out["options"] = dataclasses.asdict(opts)
    return out


def run_absorption(cfg: EvalConfig, model, tokenizer, sae, hookpoint: str, rule: SinkRule
                   ) -> dict[str, Any]:
    """Feature absorption on the first-letter task (:func:`.saebench.absorption_eval`)."""
    opts = absorption_options(cfg.saebench)
    return absorption_eval(model, tokenizer, sae, hookpoint, opts, rule).to_dict()


def saebench_section(core: CoreMetrics | None, probing: dict | None, absorption: dict | None
                     ) -> dict[str, Any]:
    """eval.json's ``saebench``: each family's numbers (None when off) and the definitions, as
    JSON reads them back (tuples as lists), so the result is the JSON it writes."""
    section = {"core": None if core is None else core.to_dict(), "probing": probing,
               "absorption": absorption, "definitions": definitions()}
    return json.loads(json.dumps(section))
