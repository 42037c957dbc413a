"""An SAE bound to its hookpoint: one hookpoint grammar, where the hookpoint comes from, and the
checks against a store, a model and a tokenizer that every stage now shares."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from thinksae.errors import ThinksaeError
from thinksae.models import Hookpoint, is_hookpoint, parse_hookpoint, resolve_hookpoint
from thinksae.sae import Sae, SaeConfig, save_saelens, write_report_card
from thinksae.sae.bound import SaeAtHookpoint
from thinksae.sae.formats import save_sparsify
from thinksae.store import HarvestConfig, harvest, tokenizer_hash


def _sae(path: Path, d_in: int = 64) -> Path:
    torch.manual_seed(0)
    save_sparsify(Sae(d_in, SaeConfig(num_latents=32, k=4)), path)
    return path


def _store(hookpoint="layers.1", d_in=64, tok_hash="a" * 16):
    return SimpleNamespace(hookpoint=hookpoint, d_in=d_in, path=Path("/data/store"),
                           manifest={"tokenizer_hash": tok_hash})


@pytest.fixture(scope="module")
def store_dir(tmp_path_factory, corpus_path, tiny_model, tokenizer) -> Path:
    cfg = HarvestConfig(model="tiny", corpus=str(corpus_path), hookpoint="layers.1",
                        out=str(tmp_path_factory.mktemp("bstore")), device="cpu", dtype="float32",
                        progress=False)
    (path,) = harvest(cfg, tiny_model, tokenizer)
    return path


def test_one_hookpoint_grammar(tiny_model):
    for name in ("embed_tokens", "norm", "layers.3", "layers.3.mlp", "layers.3.mlp.down_proj"):
        assert is_hookpoint(name), name
    for name in ("layers.x", "mlp", "layers.1.", "layers..1", "Layers.1", "", None, 3):
        assert not is_hookpoint(name), name
    assert parse_hookpoint("layers.10.mlp") == Hookpoint("layers.10.mlp", 10, "mlp")
    assert parse_hookpoint("norm") == Hookpoint("norm", None, "")
    assert parse_hookpoint("layers.2") == Hookpoint("layers.2", 2, "")
    assert resolve_hookpoint(tiny_model, "norm") is tiny_model.model.norm
    with pytest.raises(ThinksaeError, match="embed_tokens or norm"):
        resolve_hookpoint(tiny_model, "layers.1.")


def test_where_the_hookpoint_comes_from(tmp_path):
    assert SaeAtHookpoint.find(_sae(tmp_path / "run" / "layers.2")).hookpoint == "layers.2"
    assert SaeAtHookpoint.find(_sae(tmp_path / "norm")).hookpoint == "norm"
    carded = _sae(tmp_path / "mysae")
    write_report_card(carded, {"hookpoint": "layers.1"})
    assert SaeAtHookpoint.find(carded).hookpoint == "layers.1"
    sae = Sae(64, SaeConfig(num_latents=32, k=4))
    save_saelens(sae, tmp_path / "lens", hook_name="layers.1.mlp")
    assert SaeAtHookpoint.find(tmp_path / "lens").hookpoint == "layers.1.mlp"
    nameless = _sae(tmp_path / "nameless")
    assert SaeAtHookpoint.find(nameless, store=_store("layers.3")).hookpoint == "layers.3"
    bound = SaeAtHookpoint.find(tmp_path / "run", "layers.2")  # a run directory + --hookpoint
    assert bound.dir == tmp_path / "run" / "layers.2" and bound.card == {}


@pytest.mark.parametrize("args, message", [
    (dict(hookpoint="layers.2"), "reads hookpoint layers.1, not layers.2"),
    (dict(store=_store("layers.3")), "SAE/model mismatch: store /data/store holds hookpoint "
                                     "layers.3, but the SAE in"),
])
def test_hookpoint_conflicts_are_one_line(tmp_path, args, message):
    with pytest.raises(ThinksaeError, match=message):
        SaeAtHookpoint.find(_sae(tmp_path / "layers.1"), **args)


def test_cannot_tell_the_hookpoint(tmp_path):
    with pytest.raises(ThinksaeError, match="cannot tell which hookpoint the SAE in .* reads"):
        SaeAtHookpoint.find(_sae(tmp_path / "mysae"))


def test_checks_against_a_store_and_tokenizers(tmp_path, tokenizer):
    bound = SaeAtHookpoint.find(_sae(tmp_path / "layers.1", d_in=32))
    with pytest.raises(RuntimeError, match="not loaded"):
        bound.check_store(_store())
    bound.load()
    with pytest.raises(ThinksaeError, match="has d_in 32, but store /data/store holds activations "
                                            "of width 64"):
        bound.check_store(_store())
    own = tokenizer_hash(tokenizer)
    assert bound.check_tokenizers(tokenizer) == own
    assert bound.check_tokenizers(tokenizer, _store(tok_hash=own)) == own
    with pytest.raises(ThinksaeError, match="another tokenizer \\(hash ffff"):
        bound.check_tokenizers(tokenizer, _store(tok_hash="f" * 16))
    bound.card = {"data": {"tokenizer_hash": "0" * 16}}
    with pytest.raises(ThinksaeError, match="trained on tokens of another tokenizer"):
        bound.check_tokenizers(tokenizer)


def test_check_model_measures_the_width(tmp_path, tiny_model):
    wide = SaeAtHookpoint.find(_sae(tmp_path / "a" / "layers.1"))
    wide.load()
    wide.check_model(tiny_model)
    narrow = SaeAtHookpoint.find(_sae(tmp_path / "b" / "layers.1", d_in=32))
    narrow.load()
    with pytest.raises(ThinksaeError, match="has d_in 32, but the model's layers.1 output has width 64"):
        narrow.check_model(tiny_model)


def test_monitor_refuses_an_sae_of_another_width_than_the_given_model(tmp_path, tiny_model,
                                                                      tokenizer):
    """Before, a model passed in was not checked: the first token failed inside the engine."""
    from thinksae.monitor.run import MonitorConfig, build_monitor

    cfg = MonitorConfig(sae=str(_sae(tmp_path / "layers.1", d_in=32)), prompt="2+2?",
                        features="0", alert_log="")
    with pytest.raises(ThinksaeError, match="output has width 64"):
        build_monitor(cfg, tiny_model, tokenizer)


def test_analyze_knows_an_sae_at_norm(tmp_path, store_dir, tiny_model, tokenizer):
    """`analyze` had its own grammar without `norm`: an SAE at norm was checked against no
    hookpoint and silently analysed a store of layers.1."""
    from thinksae.features import AnalyzeConfig, analyze

    cfg = AnalyzeConfig(sae=str(_sae(tmp_path / "norm")), store=str(store_dir),
                        out=str(tmp_path / "out"), logit_lens=False, dashboard=False,
                        progress=False, device="cpu")
    with pytest.raises(ThinksaeError, match="holds hookpoint layers.1, but the SAE in .*norm "
                                            "reads norm"):
        analyze(cfg, tiny_model, tokenizer)
    assert not (tmp_path / "out").exists()


def test_eval_result_is_the_json_it_writes(tmp_path, store_dir):
    from thinksae.evaluate import EvalConfig, EvalResult, evaluate

    sae_dir = _sae(tmp_path / "layers.1")
    result = evaluate(EvalConfig(sae=str(sae_dir), store=str(store_dir), progress=False))
    assert isinstance(result, EvalResult) and result.data.mode == "store"
    written = json.loads((sae_dir / "eval.json").read_text())
    assert written == result.to_dict()
    assert list(written) == ["sae", "format", "hookpoint", "d_in", "num_latents", "k", "data",
                             "headline", "metrics", "sinks", "saebench", "latent_frequency",
                             "config"]
    assert list(written["data"]) == ["mode", "store", "corpus", "model", "tokens", "split",
                                     "traces", "tokenizer_hash", "store_hash", "corpus_hash"]
    assert json.loads((sae_dir / "thinksae.json").read_text())["eval"] == written
