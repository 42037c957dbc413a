"""Environment switches, read one way: :func:`env_flag` for booleans, one documented set of values.

==========================  =========  =====================================================
variable                    default    effect
==========================  =========  =====================================================
``THINKSAE_PACKED``         on         float32 CPU models get pre-packed block linears
``THINKSAE_DEQUANT_CACHE``  on         a GGUF is de-quantised once and loaded from a copy
``THINKSAE_LLAMACPP``       auto       ``scripts/demo.sh`` installs llama.cpp (on/off/auto)
``HF_HUB_OFFLINE``          off        no Hugging Face hub connection is tried
``HF_DATASETS_OFFLINE``     off        likewise for ``datasets``
==========================  =========  =====================================================

On: ``1``, ``true``, ``yes``, ``on``; off: ``0``, ``false``, ``no``, ``off`` (any case, spaces
ignored); unset or empty: the default. Any other value is refused with one line naming the
variable, so a typo never silently flips a switch.

``python -m thinksae.env NAME [DEFAULT]`` prints ``1`` or ``0`` (``auto`` when the variable is
``auto`` and auto is allowed by passing ``auto`` as the default): the shell scripts ask here.
"""

from __future__ import annotations

import os
import sys

from .errors import ThinksaeError

ON = ("1", "true", "yes", "on")
OFF = ("0", "false", "no", "off")


def env_flag(name: str, default: bool) -> bool:
    """The boolean value of environment variable ``name`` (module docstring), ``default`` when
    it is unset or empty."""
    raw = os.environ.get(name, "").strip().lower()
    if not raw:
        return default
    if raw in ON:
        return True
    if raw in OFF:
        return False
    raise ThinksaeError(f"environment variable {name}={os.environ[name]!r}: use one of "
                        f"{', '.join(ON)} (on) or {', '.join(OFF)} (off)")


def hub_offline() -> bool:
    """Whether the user asked for no hub access (``HF_HUB_OFFLINE`` or ``HF_DATASETS_OFFLINE``)."""
    return env_flag("HF_HUB_OFFLINE", False) or env_flag("HF_DATASETS_OFFLINE", False)


def main(argv: list[str]) -> int:
    if not 1 <= len(argv) <= 2:
        print("usage: python -m thinksae.env NAME [on|off|auto]", file=sys.stderr)
        return 2
    name, default = argv[0], (argv[1] if len(argv) > 1 else "off")
    raw = os.environ.get(name, "").strip().lower()
    if default == "auto" and raw in ("", "auto"):
        print("auto")
        return 0
    try:
        print(int(env_flag(name, default in ON)))
    except ThinksaeError as e:
        print(f"thinksae: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
