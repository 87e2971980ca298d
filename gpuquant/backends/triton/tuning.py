"""Launch configurations per kernel and size class, read by the launchers.

The table (``tuning.json`` beside this file) maps a kernel name and a size
class to two numbers: ``TILE``, the elements one program handles (the
launchers derive units or rows per program from it), and ``EPT``, the
elements per thread (hence ``num_warps``). ``python -m bench.tune`` sweeps
the candidates on a GPU and rewrites the table; :func:`override` forces one
configuration for the sweep and :func:`use_table` loads another table file.
Every entry keeps a ``"source"`` note saying where its values came from.
"""

from __future__ import annotations

import contextlib
import json
import os

__all__ = ["config_for", "size_class", "override", "load_table", "use_table", "TABLE_PATH",
           "SIZE_CLASSES"]

TABLE_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "tuning.json")
# (name, upper bound of the elements one launch reads)
SIZE_CLASSES = (("small", 1 << 18), ("medium", 1 << 24), ("large", None))

_table: dict | None = None
_forced: dict[str, dict] = {}


def size_class(elements: int) -> str:
    for name, bound in SIZE_CLASSES:
        if bound is None or elements <= bound:
            return name
    raise AssertionError("unreachable")


def load_table(path: str = TABLE_PATH) -> dict:
    with open(path) as f:
        return json.load(f)


def use_table(path: str) -> dict:
    """Read launch parameters from ``path`` from now on (a swept table); returns it.
    Plans already built keep theirs: clear them with ``gpuquant.core.plan.clear()``."""
    global _table
    _table = load_table(path)
    return _table


def config_for(kernel: str, elements: int) -> dict:
    """Launch parameters of ``kernel`` for a launch over ``elements`` inputs."""
    global _table
    if kernel in _forced:
        return dict(_forced[kernel])
    if _table is None:
        _table = load_table()
    entry = _table["kernels"][kernel]
    chosen = entry.get(size_class(elements)) or entry["default"]
    return {k: v for k, v in chosen.items() if k != "source"}


@contextlib.contextmanager
def override(kernel: str, config: dict):
    """Force ``config`` for ``kernel`` inside the block (the tuning sweep uses this).

    Launch plans are cached per shape: the sweep must also clear them
    (``gpuquant.core.plan.clear()``) so that the forced configuration is read.
    """
    saved = _forced.get(kernel)
    _forced[kernel] = dict(config)
    try:
        yield
    finally:
        if saved is None:
            _forced.pop(kernel, None)
        else:
            _forced[kernel] = saved
