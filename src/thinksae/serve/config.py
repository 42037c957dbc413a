"""Options of `thinksae serve` (the field docstrings are the CLI help)."""

from __future__ import annotations

from dataclasses import dataclass

from simple_parsing import field


@dataclass
class ServeConfig:
    """Options of `thinksae serve`."""

    run: str = field(positional=True, metavar="RUN_DIR")
    """Run directory of `thinksae run` (its run_config.json names the model, hookpoint and SAE)."""
    host: str = "127.0.0.1"
    """Address to bind. Anything but localhost exposes the app (no authentication) to the network."""
    port: int = 8777
    """Port to listen on."""
    model: str | None = None
    """Load this model instead of the run's (hub id, local directory, .gguf or `offline`)."""
    device: str | None = None
    """cpu, cuda, cuda:N or auto (default: the run's)."""
    dtype: str | None = None
    """Model dtype (default: the run's): auto, float32, bfloat16, float16. The SAE runs in float32."""
    max_new_tokens: int = 256
    """Most tokens a steer or monitor request may generate."""
    max_text_tokens: int = 2048
    """Most tokens of a text sent to "try text"."""
    max_body: int = 65536
    """Largest request body in bytes."""
