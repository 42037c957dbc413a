"""The vLLM engine (CUDA only): ``vllm.LLM(...).generate(prompts, SamplingParams(...))``."""

from __future__ import annotations

from ...chat import token_stops
from ...generation import GenerationConfig
from ...generation.batches import trim_at_stop
from ...models.loading import pretrained_kwargs
from .base import Row

AUTO_BATCH = 64
"""``batch_size: auto`` on vLLM: prompts handed over at once (vLLM schedules them itself); also
how many traces a crash can lose."""


class VLLMEngine:
    """Prompts go in as HF tokenizer ids (vLLM would otherwise add a second BOS to a templated
    prompt); each prompt gets its own ``SamplingParams`` seed."""

    name = "vllm"

    def __init__(self, llm, tokenizer, sampling: GenerationConfig, model_name: str):
        self.llm, self.tokenizer, self.sampling, self.model_name = llm, tokenizer, sampling, model_name
        self.stop = token_stops(tokenizer)  # vLLM also stops at the model's own EOS

    @classmethod
    def load(cls, model: str, tokenizer, sampling: GenerationConfig, dtype: str = "auto") -> VLLMEngine:
        """Load ``model`` (hub id, local dir or .gguf) into vLLM."""
        from vllm import LLM

        source, kwargs = pretrained_kwargs(model)
        if "gguf_file" in kwargs:
            source = f"{source}/{kwargs['gguf_file']}"
        llm = LLM(model=source, dtype=dtype, seed=sampling.seed)
        return cls(llm, tokenizer, sampling, model)

    def auto_batch_size(self, max_len: int) -> int:
        return AUTO_BATCH

    def generate(self, prompts: list[str], keys: list[str], budget: int, stage: str = "") -> list[Row]:
        """Per prompt the new ids up to the first stop token, and whether it stopped."""
        from vllm import SamplingParams

        s = self.sampling
        params = [SamplingParams(
            max_tokens=budget, temperature=s.temperature if s.do_sample else 0.0,
            top_p=s.top_p if s.do_sample else 1.0, seed=seed if s.do_sample else None,
            stop_token_ids=list(self.stop), skip_special_tokens=False,
        ) for seed in s.row_seeds(keys, stage)]
        inputs = [{"prompt_token_ids": self.tokenizer(p, add_special_tokens=False)["input_ids"]}
                  for p in prompts]
        outputs = self.llm.generate(inputs, params, use_tqdm=False)
        rows = []
        for out in outputs:
            first = out.outputs[0]
            ids, stopped = trim_at_stop(list(first.token_ids), set(self.stop), None)
            rows.append(Row(ids, stopped or first.finish_reason == "stop"))
        return rows
