"""A tiny GGUF model: options checked from its header before loading, and its de-quantised copy."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from thinksae.errors import ThinksaeError
from thinksae.models import dequant_cache as dq
from thinksae.models import load_model, precheck_model
from thinksae.models.gguf_header import ArrayInfo, gguf_config, read_gguf_header

HIDDEN, INTERMEDIATE, LAYERS = 32, 48, 2
_PER_LAYER = {
    "input_layernorm.weight": "attn_norm.weight", "post_attention_layernorm.weight": "ffn_norm.weight",
    "self_attn.q_proj.weight": "attn_q.weight", "self_attn.q_proj.bias": "attn_q.bias",
    "self_attn.k_proj.weight": "attn_k.weight", "self_attn.k_proj.bias": "attn_k.bias",
    "self_attn.v_proj.weight": "attn_v.weight", "self_attn.v_proj.bias": "attn_v.bias",
    "self_attn.o_proj.weight": "attn_output.weight", "mlp.gate_proj.weight": "ffn_gate.weight",
    "mlp.up_proj.weight": "ffn_up.weight", "mlp.down_proj.weight": "ffn_down.weight",
}


def _byte_tokens() -> list[str]:
    """GPT-2's byte-level alphabet: one printable character per byte."""
    keep = [*range(33, 127), *range(161, 173), *range(174, 256)]
    extra = [b for b in range(256) if b not in keep]
    return [chr(b) for b in keep] + [chr(256 + i) for i in range(len(extra))]


