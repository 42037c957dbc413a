"""Options of `thinksae run` (the field docstrings are the CLI help)."""

from __future__ import annotations

from dataclasses import dataclass

from simple_parsing import field


@dataclass
class RunConfig:
    """Options of `thinksae run`."""

    config: str | None = field(default=None, positional=True, nargs="?", metavar="CONFIG")
    """Pipeline config (YAML or JSON): shared keys (name, out, model, hookpoint, device, dtype,
    sae) and one section per stage holding that command's options. `preset: NAME` inside it
    starts from a preset."""
    preset: str | None = None
    """Start from a preset: offline-demo (Qwen2.5-Coder GGUF from PyPI, CPU) or r1-distill-1.5b
    (DeepSeek-R1-Distill-Qwen-1.5B from the hub, layer 10, one GPU)."""
    out: str | None = None
    """Run directory (default: the config's `out`)."""
    model: str | None = None
    """Replace the config's model (hub id, local directory, .gguf or `offline`)."""
    device: str | None = None
    """Replace the config's device (auto, cpu, cuda, cuda:1, ...)."""
    show_config: bool = False
    """Print the resolved pipeline config (YAML) and exit."""
    progress: bool = True
    """Show progress bars."""
