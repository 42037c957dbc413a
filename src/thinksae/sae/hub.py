"""Pretrained SAEs from a local directory or the Hugging Face hub (e.g. EleutherAI's
`EleutherAI/sae-DeepSeek-R1-Distill-Qwen-1.5B-65k`, one sparsify directory per hookpoint)."""

from __future__ import annotations

from pathlib import Path

from ..errors import ThinksaeError
from .formats import resolve_sae_dir


def fetch_sae(spec: str, hookpoint: str | None = None) -> Path:
    """The SAE directory for ``spec``: a local SAE/run directory, or a hub repo of which only
    ``<hookpoint>/*`` is downloaded (into the Hugging Face cache)."""
    path = Path(spec).expanduser()
    if path.exists():
        return resolve_sae_dir(path, hookpoint)
    if spec.count("/") != 1 or spec.startswith((".", "/", "~")):
        raise ThinksaeError(f"no SAE at {spec} (not a directory, nor a hub repo id owner/name)")
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    patterns = [f"{hookpoint}/*"] if hookpoint else None
    try:
        local = snapshot_download(spec, allow_patterns=patterns)
    except (HfHubHTTPError, LocalEntryNotFoundError, OSError, ValueError) as e:
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ThinksaeError(f"cannot download the SAE {spec} from the Hugging Face hub "
                            f"(offline? give a local directory): {reason}") from None
    return resolve_sae_dir(local, hookpoint)
