"""Model loading and hookpoint capture (tiny random Qwen2 + the real R1 tokenizer)."""

from __future__ import annotations

import pytest
import torch

from thinksae import ThinksaeError
from thinksae.models import capture, load_model, resolve_dtype, resolve_hookpoint
from thinksae.models.loading import loading_bars, pretrained_kwargs
from thinksae.sae.formats import save_sparsify


def _ids(tokenizer, texts):
    batch = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    return batch["input_ids"], batch["attention_mask"]


@pytest.mark.parametrize("layer", [0, 1, 2])
def test_layer_capture_equals_output_hidden_states(tiny_model, tokenizer, layer):
    ids, mask = _ids(tokenizer, ["Wait, so 3 + 4 = 7.", "<think>\nHmm</think> ok"])
    with torch.no_grad():
        ref = tiny_model(input_ids=ids, attention_mask=mask, output_hidden_states=True)
    got = capture(tiny_model, f"layers.{layer}", ids, mask)[f"layers.{layer}"]
    assert torch.equal(got, ref.hidden_states[layer + 1])


def test_embed_and_submodule_hookpoints(tiny_model, tokenizer):
    ids, mask = _ids(tokenizer, ["Let me check 12 * 3."])
    got = capture(tiny_model, "embed_tokens,layers.1.mlp,layers.1.self_attn", ids, mask)
    assert list(got) == ["embed_tokens", "layers.1.mlp", "layers.1.self_attn"]
    assert torch.equal(got["embed_tokens"], tiny_model.model.embed_tokens(ids))
    for t in got.values():
        assert t.shape == (*ids.shape, 64)


def test_capture_stops_after_deepest_hookpoint(tiny_model, tokenizer):
    ids, mask = _ids(tokenizer, ["Therefore the answer is 5."])
    ran: list[str] = []
    handles = [
        tiny_model.model.layers[i].register_forward_hook(lambda *a, i=i: ran.append(f"layer{i}"))
        for i in range(4)
    ]
    handles.append(tiny_model.lm_head.register_forward_hook(lambda *a: ran.append("lm_head")))
    handles.append(tiny_model.model.norm.register_forward_hook(lambda *a: ran.append("norm")))
    try:
        capture(tiny_model, ["layers.1", "layers.0.mlp"], ids, mask)
    finally:
        for h in handles:
            h.remove()
    assert ran == ["layer0", "layer1"]


def test_hooks_removed_after_capture_and_after_errors(tiny_model, tokenizer):
    ids, mask = _ids(tokenizer, ["Maybe."])

    def hook_counts():  # transformers registers hooks of its own: compare counts
        return [len(m._forward_hooks) for m in tiny_model.modules()]

    before = hook_counts()
    capture(tiny_model, "layers.2", ids, mask)
    assert hook_counts() == before
    with pytest.raises(RuntimeError):  # float ids: the embedding lookup fails mid-forward
        capture(tiny_model, "layers.2", ids.float(), mask)
    assert hook_counts() == before


@pytest.mark.parametrize(
    "name,match",
    [("layers.4", "out of range"), ("layers.99.mlp", "out of range"), ("blocks.3", "unknown"),
     ("layers.1.nope", "no such module"), ("", "no hookpoint")],
)
def test_bad_hookpoints(tiny_model, name, match):
    with pytest.raises(ThinksaeError, match=match):
        if name:
            resolve_hookpoint(tiny_model, name)
        else:
            capture(tiny_model, name, torch.zeros(1, 1, dtype=torch.long))


def test_load_model_from_directory(tiny_model_dir, tiny_model, tokenizer):
    model, tok = load_model(str(tiny_model_dir), device="cpu", dtype="float32")
    assert tok.convert_tokens_to_ids("<think>") == 151648
    assert tok.padding_side == "left" and tok.pad_token_id is not None
    ids, mask = _ids(tokenizer, ["Hmm, 2 + 2."])
    assert torch.equal(capture(model, "layers.1", ids, mask)["layers.1"],
                       capture(tiny_model, "layers.1", ids, mask)["layers.1"])


@pytest.mark.parametrize("progress", [True, False])
def test_load_model_progress_controls_the_loading_bars(tiny_model_dir, capfd, progress):
    load_model(str(tiny_model_dir), device="cpu", dtype="float32", progress=progress)
    assert ("Loading weights" in capfd.readouterr().err) is progress


def test_loading_bars_off_silences_the_gguf_bar_and_restores_it():
    from transformers import modeling_gguf_pytorch_utils as gguf_utils
    from transformers.utils import logging as hf_logging

    before = gguf_utils.tqdm
    with loading_bars(False):
        assert not hf_logging.is_progress_bar_enabled()
        assert gguf_utils.tqdm(range(3)).disable  # the bar GGUF de-quantisation draws
    assert gguf_utils.tqdm is before and hf_logging.is_progress_bar_enabled()
    with loading_bars(True):
        assert gguf_utils.tqdm is before


