"""bench/quality.py --saebench: the probing and absorption columns are the product's functions
called on the same SAE and the held-out traces; Matryoshka trains in the bench with its default
nesting; the matched-L0 note and the default widths by hand."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

from thinksae import atomic
from thinksae.errors import ThinksaeError
from thinksae.evaluate.saebench import (
    AbsorptionOptions,
    ProbingOptions,
    absorption_eval,
    sentence_end_ids,
    store_probing,
)
from thinksae.sae import MatryoshkaBatchTopKSae, load_sae
from thinksae.sinks import SinkRule
from thinksae.store import ActivationStore
from thinksae.store.shard_parts import FORMAT, MANIFEST
from thinksae.store.shards import write_shard

BENCH = Path(__file__).resolve().parent.parent / "bench"
sys.path.insert(0, str(BENCH))
quality = pytest.importorskip("quality")
from quality_saebench import default_matryoshka_widths, l0_notes, reused_residuals  # noqa: E402

D = 64  # the tiny model's hidden size: absorption reads its residual at layers.1
PROMPT, THINK, ANSWER, SPECIAL = 0, 1, 2, 3
DOT, WAIT = 13, 13824  # "." and " Wait" in the R1 tokenizer: "." ends a think sentence
DOCS, HOLDOUT = 16, 0.5
BENCH_ARGS = ["--variants", "own", "--k", "4", "--seeds", "0", "--latents", "32",
              "--batch_size", "16", "--epochs", "2", "--holdout", str(HOLDOUT), "--threads", "1",
              "--saebench", "--probe_window_tokens", "4"]


def _trace(d: int, g: torch.Generator) -> tuple[torch.Tensor, list[int], list[int], list[int]]:
    """One trace: a special token (norm 1000), 8 prompt tokens, 16 think tokens in 5 sentences
    of 2, 2, 4, 4, 4 tokens (" Wait … Wait." : 4 units of 4 tokens as windows, 5 as sentences;
    tagged backtracking, verification, none, backtracking, none on their first token) and 6
    answer tokens; each region's rows shifted along its own axis."""
    regions = [SPECIAL] + [PROMPT] * 8 + [THINK] * 16 + [ANSWER] * 6
    x = torch.randn(len(regions), D, generator=g)
    for i, r in enumerate(regions):
        x[i, r] += 2.0
    x[0] *= 1000 / x[0].norm()
    ids = [151644] + [1000 + 40 * d + i for i in range(8)]
    behaviours = [0] * 9
    for length, tag in ((2, 1), (2, 3), (4, 0), (4, 1), (4, 0)):
        ids += [WAIT] * (length - 1) + [DOT]
        behaviours += [tag] + [0] * (length - 1)
    ids += [3000 + 40 * d + i for i in range(6)]
    return x, regions, ids, behaviours + [0] * 6


def _store(path: Path) -> Path:
    g = torch.Generator().manual_seed(0)
    rows, regions, ids, behaviours, doc_index, positions = [], [], [], [], [], []
    for d in range(DOCS):
        x, reg, tok, beh = _trace(d, g)
        rows.append(x)
        regions += reg
        ids += tok
        behaviours += beh
        doc_index += [d] * len(reg)
        positions += list(range(len(reg)))
    n = len(regions)
    write_shard(path / "shard-00000.safetensors", {
        "activations": torch.cat(rows), "token_ids": torch.tensor(ids, dtype=torch.int32),
        "regions": torch.tensor(regions, dtype=torch.uint8),
        "behaviours": torch.tensor(behaviours, dtype=torch.uint8),
        "doc_index": torch.tensor(doc_index, dtype=torch.int32),
        "positions": torch.tensor(positions, dtype=torch.int32)})
    atomic.write_json(path / MANIFEST, {
        "format": FORMAT, "model": "tiny", "hookpoint": "layers.1", "tokenizer_hash": "t",
        "corpus_hash": "c", "dtype": "float32", "d_in": D, "num_tokens": n, "complete": True,
        "shards": [{"file": "shard-00000.safetensors", "num_tokens": n, "first_doc": 0,
                    "num_docs": DOCS, "trace_ids": [f"q{d}#0" for d in range(DOCS)]}],
        "regions": ["prompt", "think", "answer", "special"],
        "behaviours": ["none", "backtracking", "uncertainty", "verification"]})
    return path


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    return _store(tmp_path_factory.mktemp("saebench") / "store")


