"""Options of `thinksae monitor` (the field docstrings are the CLI help)."""

from __future__ import annotations

from dataclasses import dataclass

from ..generation.config import GenerationConfig, generation_field


@dataclass
class MonitorConfig:
    """Options of `thinksae monitor`."""

    run: str | None = None
    """Run directory written by `thinksae run`: the SAE and model come from it unless
    given."""
    sae: str | None = None
    """SAE directory (sparsify or SAELens layout), or a training run directory with --hookpoint."""
    prompt: str | None = None
    """Question to generate from (chat-templated); shows the terminal view."""
    serve: bool = False
    """Serve the web app instead (prompt, features and rules are entered in the page)."""
    features: str = ""
    """Features to watch, comma-separated (those the rules read are added)."""
    rules: str | None = None
    """Rules file (YAML or JSON; see thinksae.monitor.rules for the format)."""
    value: str = "topk"
    """Value watched and compared by the rules: topk (the SAE's activation as Sae.encode gives
    it, 0 outside the top k; one full encoder GEMM per token) or pre (relu of the
    pre-activation from the watched encoder rows: > 0 for many latents the SAE leaves off)."""
    hookpoint: str | None = None
    """Hookpoint the SAE reads (default: the SAE's own, from thinksae.json or its directory)."""
    model: str | None = None
    """Model (hub id, local directory, .gguf or `offline`; default: the run's, else
    deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B)."""
    tokenizer: str | None = None
    """Load the tokenizer from another spec (default: the model's)."""
    generation: GenerationConfig = generation_field()
    """How to generate (flat options: --max_new_tokens, --do_sample, ...)."""
    alert_log: str = "runs/monitor/alerts.jsonl"
    """JSONL file every alert is appended to (empty: no log)."""
    live: bool = True
    """Redraw the terminal view per token (off: print it once at the end)."""
    host: str = "127.0.0.1"
    """Address the web app binds (with --serve)."""
    port: int = 8765
    """Port of the web app (with --serve)."""
    device: str = "auto"
    """cpu, cuda, cuda:N or auto."""
    dtype: str = "auto"
    """Model dtype: auto (bf16 where fast), float32, bfloat16 or float16. The SAE runs in float32."""
