"""Shared fixtures: a tiny random Qwen2 with the real DeepSeek-R1-Distill tokenizer, and a corpus."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

ASSETS = Path(__file__).parent / "assets"
R1_TOKENIZER = ASSETS / "r1_tokenizer"

TINY_CONFIG = dict(
    vocab_size=151936,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=4,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=2048,
    rope_theta=10000.0,
    tie_word_embeddings=True,
)

QUESTIONS = [
    ("A pencil costs 3 dollars. How much do 4 pencils cost?", "12"),
    ("Tom has 7 apples and eats 2. How many are left?", "5"),
    ("A train travels 60 km in 1.5 hours. What is its speed in km per hour?", "40"),
    ("What is 15% of 80?", "12"),
    ("Sara reads 12 pages a day. How many pages does she read in a week?", "84"),
    ("A rectangle is 4 m by 9 m. What is its area in square metres?", "36"),
]


def r1_tokenizer():
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(R1_TOKENIZER)
    tok.padding_side = "left"
    return tok


def tiny_qwen2(seed: int = 0):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(seed)
    model = Qwen2ForCausalLM(Qwen2Config(**TINY_CONFIG))
    return model.eval()


def make_traces(tokenizer) -> list[dict]:
    """Hand-written R1-style traces (prompt templated by the real chat template)."""
    traces = []
    for i, (q, a) in enumerate(QUESTIONS):
        prompt = tokenizer.apply_chat_template(
            [{"role": "user", "content": q}], add_generation_prompt=True, tokenize=False
        )
        thinking = (
            f"Okay, so the question is: {q} Hmm, let me think. Wait, maybe I should "
            f"double-check. Let me check the numbers again. Alternatively, compute directly. "
            f"Therefore the result is {a}."
        )
        completion = f"<think>\n{thinking}\n</think>\n\nSo the answer is {a}.<｜end▁of▁sentence｜>"
        traces.append({"id": f"t{i}", "prompt": prompt, "completion": completion,
                       "question": q, "reference_answer": a, "meta": {}})
    return traces


@pytest.fixture(scope="session")
def tokenizer():
    return r1_tokenizer()


@pytest.fixture(scope="session")
def tiny_model():
    return tiny_qwen2()


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, tiny_model, tokenizer) -> Path:
    """The tiny model and the R1 tokenizer saved as a local model directory."""
    path = tmp_path_factory.mktemp("tiny_model")
    tiny_model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def corpus_path(tmp_path_factory, tokenizer) -> Path:
    """A small trace corpus (JSONL) in R1 format."""
    path = tmp_path_factory.mktemp("corpus") / "traces.jsonl"
    path.write_text("".join(json.dumps(t) + "\n" for t in make_traces(tokenizer)))
    return path


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for a module: tiny-model ops gain nothing from threads, and on a busy
    shared CPU spinning OpenMP threads wait for scheduler slots (100x slower generation)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
