"""Where each quantization unit lies in a tensor, for every backend.

Every backend sees a tensor as a 2-D row-major view ``(rows, cols)`` with
``cols = shape[-1]`` (a 0-d tensor is ``(1, 1)``). A unit's qparams then
apply to elements in one of four patterns, the layout's ``mode``:

==========  ==========================================  ======================
mode        granularity                                 qparams of the 2-D view
==========  ==========================================  ======================
``scalar``  tensor                                      one value
``col``     channel on the last axis                    one per column
``row``     channel on another axis; token              one per row (expanded)
``group``   group of ``group_size`` along the last axis  ``(rows, num_groups)``
==========  ==========================================  ======================

For a channel axis other than the last, several rows share a channel:
:meth:`Layout.rows_from_units` expands per-channel values to per-row values
and :meth:`Layout.units_from_rows` reduces per-row values to channels;
:meth:`Layout.channel_rows` regroups the data with one row per channel.
"""

from __future__ import annotations

import dataclasses
import math

from ..config import Granularity, QuantConfig
from ..errors import InvalidChannelCountError, InvalidShapeError
from ..kernels.modes import COL, GROUP, ROW, SCALAR, Mode

__all__ = ["Layout"]


@dataclasses.dataclass(frozen=True)
class Layout:
    shape: tuple[int, ...]
    mode: Mode
    rows: int
    cols: int
    unit_shape: tuple[int, ...]
    axis: int | None = None
    group_size: int = 0

    @classmethod
    def of(cls, shape: tuple[int, ...], config: QuantConfig) -> Layout:
        shape = tuple(s if type(s).__name__ == "SymInt" else int(s) for s in shape)  # traced sizes
        ndim = len(shape)
        cols = shape[-1] if ndim else 1
        rows = math.prod(shape[:-1]) if ndim else 1
        gran = config.granularity
        if gran is Granularity.TENSOR:
            return cls(shape, SCALAR, rows, cols, ())
        if gran is Granularity.TOKEN:
            return cls(shape, ROW, rows, cols, shape[:-1])
        if gran is Granularity.GROUP:
            size = int(config.group_size)
            if isinstance(cols, int):  # a group longer than the row is the row (2^62 too)
                size = min(size, max(cols, 1))
            groups = -(-cols // size)
            return cls(shape, GROUP, rows, cols, (*shape[:-1], groups), group_size=size)
        if ndim == 0:
            raise InvalidShapeError(
                "granularity='channel' needs a tensor of at least 1 dimension; got a 0-d tensor"
            )
        axis = config.axis
        if not -ndim <= axis < ndim:
            raise InvalidShapeError(
                f"axis={axis} is out of range for a tensor of {ndim} dimension(s) with shape "
                f"{shape}; accepted: {-ndim} .. {ndim - 1}"
            )
        axis %= ndim
        channels = shape[axis]
        if config.num_channels is not None and config.num_channels != channels:
            raise InvalidChannelCountError(
                f"num_channels={config.num_channels} but the tensor of shape {shape} has "
                f"{channels} channel(s) along axis {axis}"
            )
        mode = COL if axis == ndim - 1 else ROW
        return cls(shape, mode, rows, cols, (channels,), axis=axis)

    # --------------------------------------------------------------- helpers
    @property
    def num_groups(self) -> int:
        return self.unit_shape[-1] if self.mode == GROUP else 0

    @property
    def num_units(self) -> int:
        return math.prod(self.unit_shape)

    @property
    def rows_are_units(self) -> bool:
        """True when each row of the 2-D view is exactly one unit."""
        return self.mode == ROW and self.num_units == self.rows

    def params_2d_shape(self) -> tuple[int, ...]:
        """Shape of qparams as the 2-D kernels index them."""
        return {SCALAR: (), COL: (self.cols,), ROW: (self.num_units,),
                GROUP: (self.rows, self.num_groups)}[self.mode]

    def packed_shape(self, bits: int) -> tuple[int, ...]:
        """Shape of the stored codes: int4 packs two per byte along the last axis."""
        if bits != 4:
            return self.shape
        return (*self.shape[:-1], (self.cols + 1) // 2) if self.shape else (1,)

    def _channel_block(self) -> tuple[int, int, int]:
        """(outer, channels, inner): rows as (outer, channel, inner) for a row-mode channel."""
        lead = self.shape[:-1]
        return (math.prod(lead[: self.axis]), lead[self.axis], math.prod(lead[self.axis + 1:]))

    def row_unit(self) -> tuple[int, int]:
        """(div, mod) with which row r of the 2-D view finds its unit: (r // div) % mod.

        Row mode with a channel axis before the last: rows are (outer, channel,
        inner) blocks. Every other layout: (1, rows), the row itself.
        """
        if self.mode == ROW and not self.rows_are_units:
            _, channels, inner = self._channel_block()
            return inner, channels
        return 1, max(1, self.rows)

    def rows_from_units(self, values, xp):
        """Expand per-unit values (row mode) to one value per row of the 2-D view."""
        if self.rows_are_units:
            return values.reshape(self.rows)
        outer, channels, inner = self._channel_block()
        expanded = xp.broadcast_to(values.reshape(1, channels, 1), (outer, channels, inner))
        return expanded.reshape(self.rows)

    def channel_rows(self, x2):
        """The 2-D view regrouped with one row per channel (row mode, channel axis before
        others): (channels, rows // channels * cols), a channel's values in x2's order
        (a copy; reshape and swapaxes read the same on NumPy, torch and CuPy)."""
        outer, channels, inner = self._channel_block()
        by_channel = x2.reshape(outer, channels, inner * self.cols).swapaxes(0, 1)
        return by_channel.reshape(channels, outer * inner * self.cols)

    def units_from_rows(self, values, reduce):
        """Reduce per-row values (row mode) to per-unit values with ``reduce(a, axis)``."""
        if self.rows_are_units:
            return values.reshape(self.unit_shape)
        outer, channels, inner = self._channel_block()
        by_channel = values.reshape(outer, channels, inner)
        return reduce(reduce(by_channel, 2), 0)

    def check_params(self, name: str, shape: tuple[int, ...]) -> None:
        if tuple(shape) != self.unit_shape:
            raise InvalidShapeError(
                f"{name} has shape {tuple(shape)} but this config on a tensor of shape "
                f"{self.shape} needs {self.unit_shape}"
            )
