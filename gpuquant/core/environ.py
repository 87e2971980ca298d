"""Integer settings read from the environment (WORLD_SIZE, GPUQUANT_NUM_THREADS, ...).

A value that is no integer, or is below its minimum, is a bad setting of the
user's, not a bug: it raises a QuantizationError naming the variable and what
is accepted, so the command says so in one line and exits 2.
"""

from __future__ import annotations

import os

from ..errors import QuantizationError

__all__ = ["env_int"]


def env_int(name: str, default: int, minimum: int = 1, what: str = "") -> int:
    """``int(os.environ[name])``, ``default`` when unset or empty, checked against ``minimum``."""
    text = os.environ.get(name, "").strip()
    if not text:
        return default
    try:
        value = int(text)
    except ValueError:
        value = None
    if value is None or value < minimum:
        raise QuantizationError(f"{name}={os.environ[name]!r}: give an integer >= {minimum}"
                                + (f" ({what})" if what else ""))
    return value
