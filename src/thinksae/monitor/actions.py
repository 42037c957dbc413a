"""Rule actions beyond alerting: switching on a steering intervention mid-generation.

The adapter below parses the rule's intervention specs (``FEATURE=VALUE``, the steer grammar) and
opens :func:`thinksae.interventions.steering` without a window, so every position the model
computes from then on is steered, until the generation ends (the caller's context closes it).
"""

from __future__ import annotations

import contextlib

from ..interventions import steering
from ..interventions.spec import parse_interventions


def switch_on_steering(model, sae, hookpoint: str, specs: str) -> contextlib.AbstractContextManager:
    """A context manager that steers ``model`` at ``hookpoint`` with ``specs`` while open."""
    return steering(model, sae, hookpoint, parse_interventions(specs))
