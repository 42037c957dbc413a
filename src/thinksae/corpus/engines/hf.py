"""The Hugging Face engine: ``model.generate`` over left-padded batches (the default)."""

from __future__ import annotations

from pathlib import Path

import torch

from ...chat import stop_ids
from ...generation import GenerationConfig
from ...generation.batches import left_pad, trim_at_stop
from .base import Row

AUTO_BATCH_CAP = 64
"""Largest ``batch_size: auto`` on the HF engine: decode is bound by reading the weights, so a
batch costs little more per step than one sequence until the matmuls catch up (about batch 32–64
for a 1.5B model on 2 AVX2 cores, see bench/generate.py)."""

MEMORY_SHARE = 0.5
"""Share of the free memory (RAM on CPU, GPU memory on CUDA) that ``auto`` lets the batch use."""


def sequence_bytes(config, max_len: int, dtype_bytes: int) -> int:
    """Memory one sequence of ``max_len`` tokens needs while generating, from the model config:
    its KV cache, ``2 · layers · kv_heads · head_dim · max_len · dtype_bytes``, plus the prefill's
    largest activation, ``max_len · intermediate_size · dtype_bytes · 2`` (gate and up), plus
    two float32 rows of logits, ``2 · vocab · 4``."""
    heads = config.num_attention_heads
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    kv = 2 * config.num_hidden_layers * kv_heads * head_dim * max_len * dtype_bytes
    ffn = getattr(config, "intermediate_size", None) or 4 * config.hidden_size
    return kv + max_len * ffn * dtype_bytes * 2 + 2 * config.vocab_size * 4


def free_memory(device: torch.device) -> int:
    """Bytes free for new tensors: ``MemAvailable`` on CPU, ``cudaMemGetInfo`` free on CUDA."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 8 << 30  # unknown: assume 8 GiB


def batch_for_memory(per_sequence: int, free: int, cap: int = AUTO_BATCH_CAP) -> int:
    """``min(cap, MEMORY_SHARE · free // per_sequence)``, at least 1."""
    return max(1, min(cap, int(MEMORY_SHARE * free) // max(1, per_sequence)))


class HFEngine:
    """``model.generate`` on left-padded batches, seeded once per batch."""

    name = "hf"

    def __init__(self, model, tokenizer, sampling: GenerationConfig):
        self.model, self.tokenizer, self.sampling = model, tokenizer, sampling
        self.stop = stop_ids(model, tokenizer)
        self.pad_id = next((i for i in (tokenizer.pad_token_id, tokenizer.eos_token_id)
                            if i is not None), self.stop[0])
        config = getattr(model, "config", None)
        self.model_name = (getattr(config, "_name_or_path", "") or getattr(config, "model_type", "")
                           or "unknown")

    def auto_batch_size(self, max_len: int) -> int:
        """As many sequences as fit :data:`MEMORY_SHARE` of the free memory, at most
        :data:`AUTO_BATCH_CAP` (see :func:`sequence_bytes`)."""
        param = next(self.model.parameters())
        per_sequence = sequence_bytes(self.model.config, max_len, param.element_size())
        return batch_for_memory(per_sequence, free_memory(param.device))

    @torch.inference_mode()
    def generate(self, prompts: list[str], keys: list[str], budget: int, stage: str = "") -> list[Row]:
        """Per prompt the new ids up to the first stop token, and whether it stopped."""
        input_ids, attention_mask = left_pad(self.tokenizer, prompts, self.pad_id)
        torch.manual_seed(self.sampling.batch_seed(keys, stage))
        s = self.sampling
        device = next(self.model.parameters()).device
        out = self.model.generate(
            input_ids=input_ids.to(device),
            attention_mask=attention_mask.to(device),
            max_new_tokens=budget,
            do_sample=s.do_sample,
            eos_token_id=self.stop,
            pad_token_id=self.pad_id,
            **(dict(temperature=s.temperature, top_p=s.top_p) if s.do_sample else {}),
        )
        width = input_ids.shape[1]
        return [Row(*trim_at_stop(row[width:].tolist(), set(self.stop), self.pad_id)) for row in out]