def write_tiny_gguf(path, model) -> None:
    """``model`` (a tiny Qwen2ForCausalLM, tied embeddings) as an F32 GGUF with a byte-level
    tokenizer, written by the reference `gguf` writer."""
    import gguf

    tokens = [*_byte_tokens(), "Ġt", "<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    w = gguf.GGUFWriter(str(path), arch="qwen2")
    w.add_block_count(LAYERS)
    w.add_context_length(256)
    w.add_embedding_length(HIDDEN)
    w.add_feed_forward_length(INTERMEDIATE)
    w.add_head_count(4)
    w.add_head_count_kv(2)
    w.add_rope_freq_base(10000.0)
    w.add_layer_norm_rms_eps(1e-6)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("qwen2")
    w.add_token_list(tokens)
    w.add_token_types([1] * 257 + [3, 3, 3])
    w.add_token_merges(["Ġ t"])
    w.add_eos_token_id(len(tokens) - 3)
    w.add_chat_template("{% for m in messages %}<|im_start|>{{ m['content'] }}<|im_end|>{% endfor %}")
    names = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight"}
    for i in range(LAYERS):
        names.update({f"model.layers.{i}.{k}": f"blk.{i}.{v}" for k, v in _PER_LAYER.items()})
    for name, tensor in model.state_dict().items():
        if name != "lm_head.weight":
            w.add_tensor(names[name], tensor.numpy().astype(np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


@pytest.fixture(scope="module")
def gguf_file(tmp_path_factory):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    model = Qwen2ForCausalLM(Qwen2Config(
        vocab_size=260, hidden_size=HIDDEN, intermediate_size=INTERMEDIATE, num_hidden_layers=LAYERS,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
        rope_theta=10000.0, rms_norm_eps=1e-6, tie_word_embeddings=True)).eval()
    path = tmp_path_factory.mktemp("gguf") / "tiny.gguf"
    write_tiny_gguf(path, model)
    return path


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("THINKSAE_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv(dq.ENV_SWITCH, raising=False)
    return tmp_path / "cache"


@pytest.fixture
def no_weights(monkeypatch):
    """Any attempt to load weights (a directory's or a GGUF's) fails the test."""
    from transformers import AutoModelForCausalLM

    def refuse(*args, **kwargs):
        raise AssertionError("the weights were loaded")

    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", refuse)


def _logits(model) -> torch.Tensor:
    with torch.no_grad():
        return model(torch.tensor([[71, 68, 75, 256, 3, 257]])).logits


# --- options checked from the header -------------------------------------------------------------


def test_header_reader_keeps_scalars_and_skips_arrays(gguf_file):
    header = read_gguf_header(gguf_file)
    assert header["general.architecture"] == "qwen2"
    assert header["qwen2.block_count"] == LAYERS and header["qwen2.embedding_length"] == HIDDEN
    assert header["tokenizer.ggml.tokens"] == ArrayInfo(8, 260)  # strings, 256 bytes + 4
    assert header["tokenizer.ggml.eos_token_id"] == 257  # read after the skipped arrays
    config = gguf_config(gguf_file)
    assert (config.model_type, config.num_hidden_layers, config.hidden_size, config.vocab_size,
            config.intermediate_size) == ("qwen2", LAYERS, HIDDEN, 260, INTERMEDIATE)


def test_header_reader_refuses_truncation(gguf_file, tmp_path):
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(gguf_file.read_bytes()[:600])
    with pytest.raises(ThinksaeError, match="truncated"):
        read_gguf_header(cut)


def test_bad_hookpoint_of_a_gguf_fails_before_loading(gguf_file, no_weights):
    with pytest.raises(ThinksaeError) as err:
        precheck_model(str(gguf_file), "layers.99")
    assert str(err.value) == ("hookpoint 'layers.99': layer 99 out of range, the model has 2 layers "
                              "(0..1)")
    with pytest.raises(ThinksaeError, match="no such module"):
        precheck_model(str(gguf_file), "layers.1.nope")
    with pytest.raises(ThinksaeError, match=f"d_in 64, but the model's layers.1 output has width {HIDDEN}"):
        precheck_model(str(gguf_file), "layers.1", d_in=64)
    precheck_model(str(gguf_file), "layers.1,layers.0.mlp", d_in=HIDDEN)


def test_harvest_on_a_gguf_refuses_a_bad_hookpoint_before_loading(gguf_file, corpus_path, tmp_path,
                                                                  no_weights):
    from thinksae.store import HarvestConfig, harvest

    cfg = HarvestConfig(model=str(gguf_file), corpus=str(corpus_path), hookpoint="layers.2",
                        out=str(tmp_path / "store"), device="cpu", dtype="float32", progress=False)
    with pytest.raises(ThinksaeError, match="layer 2 out of range, the model has 2 layers"):
        harvest(cfg)


def test_offline_not_fetched_yet_is_not_prechecked(cache, no_weights):
    precheck_model("offline", "layers.99")  # reading its header would need the download first


# --- the de-quantised copy -----------------------------------------------------------------------


def test_second_load_reads_the_copy_with_identical_logits(gguf_file, cache, monkeypatch):
    model, tok = load_model(str(gguf_file), device="cpu", dtype="float32", progress=False)
    entry = dq.entry_dir(dq.gguf_sha256(gguf_file), "float32")
    assert entry.parent == cache / "dequant" and dq.problem(entry, dq.gguf_sha256(gguf_file),
                                                            "float32") is None
    manifest = json.loads((entry / dq.MANIFEST).read_text())
    assert {"model.safetensors", "config.json", "tokenizer.json"} <= set(manifest["files"])

    from transformers import modeling_gguf_pytorch_utils as gguf_utils

    def no_gguf(*args, **kwargs):
        raise AssertionError("the GGUF was read again")

    monkeypatch.setattr(gguf_utils, "load_gguf_checkpoint", no_gguf)
    again, tok2 = load_model(str(gguf_file), device="cpu", dtype="float32", progress=False)
    assert torch.equal(_logits(again), _logits(model))
    text = "hello t<|im_end|>"
    assert tok2(text).input_ids == tok(text).input_ids
    chat = [{"role": "user", "content": "hi"}]
    assert tok2.apply_chat_template(chat, tokenize=False) == tok.apply_chat_template(chat, tokenize=False)
    assert (tok2.pad_token, tok2.padding_side) == (tok.pad_token, "left")


def test_tokenizer_alone_comes_from_the_copy_once_there_is_one(gguf_file, cache, monkeypatch):
    from transformers import modeling_gguf_pytorch_utils as gguf_utils

    from thinksae.models import load_tokenizer
    from thinksae.models.tokenizer import tokenizer_hash

    from_gguf = load_tokenizer(str(gguf_file))  # no copy yet: read from the GGUF
    assert Path(from_gguf.name_or_path) == gguf_file.parent
    load_model(str(gguf_file), device="cpu", dtype="float32", progress=False)  # writes the copy

    def no_gguf(*args, **kwargs):
        raise AssertionError("the GGUF was read again")

    monkeypatch.setattr(gguf_utils, "load_gguf_checkpoint", no_gguf)
    copied = load_tokenizer(str(gguf_file))
    assert Path(copied.name_or_path) == dq.entry_dir(dq.gguf_sha256(gguf_file), "float32")
    assert tokenizer_hash(copied) == tokenizer_hash(from_gguf)
    chat = [{"role": "user", "content": "hi"}]
    assert copied.apply_chat_template(chat, tokenize=False) == from_gguf.apply_chat_template(
        chat, tokenize=False)
    monkeypatch.setenv(dq.ENV_SWITCH, "0")  # switched off: the GGUF again
    with pytest.raises(AssertionError, match="read again"):
        load_tokenizer(str(gguf_file))


def test_corrupted_copy_falls_back_to_the_gguf_and_is_rewritten(gguf_file, cache, capfd):
    model, _ = load_model(str(gguf_file), device="cpu", dtype="float32", progress=False)
    sha = dq.gguf_sha256(gguf_file)
    entry = dq.entry_dir(sha, "float32")
    weights = entry / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-5] ^= 0xFF  # inside the last sampled block, same size
    weights.write_bytes(bytes(data))
    capfd.readouterr()
    again, _ = load_model(str(gguf_file), device="cpu", dtype="float32", progress=False)
    err = capfd.readouterr().err
    warning = [line for line in err.splitlines() if line.startswith("thinksae: warning:")]
    assert len(warning) == 1 and "model.safetensors does not match" in warning[0]
    assert torch.equal(_logits(again), _logits(model))
    assert dq.problem(entry, sha, "float32") is None  # replaced by a good copy
    assert [p.name for p in entry.parent.iterdir() if p.name.endswith(".tmp")] == []


def test_copy_that_does_not_load_falls_back(gguf_file, cache, capfd):
    model, _ = load_model(str(gguf_file), device="cpu", dtype="float32", progress=False)
    entry = dq.entry_dir(dq.gguf_sha256(gguf_file), "float32")
    config = json.loads((entry / "config.json").read_text())
    config["model_type"] = "no-such-architecture"
    (entry / "config.json").write_text(json.dumps(config))
    manifest = json.loads((entry / dq.MANIFEST).read_text())  # make the manifest vouch for it
    manifest["files"]["config.json"] = dq._describe(entry / "config.json", full=True)
    (entry / dq.MANIFEST).write_text(json.dumps(manifest))
    capfd.readouterr()
    again, _ = load_model(str(gguf_file), device="cpu", dtype="float32", progress=False)
    assert "it does not load" in capfd.readouterr().err
    assert torch.equal(_logits(again), _logits(model))


def test_switched_off_by_the_environment(gguf_file, cache, monkeypatch):
    monkeypatch.setenv(dq.ENV_SWITCH, "0")
    load_model(str(gguf_file), device="cpu", dtype="float32", progress=False)
    assert not (cache / "dequant").exists()


def test_failed_write_leaves_no_copy(gguf_file, cache, monkeypatch, capfd):
    from transformers import PreTrainedTokenizerBase

    def disk_full(self, *args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(PreTrainedTokenizerBase, "save_pretrained", disk_full)
    model, _ = load_model(str(gguf_file), device="cpu", dtype="float32", progress=False)
    assert "No space left on device" in capfd.readouterr().err
    assert list((cache / "dequant").iterdir()) == [cache / "dequant" / ".lock"]


def test_copies_are_per_dtype_and_per_checksum(gguf_file, cache):
    sha = dq.gguf_sha256(gguf_file)
    load_model(str(gguf_file), device="cpu", dtype="float32", progress=False)
    assert dq.problem(dq.entry_dir(sha, "float32"), sha, "float32") is None
    assert dq.problem(dq.entry_dir(sha, "float32"), sha, "bfloat16") is not None
    assert dq.problem(dq.entry_dir(sha, "float32"), "0" * 64, "float32") is not None
    assert dq.problem(dq.entry_dir(sha, "bfloat16"), sha, "bfloat16") == "missing"