def _direct_probing(store_path: Path, sae_dir: str, ends=None):
    """store_probing called directly: the held-out traces of thinksae's hash split, the store's
    median with the bench's multiple 10, the bench's probe options."""
    store = ActivationStore(store_path)
    held = store.split_docs(HOLDOUT, "heldout")
    rule = SinkRule(10.0, store.sink_rule.median_norm)
    sae = load_sae(sae_dir).float().eval()
    return held, store_probing(store, sae, ProbingOptions(window_tokens=4), rule, ends, docs=held)


def _cells(text: str, system: str) -> dict[str, str]:
    lines = text.splitlines()
    head = next(ln for ln in lines if ln.startswith("| system |"))
    row = next(ln for ln in lines if ln.startswith(f"| {system} |"))
    return dict(zip([c.strip() for c in head.split("|")[1:-1]],
                    [c.strip() for c in row.split("|")[1:-1]], strict=True))


def test_probing_columns_are_store_probing_on_the_heldout_traces(store, tmp_path, capsys):
    out = tmp_path / "q.json"
    quality.main(["--store", str(store), "--systems", "thinksae-topk",
                  "thinksae-matryoshka_batchtopk", *BENCH_ARGS, "--work", str(tmp_path / "w"),
                  "--json", str(out)])
    text = capsys.readouterr().out
    runs = json.loads(out.read_text())["runs"]
    assert [r["system"] for r in runs] == ["thinksae-topk", "thinksae-matryoshka_batchtopk"]
    assert "thinksae-matryoshka_batchtopk prefix widths (cumulative): k=4: 4,16,32 (default" in text
    assert "- matched L0: held-out L0" in text
    for run in runs:
        held, direct = _direct_probing(store, run["sae_dir"])
        probing = run["metrics"]["saebench"]["probing"]
        assert probing["traces"] == len(held) == DOCS * HOLDOUT and probing["skipped"] == {}
        # no tokenizer: behaviour units are think windows of 4 tokens, 4 per trace
        assert probing["behaviour_units"].startswith("think windows")
        assert probing["behaviours"]["units"] == len(held) * 4
        cells = _cells(text, run["system"])
        assert cells["L0 all"] == f"{run['metrics']['all']['l0']:.1f}"
        for family in ("regions", "behaviours"):
            ours, theirs = probing[family], getattr(direct, family)
            # units only from held-out traces, and all of them used
            assert sorted(ours["groups"]["train"] + ours["groups"]["test"]) == sorted(held.tolist())
            assert [c["name"] for c in ours["classes"]] == [c.name for c in theirs.classes]
            for k in (1, 2, 5):
                assert ours["mean"]["sae"][str(k)] == theirs.mean["sae"][str(k)]
                assert cells[f"probe {family} k={k}"] == f"{theirs.mean['sae'][str(k)]:.3f}"
        assert "absorption" not in cells and run["metrics"]["saebench"]["absorption"] is None
    assert [c["name"] for c in runs[0]["metrics"]["saebench"]["probing"]["behaviours"]
            ["classes"]] == ["backtracking", "verification"]  # uncertainty: no unit, skipped
    matryoshka = load_sae(runs[1]["sae_dir"])
    assert isinstance(matryoshka, MatryoshkaBatchTopKSae) and matryoshka.prefix_widths == (4, 16, 32)
    assert runs[1]["schedule"]["matryoshka_widths"] == "4,16,32"
    calibration = runs[1]["threshold_calibration"]
    assert calibration["threshold"] == pytest.approx(float(matryoshka.threshold))