def test_load_model_bad_specs(tmp_path):
    fake = tmp_path / "model.gguf"
    fake.write_bytes(b"not a gguf at all")
    with pytest.raises(ThinksaeError, match="not a GGUF"):
        load_model(str(fake), device="cpu")
    with pytest.raises(ThinksaeError, match="not found"):
        load_model(str(tmp_path / "missing.gguf"), device="cpu")
    with pytest.raises(ThinksaeError, match="not found"):
        load_model("./no/such/dir", device="cpu")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ThinksaeError, match="without config.json"):
        load_model(str(tmp_path / "empty"), device="cpu")


def test_uncached_hub_id_offline_is_one_clear_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ThinksaeError, match="hub is unreachable"):
        pretrained_kwargs("no-such-org/no-such-model-xyz")


def test_dtype_rules():
    cpu = torch.device("cpu")
    assert resolve_dtype("float32", cpu) is torch.float32
    assert resolve_dtype("auto", cpu) in (torch.float32, torch.bfloat16)
    with pytest.raises(ThinksaeError, match="not supported on CPU"):
        resolve_dtype("float16", cpu)
    with pytest.raises(ThinksaeError, match="unknown dtype"):
        resolve_dtype("int8", cpu)


# --- options the config decides, checked before the weights load ---------------------------------


@pytest.fixture
def no_weights(monkeypatch):
    """Any attempt to load weights fails the test."""
    from transformers import AutoModelForCausalLM

    def refuse(*args, **kwargs):
        raise AssertionError("the weights were loaded")

    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", refuse)


def test_a_model_dir_without_a_tokenizer_is_refused_before_its_weights(tiny_model_dir, tmp_path,
                                                                         tokenizer, no_weights):
    bare = tmp_path / "bare"
    bare.mkdir()
    for f in tiny_model_dir.iterdir():  # the weights and config, not the tokenizer
        if f.name in ("config.json", "generation_config.json") or f.suffix == ".safetensors":
            (bare / f.name).write_bytes(f.read_bytes())
    with pytest.raises(ThinksaeError, match="holds no tokenizer .* pass --tokenizer") as err:
        load_model(str(bare), device="cpu")
    assert "\n" not in str(err.value)


def test_precheck_of_a_model_dir_reads_the_config_only(tiny_model_dir, no_weights):
    from thinksae.models import precheck_model

    with pytest.raises(ThinksaeError) as err:
        precheck_model(str(tiny_model_dir), "layers.1,layers.99")
    assert str(err.value) == ("hookpoint 'layers.99': layer 99 out of range, the model has 4 layers "
                              "(0..3)")
    with pytest.raises(ThinksaeError, match="no such module"):
        precheck_model(str(tiny_model_dir), "layers.1.nope")
    # widths: the residual forms have hidden_size (64), a Linear its out_features (up_proj: 128)
    precheck_model(str(tiny_model_dir), "embed_tokens,layers.3,layers.0.mlp,layers.2.self_attn", d_in=64)
    with pytest.raises(ThinksaeError, match="layers.0.mlp.up_proj output has width 128"):
        precheck_model(str(tiny_model_dir), "layers.0.mlp.up_proj", d_in=64)
    precheck_model(str(tiny_model_dir), "layers.99", loaded=object())  # a loaded model: no-op
    precheck_model(str(tiny_model_dir / "missing.gguf"), "layers.99")  # load_model says why later


def test_harvest_refuses_a_bad_hookpoint_before_loading(tiny_model_dir, corpus_path, tmp_path,
                                                        no_weights):
    from thinksae.store import HarvestConfig, harvest

    cfg = HarvestConfig(model=str(tiny_model_dir), corpus=str(corpus_path), hookpoint="layers.99",
                        out=str(tmp_path / "store"), device="cpu", dtype="float32", progress=False)
    with pytest.raises(ThinksaeError, match="layer 99 out of range, the model has 4 layers"):
        harvest(cfg)
    assert not (tmp_path / "store").exists()


def test_steer_refuses_an_sae_of_another_width_before_loading(tiny_model_dir, tmp_path, capsys,
                                                             no_weights):
    from thinksae.cli import main
    from thinksae.sae import Sae, SaeConfig

    sae_dir = tmp_path / "layers.1"
    save_sparsify(Sae(32, SaeConfig(expansion_factor=2, k=4)), sae_dir)
    rc = main(["steer", "--sae", str(sae_dir), "--model", str(tiny_model_dir), "--device", "cpu",
               "--dtype", "float32", "--feature", "3=x2", "--prompt", "2+2?", "--out",
               str(tmp_path / "steer"), "--progress", "false"])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1
    assert "the SAE has d_in 32, but the model's layers.1 output has width 64" in err
