"""Where a unit's qparams apply in the 2-D view: the layout modes, named once.

Shared by gpuquant.core.layout (host), the launchers and the kernels. This module
imports nothing, so host code may import it without Triton. A mode is a
string (its name, what ``Layout.mode`` holds and reprs show) carrying the
int that the kernels' ``MODE`` constexpr takes (``.code``).

- SCALAR: one unit (per tensor);
- COL: one unit per column (channel on the last axis);
- ROW: one unit per row (per token; channel on another axis, rows then share channels);
- GROUP: groups of ``group_size`` along each row.
"""

__all__ = ["Mode", "SCALAR", "COL", "ROW", "GROUP"]


class Mode(str):
    """A layout mode: compares equal to its name; ``code`` is the kernels' MODE value."""

    code: int

    def __new__(cls, name: str, code: int):
        mode = super().__new__(cls, name)
        mode.code = code
        return mode


SCALAR = Mode("scalar", 0)
COL = Mode("col", 1)
ROW = Mode("row", 2)
GROUP = Mode("group", 3)