def test_absorption_column_is_absorption_eval_with_the_model(store, tmp_path, tiny_model_dir,
                                                             capsys, one_thread):
    """Both SAEs' absorption records (the second from the reused residuals) equal direct
    absorption_eval calls with the bench's options and sink rule."""
    from thinksae.models import load_model

    out = tmp_path / "q.json"
    quality.main(["--store", str(store), "--systems", "thinksae-topk", "thinksae-batchtopk",
                  *BENCH_ARGS, "--model", str(tiny_model_dir), "--model_dtype", "float32",
                  "--absorption_words_per_letter", "5", "--absorption_min_letters", "1",
                  "--json", str(out), "--work", str(tmp_path / "w")])
    text = capsys.readouterr().out
    runs = json.loads(out.read_text())["runs"]
    model, tokenizer = load_model(str(tiny_model_dir), "cpu", "float32", progress=False)
    rule = SinkRule(10.0, ActivationStore(store).sink_rule.median_norm)
    assert "SAEBench absorption (first-letter task, 5 words per letter)" in text
    for run in runs:
        sae = load_sae(run["sae_dir"]).float().eval()
        direct = absorption_eval(model, tokenizer, sae, "layers.1",
                                 AbsorptionOptions(words_per_letter=5, min_letters=1), rule)
        ours = run["metrics"]["saebench"]["absorption"]
        # the whole record (per letter: probe F1, k-sparse F1s, main latents, absorption) is the
        # direct call's; the random tiny model's letter probes pass F1 0.6 rarely, so the means
        # over letters may be None on both sides
        assert ours == json.loads(json.dumps(direct.to_dict()))
        assert len(ours["letters"]) == 26 and ours["options"]["words_per_letter"] == 5
        assert any(x["sparse_probe_f1"] for x in ours["letters"])
        cells = _cells(text, run["system"])
        value = direct.aggregate["mean_absorption_fraction"]
        assert cells["absorption"] == ("-" if value is None else f"{value:.3f}")
        # with the tokenizer the behaviour units are think sentences (ended by ".")
        held, probing = _direct_probing(store, run["sae_dir"], sentence_end_ids(tokenizer))
        ours = run["metrics"]["saebench"]["probing"]
        assert ours["behaviour_units"] == "think sentences"
        assert ours["behaviours"]["units"] == probing.behaviours.units == len(held) * 5
        assert ours["behaviours"]["mean"]["sae"] == probing.behaviours.mean["sae"]


def test_reused_residuals_run_the_model_once_and_change_nothing(tiny_model, tokenizer, one_thread):
    """A second SAE under the same memo runs no forward pass, and both results equal fresh
    absorption_eval calls; leaving the block restores the real capture."""
    from thinksae.evaluate.saebench import absorption as absorption_module
    from thinksae.models.hookpoints import capture
    from thinksae.sae import SaeConfig, make_sae

    calls = []
    handle = tiny_model.model.embed_tokens.register_forward_hook(lambda *a: calls.append(1))
    opts = AbsorptionOptions(words_per_letter=3, icl_examples=1, probe_epochs=3, max_k=2,
                             min_letters=1, batch_size=32)
    torch.manual_seed(0)
    saes = [make_sae(D, SaeConfig(num_latents=128, k=k)) for k in (4, 8)]
    memo: dict = {}
    try:
        with reused_residuals(memo):
            first = absorption_eval(tiny_model, tokenizer, saes[0], "layers.1", opts)
            passes = len(calls)
            second = absorption_eval(tiny_model, tokenizer, saes[1], "layers.1", opts)
        assert passes == len(memo) > 0 and len(calls) == passes  # the second SAE: no pass
        assert absorption_module.capture is capture  # restored
        fresh = [absorption_eval(tiny_model, tokenizer, s, "layers.1", opts) for s in saes]
        assert len(calls) == 3 * passes  # outside the block every call runs the model again
    finally:
        handle.remove()
    assert first.to_dict() == fresh[0].to_dict() and second.to_dict() == fresh[1].to_dict()


def test_default_matryoshka_widths_by_hand():
    assert default_matryoshka_widths(4096, 32) == "128,512,2048,4096"
    assert default_matryoshka_widths(16384, 64) == "512,2048,8192,16384"
    assert default_matryoshka_widths(32, 4) == "4,16,32"  # 32/32 = 1 < k dropped
    assert default_matryoshka_widths(1000, 8) == "125,500,1000"  # 1000/32 not an integer
    with pytest.raises(ThinksaeError, match="give --matryoshka_widths"):
        default_matryoshka_widths(64, 64)


def test_bad_matryoshka_widths_refused_before_training(store):
    with pytest.raises(ThinksaeError, match="must end at the number of latents, 32"):
        quality.main(["--store", str(store), "--systems", "thinksae-matryoshka_batchtopk",
                      *BENCH_ARGS, "--matryoshka_widths", "8,16"])


def test_l0_notes_name_settings_off_by_more_than_a_quarter():
    def row(system, l0):
        return {"system": system, "label": "own", "k": 32, "metrics": {"all": {"l0": l0}}}

    rows = [row("a", 32.0), row("b", 38.0), row("b", 42.0), row("c", 23.0)]
    # b: mean 40 = +25 % (not more); c: 23 = −28 %
    (line,) = l0_notes(rows)
    assert "NOT matched" in line and "c own k=32: 23.0 (-28 %)" in line and "b own" not in line
    assert "all within" in l0_notes(rows[:3])[0]
