"""Benchmark what a cheaper way of running the model costs in fidelity, against float32 on the
same tokens, in one run: transformers in bfloat16 (what `dtype: auto` picks on a CPU with fast
bf16, and on GPUs) and llama.cpp on the quantised GGUF as it is (the corpus engine on CPUs
without fast bf16). Definitions: `thinksae.evaluate.fidelity`.

Texts: the first --n traces of a corpus JSONL (default: the findings run's, kept in the repo), cut
to --tokens tokens, one forward each (teacher forcing: every position is compared on the same
prefix). Prints per run: positions, mean and max KL(p_fp32 ‖ p), argmax agreement, and for
bfloat16 the activation FVU at the SAE's hookpoint and the SAE's FVU on both runs' activations
(over the SAE's trained regions; --sae). llama.cpp gives no activations (it is only a corpus
engine). Each model is loaded in turn (peak memory: the float32 model plus the reference logits).

    python bench/fidelity.py                                  # offline GGUF, findings traces
    python bench/fidelity.py --sae runs/findings/sae --n 8 --tokens 256
    python bench/fidelity.py --model tiny --n 2 --tokens 32   # smoke run (no llama.cpp)
"""

from __future__ import annotations

import argparse
import gc
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
TINY_TOKENIZER = ROOT / "tests" / "assets" / "r1_tokenizer"


def texts(tok, path: str, n: int, tokens: int) -> list[tuple[list[int], list[int]]]:
    """(token ids, region codes) of the first ``n`` traces, cut to ``tokens``."""
    from thinksae.corpus import load_traces, tokenize_trace

    out = []
    for trace in load_traces(path, tok, limit=n):
        t = tokenize_trace(tok, trace, max_length=tokens)
        out.append((t.input_ids, t.regions))
    return out


def load(spec: str, dtype: str):
    if spec == "tiny":
        from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

        torch.manual_seed(0)
        cfg = Qwen2Config(vocab_size=152064, hidden_size=64, intermediate_size=128,
                          num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2)
        model = Qwen2ForCausalLM(cfg).eval().to(getattr(torch, dtype))
        return model, AutoTokenizer.from_pretrained(TINY_TOKENIZER)
    from thinksae.models import load_model

    return load_model(spec, device="cpu", dtype=dtype, progress=False)


@torch.inference_mode()
def hf_run(model, docs, hookpoint: str) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Per text: float32 logits ``[T, V]`` and the hookpoint's output ``[T, d]`` (float32)."""
    from thinksae.models.hookpoints import resolve_hookpoint

    seen: list[torch.Tensor] = []
    handle = resolve_hookpoint(model, hookpoint).register_forward_hook(
        lambda _m, _i, out: seen.append((out[0] if isinstance(out, tuple) else out)[0].float()))
    logits = []
    try:
        for ids, _ in docs:
            logits.append(model(input_ids=torch.tensor([ids]), use_cache=False).logits[0].float())
    finally:
        handle.remove()
    return logits, seen


def llama_logits(gguf: Path, docs, threads: int) -> list[torch.Tensor]:
    """Per text: llama.cpp's logits at every position (the GGUF's own weights)."""
    from llama_cpp import Llama

    longest = max(len(ids) for ids, _ in docs)
    llm = Llama(model_path=str(gguf), n_ctx=longest + 8, n_batch=min(512, longest + 8),
                logits_all=True, n_threads=threads, verbose=False)
    out = []
    for ids, _ in docs:
        llm.reset()
        llm.eval(ids)
        out.append(torch.from_numpy(llm.scores[: len(ids)].copy()))
    llm.close() if hasattr(llm, "close") else None
    return out


def report(name: str, ref_logits, logits, seconds: float, acts=None, ref_acts=None, masks=None,
           sae=None) -> None:
    from thinksae.evaluate.fidelity import FidelityStats, sae_fvu

    st = FidelityStats()
    for r, o in zip(ref_logits, logits):
        st.add_logits(r, o)
    f = st.next_token()
    line = (f"{name:<22} {seconds:7.1f} s  positions {f.positions}  KL mean {f.kl_mean:.5f}  "
            f"max {f.kl_max:.4f}  argmax agreement {100 * f.argmax_agreement:.2f} %")
    if acts is not None:
        for r, o, m in zip(ref_acts, acts, masks):
            st.add_activations(r[m], o[m])
        line += f"\n{'':<22} activation FVU vs float32 {st.activation_fvu():.2e}"
        if sae is not None:
            ref_all = torch.cat([r[m] for r, m in zip(ref_acts, masks)])
            all_ = torch.cat([o[m] for o, m in zip(acts, masks)])
            line += (f"  SAE FVU: float32 acts {sae_fvu(sae, ref_all):.4f}, "
                     f"this run's {sae_fvu(sae, all_):.4f}")
    print(line, flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="offline", help="offline, tiny or any model spec")
    p.add_argument("--traces", default=str(ROOT / "docs" / "findings-traces.jsonl"))
    p.add_argument("--sae", default=None, help="SAE directory (FVU at its hookpoint)")
    p.add_argument("--hookpoint", default="layers.10")
    p.add_argument("--n", type=int, default=8)
    p.add_argument("--tokens", type=int, default=256)
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = p.parse_args()
    torch.set_num_threads(args.threads)

    from thinksae.corpus import Region

    sae, regions = None, None
    if args.sae:
        from thinksae.sae.bound import SaeAtHookpoint
        from thinksae.steer.regions import trained_regions

        bound = SaeAtHookpoint.find(args.sae, args.hookpoint)
        sae, args.hookpoint = bound.load(), bound.hookpoint
        regions = {Region[r.upper()].value for r in trained_regions(bound.card)}
    t0 = time.perf_counter()
    model, tok = load(args.model, "float32")
    print(f"float32 load {time.perf_counter() - t0:.1f} s; hookpoint {args.hookpoint}", flush=True)
    docs = texts(tok, args.traces, args.n, args.tokens)
    keep = regions or {r.value for r in Region if r is not Region.SPECIAL}
    masks = [torch.tensor([r in keep for r in reg]) for _, reg in docs]
    t0 = time.perf_counter()
    ref_logits, ref_acts = hf_run(model, docs, args.hookpoint)
    print(f"{'float32 (reference)':<22} {time.perf_counter() - t0:7.1f} s  "
          f"{sum(map(len, ref_logits))} positions in {len(docs)} texts", flush=True)
    del model
    gc.collect()

    model, _ = load(args.model, "bfloat16")
    t0 = time.perf_counter()
    logits, acts = hf_run(model, docs, args.hookpoint)
    report("transformers bfloat16", ref_logits, logits, time.perf_counter() - t0, acts, ref_acts,
           masks, sae)
    del model, logits, acts
    gc.collect()

    if args.model != "tiny":
        from thinksae.corpus.engines import gguf_file

        try:
            import llama_cpp  # noqa: F401
        except ImportError:
            print("llama.cpp: llama-cpp-python is not installed (pip install 'thinksae[llamacpp]')")
            return
        t0 = time.perf_counter()
        logits = llama_logits(gguf_file(args.model), docs, args.threads)
        report("llama.cpp (GGUF as is)", ref_logits, logits, time.perf_counter() - t0)


if __name__ == "__main__":
    main()
