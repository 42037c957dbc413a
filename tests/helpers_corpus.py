"""Fixtures for the corpus tests: the R1 tokenizer fixture, a plain BPE tokenizer, a tiny Qwen2."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

R1_TOKENIZER_DIR = Path(__file__).parent / "assets" / "r1_tokenizer"

CHATML_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
"""A ChatML template like Qwen2.5's (which has no <think> token)."""

NO_SYSTEM_TEMPLATE = (
    "{% for m in messages %}{% if m['role'] == 'system' %}"
    "{{ raise_exception('System role not supported') }}{% endif %}"
    "<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

_PLAIN_CORPUS = [
    "Think step by step inside <think> </think> tags, then give the final answer.",
    "Wait, but actually the answer is 12. Hmm, maybe I should double-check and verify.",
    "Let me check again: 3 * 4 = 12. Therefore, so the answer is 12. Alternatively, another way.",
    "A pencil costs 3 dollars. How much do 4 pencils cost? The butter was awaiting us.",
]


@pytest.fixture(scope="session")
def r1_tokenizer():
    """The real DeepSeek-R1-Distill tokenizer (offline test asset; original chat template)."""
    from transformers import AutoTokenizer

    if not (R1_TOKENIZER_DIR / "tokenizer.json").exists():
        pytest.skip("tests/assets/r1_tokenizer is missing")
    return AutoTokenizer.from_pretrained(R1_TOKENIZER_DIR)


def build_plain_tokenizer(chat_template: str = CHATML_TEMPLATE):
    """A small byte-level BPE tokenizer where ``<think>`` is plain text (several tokens)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=specials, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(_PLAIN_CORPUS, trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>",
                                   pad_token="<|endoftext|>")
    fast.add_special_tokens({"additional_special_tokens": ["<|im_start|>"]})
    fast.chat_template = chat_template
    return fast


@pytest.fixture(scope="session")
def plain_tokenizer():
    return build_plain_tokenizer()


def tiny_qwen2(vocab_size: int, seed: int = 0):
    """A tiny random Qwen2 (2 layers, hidden 64) whose vocabulary covers ``vocab_size`` ids."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(seed)
    config = Qwen2Config(
        vocab_size=-(-vocab_size // 64) * 64, hidden_size=64, intermediate_size=128,
        num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        max_position_embeddings=1024, initializer_range=0.2,
    )
    return Qwen2ForCausalLM(config).eval()
