"""Rule actions beyond alerting: switching on a steering intervention mid-generation.

The adapter below is the one place that talks to :mod:`thinksae.steer`: it parses the rule's
intervention specs (``FEATURE=VALUE``, the steer grammar) and opens
:func:`thinksae.steer.steering` without a window, so every position the model computes from
then on is steered, until the generation ends (the caller's context closes it).
"""

from __future__ import annotations

import contextlib


def switch_on_steering(model, sae, hookpoint: str, specs: str) -> contextlib.AbstractContextManager:
    """A context manager that steers ``model`` at ``hookpoint`` with ``specs`` while open."""
    from ..steer import parse_interventions, steering

    return steering(model, sae, hookpoint, parse_interventions(specs))
