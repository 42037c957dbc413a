"""The committed DeepSeek-R1-Distill tokenizer fixture and the GGUF-header parser that built it."""

from __future__ import annotations

import importlib.util
import os
import struct
from pathlib import Path

import pytest

from thinksae.errors import ThinksaeError

ROOT = Path(__file__).resolve().parents[1]
FIXTURE = ROOT / "tests" / "assets" / "r1_tokenizer"
SCRIPT = ROOT / "scripts" / "build_r1_tokenizer.py"

BOS, EOS = "<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>"
USER, ASSISTANT = "<｜User｜>", "<｜Assistant｜>"


def _load_script():
    spec = importlib.util.spec_from_file_location("build_r1_tokenizer", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def builder():
    return _load_script()


@pytest.fixture(scope="module")
def tok():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(FIXTURE)


# --- the committed fixture -------------------------------------------------------------------


def test_special_token_ids(tok):
    expected = {
        151643: EOS,
        151644: USER,
        151645: ASSISTANT,
        151646: BOS,
        151648: "<think>",
        151649: "</think>",
        151654: "<|vision_pad|>",
    }
    for idx, text in expected.items():
        assert tok.convert_ids_to_tokens(idx) == text
        assert tok.convert_tokens_to_ids(text) == idx
    assert (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id) == (151646, 151643, 151654)
    pad = "<|vision_pad|>"
    assert tok.special_tokens_map == {"bos_token": BOS, "eos_token": EOS, "pad_token": pad}
    assert tok.unk_token is None
    assert len(tok) == 152064  # every GGUF token, the unused [PAD…] ones included


def test_think_tags_are_single_ordinary_tokens(tok):
    assert tok.encode("<think>", add_special_tokens=False) == [151648]
    assert tok.encode("</think>", add_special_tokens=False) == [151649]
    ids = tok.encode("<think>\nOkay.</think>\n\nDone", add_special_tokens=False)
    assert ids[0] == 151648 and ids.count(151649) == 1
    # Not special: skip_special_tokens keeps them (and drops BOS).
    text = tok.decode(tok.encode("<think>x</think>y"), skip_special_tokens=True)
    assert text == "<think>x</think>y"


@pytest.mark.parametrize(
    "text",
    [
        "Hello world",
        "What is 2+3? The answer is 5, and 12345 * 0.75 = 9258.75.",
        "数学题：小明有3个苹果。 日本語 한국어 ünïcödé café Ωπσ 🙂🚀",
        "def f(x):\n    return x ** 2  # square\n\n\nclass A:\n\tpass\r\n",
        "  leading and trailing spaces  \n\n\n",
        "Hello , world . don't I'm they'll",
        f"{USER}hi{ASSISTANT}<think>\nhm</think>\n\nok{EOS}",
    ],
)
def test_decode_encode_round_trip(tok, text):
    ids = tok.encode(text, add_special_tokens=False)
    assert tok.decode(ids) == text
    assert tok.decode(tok.encode(text), skip_special_tokens=False) == BOS + text


def test_bos_is_prepended_once(tok):
    assert tok.encode("Hi") == [151646, tok.convert_tokens_to_ids("Hi")]
    assert tok.encode("Hi", add_special_tokens=False) == [tok.convert_tokens_to_ids("Hi")]


def test_ordinary_text_gets_qwen2_ids(tok):
    # Qwen2/Qwen2.5 BPE ids (same vocabulary below 151643).
    assert tok.encode("You are a helpful assistant.", add_special_tokens=False) == [
        2610, 525, 264, 10950, 17847, 13
    ]
    assert tok.encode("Hello world", add_special_tokens=False) == [9707, 1879]
    assert tok.encode("2024\n\n", add_special_tokens=False) == [17, 15, 17, 19, 271]  # digit split
    assert tok.convert_ids_to_tokens([0, 198, 220, 271, 1879]) == ["!", "Ċ", "Ġ", "ĊĊ", "Ġworld"]
    # NFC, as Qwen2: a decomposed é encodes like the composed one.
    assert tok.encode("cafe\u0301", add_special_tokens=False) == tok.encode(
        "caf\u00e9", add_special_tokens=False
    )


QWEN2_SPLIT_CASES = {
    # Strings where Qwen2's pre-tokenizer regex and GPT-2's differ ("(hello" stays together,
    # case-insensitive contractions, "!!\n\n" one piece). Ids cross-checked against
    # transformers' own GGUF tokenizer converter run on the same GGUF header.
    "(hello) x=12 I'M HE'LL": [3203, 4791, 8, 856, 28, 16, 17, 358, 27603, 11685, 6, 4086],
    'print("hi")\n\n\n    x': [1350, 445, 6023, 25639, 262, 856],
    "Hello!!\n\n": [9707, 24796],
}


@pytest.mark.parametrize("text", list(QWEN2_SPLIT_CASES))
def test_qwen2_pre_tokenizer_regex(tok, text):
    from tokenizers import Tokenizer

    raw = Tokenizer.from_file(str(FIXTURE / "tokenizer.json"))  # as transformers 4.x loads it
    assert tok.encode(text, add_special_tokens=False) == QWEN2_SPLIT_CASES[text]
    assert raw.encode(text, add_special_tokens=False).ids == QWEN2_SPLIT_CASES[text]


def test_transformers_pipeline_matches_tokenizer_json(tok):
    """transformers 5 rebuilds the pipeline from the class; it must equal the committed json."""
    from tokenizers import Tokenizer

    raw = Tokenizer.from_file(str(FIXTURE / "tokenizer.json"))
    for text in ["Hello", "  x\r\n\ty 3.14 中文 🙂", "cafe\u0301", f"{USER}a{ASSISTANT}<think>b"]:
        assert tok.encode(text) == raw.encode(text).ids
    assert raw.get_vocab_size() == len(tok)


def test_chat_template_is_the_gguf_one(tok):
    prompt = tok.apply_chat_template(
        [{"role": "user", "content": "What is 2+3?"}], add_generation_prompt=True, tokenize=False
    )
    assert prompt == f"{BOS}{USER}What is 2+3?{ASSISTANT}"  # no trailing "<think>\n"
    ids = tok.apply_chat_template(
        [{"role": "user", "content": "What is 2+3?"}], add_generation_prompt=True, tokenize=True
    )
    ids = ids["input_ids"] if isinstance(ids, dict) or hasattr(ids, "keys") else ids
    assert ids[0] == 151646 and ids.count(151646) == 1
    assert ids[1] == 151644 and ids[-1] == 151645


def test_chat_template_drops_earlier_thinking(tok):
    messages = [
        {"role": "user", "content": "Q1"},
        {"role": "assistant", "content": "<think>\nsecret reasoning\n</think>\n\nA1"},
        {"role": "user", "content": "Q2"},
    ]
    text = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert "secret reasoning" not in text
    assert text == f"{BOS}{USER}Q1{ASSISTANT}\n\nA1{EOS}{USER}Q2{ASSISTANT}"


# --- the GGUF-header parser ------------------------------------------------------------------


def _tiny_gguf(path: Path) -> Path:
    """A tokenizer-only GGUF written by the reference `gguf` writer."""
    import gguf

    w = gguf.GGUFWriter(str(path), arch="qwen2")
    w.add_tokenizer_model("gpt2")
    w.add_token_list(["a", "b", "ab", "<s>", "</s>", "<think>"])
    w.add_token_types([1, 1, 1, 3, 3, 4])
    w.add_token_merges(["a b"])
    w.add_bos_token_id(3)
    w.add_eos_token_id(4)
    w.add_pad_token_id(4)
    w.add_add_bos_token(True)
    w.add_chat_template("{{ bos_token }}{% for m in messages %}{{ m['content'] }}{% endfor %}")
    w.add_float32("test.float", 1.5)
    w.add_array("test.ints", [1, -2, 3])
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.close()
    return path


def test_parser_reads_gguf_writer_output(builder, tmp_path):
    meta = builder.read_gguf_metadata(_tiny_gguf(tmp_path / "tiny.gguf"))
    assert meta["GGUF.version"] == 3 and meta["GGUF.tensor_count"] == 0
    assert meta["general.architecture"] == "qwen2"
    assert meta["tokenizer.ggml.tokens"] == ["a", "b", "ab", "<s>", "</s>", "<think>"]
    assert meta["tokenizer.ggml.token_type"] == [1, 1, 1, 3, 3, 4]
    assert meta["tokenizer.ggml.merges"] == ["a b"]
    assert meta["tokenizer.ggml.bos_token_id"] == 3 and meta["tokenizer.ggml.add_bos_token"] is True
    assert meta["test.float"] == 1.5 and meta["test.ints"] == [1, -2, 3]


def test_tiny_gguf_builds_a_loadable_tokenizer(builder, tmp_path):
    from transformers import AutoTokenizer

    meta = builder.read_gguf_metadata(_tiny_gguf(tmp_path / "tiny.gguf"))
    out = tmp_path / "tok"
    builder.write_tokenizer_dir(meta, out)
    names = {p.name for p in out.iterdir()}
    assert names == {"tokenizer.json", "tokenizer_config.json", "README.md"}
    t = AutoTokenizer.from_pretrained(out)
    assert t.encode("ab<think>ba") == [3, 2, 5, 1, 0]  # BOS, merged "ab", added token, no merge
    assert (t.bos_token, t.eos_token, t.pad_token) == ("<s>", "</s>", "</s>")
    assert t.apply_chat_template([{"role": "user", "content": "ab"}], tokenize=False) == "<s>ab"


def test_parser_rejects_a_non_gguf_file(builder, tmp_path):
    path = tmp_path / "model.safetensors"
    path.write_bytes(b'\x10\x00\x00\x00\x00\x00\x00\x00{"a": 1}' + bytes(32))
    with pytest.raises(ThinksaeError, match="not a GGUF file"):
        builder.read_gguf_metadata(path)


def test_parser_rejects_bad_version_and_truncation(builder, tmp_path):
    old = tmp_path / "v1.gguf"
    old.write_bytes(b"GGUF" + struct.pack("<IQQ", 1, 0, 0))
    with pytest.raises(ThinksaeError, match="unsupported GGUF version 1"):
        builder.read_gguf_metadata(old)
    full = _tiny_gguf(tmp_path / "tiny.gguf").read_bytes()
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(full[: len(full) // 2])
    with pytest.raises(ThinksaeError, match="truncated"):
        builder.read_gguf_metadata(cut)


@pytest.mark.skipif(
    not os.environ.get("THINKSAE_R1_GGUF_PART"),
    reason="set THINKSAE_R1_GGUF_PART to the GGUF part file to check the fixture rebuilds",
)
def test_fixture_rebuilds_identically(builder, tmp_path):
    part = Path(os.environ["THINKSAE_R1_GGUF_PART"])
    builder.main([str(part), "--out", str(tmp_path)])
    for name in ("tokenizer.json", "tokenizer_config.json", "README.md"):
        assert (tmp_path / name).read_bytes() == (FIXTURE / name).read_bytes(), name
