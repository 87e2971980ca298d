"""Launch plans of the hot Triton operations: every decision made once per input class.

A runner is built once per (shape, strides, dtype, device, config) by
gpuquant.core.plan and then called for every input of that class: it allocates
the outputs (or takes ``out=`` buffers), launches and returns. Nothing in a
call copies to the host, records an event or synchronises.

- :class:`FusedQuantize`: min/max + qparams + quantize (+ pack), one launch,
  when each unit (group, row) fits one program.
- :class:`StagedQuantize`: per tensor, per column and long or shared units:
  partial min/max, qparams of the partials, quantize; three launches.
- :class:`GivenQuantize`: quantize with known qparams, one launch.
- :class:`Dequantize`: unpack + dequantize, one launch.
"""

from __future__ import annotations

import dataclasses
import math

import triton

from gpuquant.kernels import dequantize as _dq
from gpuquant.kernels import minmax as _mm
from gpuquant.kernels import quantize as _q
from gpuquant.kernels.modes import COL, GROUP, SCALAR

from ...config import QuantConfig
from ...core.frameworks import array_device, check_writable, dtype_name
from ...core.layout import Layout
from ...core.nonfinite import board_for, new_slot, raise_ready
from ...errors import InvalidDtypeError, InvalidShapeError
from ..array_ops import ops_for
from . import tuning
from .launch import launch

__all__ = ["FusedQuantize", "StagedQuantize", "GivenQuantize", "Dequantize", "FUSED_MAX_SEGMENT",
           "minmax_launch", "MinMaxLaunch"]

FUSED_MAX_SEGMENT = 8192  # longest unit one fused program holds
_PAIR_WORD = {"float16": "int32", "bfloat16": "int32", "float32": "int64"}
_KIND = {"float16": 0, "bfloat16": 1, "float32": 2}


def pow2(n: int, cap: int) -> int:
    return max(2, min(cap, triton.next_power_of_2(max(1, n))))


def warps(elements: int, per_thread: int) -> int:
    """Warps for a program of ``elements`` at ``per_thread`` elements a thread (1 .. 16)."""
    return max(1, min(16, triton.next_power_of_2(max(1, elements // (32 * per_thread)))))


def tile(kernel: str, rows: int, cols: int) -> tuple[int, int, int]:
    """(BLOCK_R, BLOCK_C, num_warps) of a tile kernel over a (rows, cols) view."""
    cfg = tuning.config_for(kernel, rows * cols)
    block_c = pow2(cols, 1024)
    block_r = pow2(rows, max(2, cfg["TILE"] // block_c)) if rows > 1 else 1
    return block_r, block_c, warps(block_r * block_c, cfg["EPT"])


def fusable(layout: Layout, config: QuantConfig) -> bool:
    """True when each unit is one run of a row that fits one program."""
    if layout.mode == GROUP:
        seg = layout.group_size
        return seg <= FUSED_MAX_SEGMENT and not (config.bits == 4 and seg % 2)
    return layout.rows_are_units and layout.cols <= FUSED_MAX_SEGMENT


class _Runner:
    """What every runner shares: the view, the outputs and their checks."""

    def __init__(self, layout: Layout, config: QuantConfig, x):
        self.layout, self.config = layout, config
        self.ops = ops_for(x)
        # the row stride of the 2-D view each call makes (not the view: plans are cached)
        self.row_stride = self.ops.row_stride(self.ops.as_2d(x, layout.rows, layout.cols))
        self.contiguous = self.ops.is_contiguous(x)  # strides are part of the plan's key
        self.on_gpu = array_device(x) != "cpu"
        self.code_shape = layout.packed_shape(config.bits)
        self.storage = config.storage_dtype

    def outputs(self, like, out):
        """(codes, scale, zero point) buffers: new, or the caller's ``out`` after a check."""
        ops, layout = self.ops, self.layout
        if out is None:
            return (ops.empty(self.code_shape, self.storage, like),
                    ops.empty(layout.unit_shape, "float32", like),
                    ops.empty(layout.unit_shape, "int32", like))
        if not isinstance(out, (tuple, list)) or len(out) != 3:
            raise InvalidShapeError("out= takes 3 buffers: (codes, scale, zero_point)")
        codes, scale, zero_point = out
        check_out(ops, "out[0] (codes)", codes, self.code_shape, self.storage, like)
        check_out(ops, "out[1] (scale)", scale, layout.unit_shape, "float32", like)
        check_out(ops, "out[2] (zero_point)", zero_point, layout.unit_shape, "int32", like)
        return codes, scale, zero_point

    def finish(self):
        """Interpreter (CPU) runs have finished when the launch returns: report at once.
        (A GPU run is polled by the next call: see gpuquant.core.nonfinite.)"""
        raise_ready()


def check_out(ops, name: str, buf, shape, dtype: str, like) -> None:
    """An ``out=`` buffer must have the output's shape, dtype and device, and be contiguous."""
    check_writable(buf, name)
    if tuple(buf.shape) != tuple(shape) or not ops.is_contiguous(buf):
        raise InvalidShapeError(f"{name} has shape {tuple(buf.shape)}"
                                f"{'' if ops.is_contiguous(buf) else ' (not contiguous)'}; "
                                f"this call writes a contiguous {tuple(shape)}")
    if dtype_name(buf) != dtype:
        raise InvalidDtypeError(f"{name} has dtype {dtype_name(buf)}; this call writes {dtype}")
    if array_device(buf) != array_device(like):
        raise InvalidShapeError(f"{name} is on {array_device(buf)}; the input is on "
                                f"{array_device(like)}")


class FusedQuantize(_Runner):
    """One launch of kernels/quantize.fused_units_kernel."""

    def __init__(self, layout: Layout, config: QuantConfig, x):
        super().__init__(layout, config, x)
        if layout.mode == GROUP:
            per_row, seg = layout.num_groups, layout.group_size
        else:
            per_row, seg = 1, layout.cols
        units = layout.rows * per_row
        # flat: unit u is the run [u * seg, (u + 1) * seg) of the input (and of the bytes)
        self.flat = self.contiguous and layout.cols % seg == 0 and \
            (config.bits != 4 or seg % 2 == 0)
        dtype = dtype_name(x)
        self.pairs = config.bits == 4 and seg % 2 == 0 and layout.cols % 2 == 0 and \
            dtype in _PAIR_WORD and self.row_stride % 2 == 0
        self.word = _PAIR_WORD.get(dtype)
        cfg = tuning.config_for("fused_units_kernel", layout.rows * layout.cols)
        block_l = pow2(seg, FUSED_MAX_SEGMENT)
        # a unit of TILE or more is a program of its own (fewer values a thread, fewer registers)
        block_u = pow2(units, cfg["TILE"] // block_l) if units > 1 and block_l < cfg["TILE"] else 1
        self.grid = (triton.cdiv(units, block_u),)
        self.slot = new_slot(layout.shape, layout.num_units)
        q_stride = (layout.cols + 1) // 2 if config.bits == 4 else layout.cols
        self.ints = (units, per_row, seg, layout.cols, self.row_stride, q_stride,
                     self.slot)
        self.num_warps = warps(block_u * block_l, cfg["EPT"])
        self.constexprs = dict(
            QMIN=config.qmin, QMAX=config.qmax, SYMMETRIC=config.symmetric,
            PACK=config.bits == 4, HIGH_FIRST=config.nibble_order == "high_first",
            CHECK=not config.ignore_nonfinite, FLAT=self.flat,
            EVEN=self.flat and units % block_u == 0 and seg == block_l, PAIRS=self.pairs,
            KIND=_KIND.get(dtype, 0), BLOCK_U=block_u, BLOCK_L=block_l,
            HALF_RANGE=config.scale_rule == "half_range")
        self.board = board_for(x).tensor
        self._fallback = None

    def __call__(self, x, out=None):
        codes, scale, zero_point = self.outputs(x, out)
        xk = x if self.flat else self.ops.as_2d(x, self.layout.rows, self.layout.cols)
        if self.pairs:
            try:
                xk = self.ops.view_as(xk, self.word)
            except (RuntimeError, ValueError, TypeError):  # misaligned view: the general path
                return self._unpaired()(x, out=(codes, scale, zero_point))
        with self.ops.launching(x):
            launch(_q.fused_units_kernel, self.grid, xk, codes, scale, zero_point, self.board,
                   *self.ints, num_warps=self.num_warps, **self.constexprs)
        if not self.on_gpu:
            self.finish()
        return codes, scale, zero_point

    def _unpaired(self) -> FusedQuantize:
        """The same plan without pair loads (for inputs whose data pointer is misaligned)."""
        if self._fallback is None:
            self._fallback = _copy(self)
            self._fallback.pairs = False
            self._fallback.constexprs = dict(self.constexprs, PAIRS=False, EVEN=False)
        return self._fallback


def _copy(runner):
    new = object.__new__(type(runner))
    new.__dict__.update(runner.__dict__)
    return new


@dataclasses.dataclass
class MinMaxLaunch:
    """The partial min/max pass of a layout: which kernel, grid, arguments and partials.

    Partial p of unit n sits at (p // inner) * n_units * inner + n * inner + p % inner
    of the ``parts``-shaped outputs: per column, splits of the rows; per tensor, chunks
    of every row; per group or row, one partial a unit (rows sharing a channel: the
    (outer, channel, inner) blocks).
    """

    kernel: object
    grid: tuple
    ints: tuple  # the arguments after (x2, lo, hi, flags)
    constexprs: dict
    num_warps: int
    parts: tuple
    n_parts: int
    inner: int


def minmax_launch(layout: Layout, row_stride: int, check: bool, slot: int) -> MinMaxLaunch:
    rows, cols, n_units = layout.rows, layout.cols, layout.num_units
    if layout.mode == COL:
        splits = max(1, min(256, rows // 512))  # grid axis 1: at most 65535; 512 rows: the
        # final exchange between warps amortised over 16 row tiles
        cfg = tuning.config_for("column_minmax_kernel", rows * cols)
        block_c = pow2(cols, 128)
        block_r = max(1, min(64, cfg["TILE"] // block_c))
        per_split = triton.cdiv(rows, splits)
        even = per_split * splits == rows and per_split % block_r == 0 and cols % block_c == 0
        return MinMaxLaunch(_mm.column_minmax_kernel, (triton.cdiv(cols, block_c), splits),
                            (rows, cols, row_stride, per_split, slot),
                            dict(CHECK=check, EVEN=even, BLOCK_R=block_r, BLOCK_C=block_c),
                            warps(block_r * block_c, cfg["EPT"]), (splits, cols), splits, 1)
    unit_div, unit_mod = layout.row_unit()
    if layout.mode == SCALAR:  # chunks of every row, all of one unit
        per_row = triton.cdiv(cols, min(cols, 1 << 16))
        seg = triton.cdiv(cols, per_row)
        unit_div, unit_mod = 1, 1
    elif layout.mode == GROUP:  # segment u is unit u
        per_row, seg = layout.num_groups, layout.group_size
        unit_div, unit_mod = 1, n_units
    else:  # one segment a row: the kernel loops over long ones
        per_row, seg = 1, cols
    segments = rows * per_row
    inner = 1 if layout.mode in (SCALAR, GROUP) else unit_div  # shared rows: (outer, ch, inner)
    cfg = tuning.config_for("segment_minmax_kernel", rows * cols)
    block_l = pow2(seg, 2048)
    block_u = max(1, min(64, cfg["TILE"] // block_l))
    return MinMaxLaunch(_mm.segment_minmax_kernel, (triton.cdiv(segments, block_u),),
                        (segments, per_row, seg, cols, row_stride, unit_div, unit_mod, slot),
                        dict(CHECK=check, BLOCK_U=block_u, BLOCK_L=block_l,
                             EVEN=segments % block_u == 0 and seg % block_l == 0 and cols % seg == 0,
                             FLAT=row_stride == cols and cols % seg == 0,
                             SEG_UNITS=unit_div == 1 and unit_mod == segments),
                        warps(block_u * block_l, cfg["EPT"]), (segments,),
                        segments // (1 if layout.mode == SCALAR else n_units), inner)


class StagedQuantize(_Runner):
    """Partial min/max, qparams of the partials, quantize: three launches, no host work."""

    def __init__(self, layout: Layout, config: QuantConfig, x):
        super().__init__(layout, config, x)
        self.slot = new_slot(layout.shape, layout.num_units)
        self.board = board_for(x).tensor
        self.reduce = minmax_launch(layout, self.row_stride,
                                    not config.ignore_nonfinite, self.slot)
        n_units = 1 if layout.mode == SCALAR else layout.num_units
        block_n = pow2(n_units, 128)
        self.finalize = ((triton.cdiv(n_units, block_n),),
                         (n_units, self.reduce.n_parts, self.reduce.inner),
                         dict(QMIN=config.qmin, QMAX=config.qmax, SYMMETRIC=config.symmetric,
                              BLOCK_P=max(2, 4096 // block_n), BLOCK_N=block_n,
                              HALF_RANGE=config.scale_rule == "half_range"))
        self.quantize = GivenQuantize(layout, config, x, have_inv=True)

    def __call__(self, x, out=None):
        codes, scale, zero_point = self.outputs(x, out)
        ops, x2, red = self.ops, self.ops.as_2d(x, self.layout.rows, self.layout.cols), self.reduce
        lo, hi = ops.empty(red.parts, "float32", x), ops.empty(red.parts, "float32", x)
        inv = ops.empty(self.layout.unit_shape, "float32", x)
        with ops.launching(x):
            launch(red.kernel, red.grid, x2, lo, hi, self.board, *red.ints,
                   num_warps=red.num_warps, **red.constexprs)
            grid, ints, constexprs = self.finalize
            launch(_q.finalize_qparams_kernel, grid, lo, hi, scale, zero_point, inv, *ints,
                   **constexprs)
            self.quantize.launch(x2, codes, inv, zero_point)
        if not self.on_gpu:
            self.finish()
        return codes, scale, zero_point


class GivenQuantize(_Runner):
    """One launch of quantize_tile_kernel with known per-unit qparams."""

    def __init__(self, layout: Layout, config: QuantConfig, x, have_inv: bool = False):
        super().__init__(layout, config, x)
        block_r, block_c, self.num_warps = tile("quantize_tile_kernel", layout.rows, layout.cols)
        col_tiles = triton.cdiv(layout.cols, block_c)
        self.grid = (triton.cdiv(layout.rows, block_r) * col_tiles,)
        q_stride = (layout.cols + 1) // 2 if config.bits == 4 else layout.cols
        self.ints = (layout.rows, layout.cols, self.row_stride, q_stride,
                     max(1, layout.num_groups), max(1, layout.group_size), col_tiles,
                     *layout.row_unit())
        self.constexprs = dict(MODE=layout.mode.code, QMIN=config.qmin, QMAX=config.qmax,
                               HAVE_INV=have_inv, PACK=config.bits == 4,
                               HIGH_FIRST=config.nibble_order == "high_first",
                               BLOCK_R=block_r, BLOCK_C=block_c,
                               HALF_RANGE=config.scale_rule == "half_range")

    def launch(self, x2, codes, params, zero_point) -> None:
        launch(_q.quantize_tile_kernel, self.grid, x2, codes, params, zero_point, *self.ints,
               num_warps=self.num_warps, **self.constexprs)

    def __call__(self, x, scale, zero_point, out=None):
        codes = self.ops.empty(self.code_shape, self.storage, x) if out is None else out
        if out is not None:
            check_out(self.ops, "out", out, self.code_shape, self.storage, x)
        with self.ops.launching(x):
            self.launch(self.ops.as_2d(x, self.layout.rows, self.layout.cols), codes,
                        self.ops.contiguous(scale), self.ops.contiguous(zero_point))
        return codes


class Dequantize:
    """One launch of dequantize_units_kernel (units that are runs of the flat tensor: groups
    of whole rows, rows) or dequantize_tile_kernel (every other layout)."""

    def __init__(self, layout: Layout, config: QuantConfig, data, out_dtype: str):
        self.ops, self.layout, self.out_dtype = ops_for(data), layout, out_dtype
        rows, cols = layout.rows, layout.cols
        packed = config.bits == 4
        q_cols = (cols + 1) // 2 if packed else cols
        self.code_shape = (rows, q_cols)
        common = dict(PACKED=packed, SIGNED=config.symmetric,
                      HIGH_FIRST=config.nibble_order == "high_first", BF16=out_dtype == "bfloat16")
        seg = _run_length(layout)
        if seg and not (packed and seg % 2):
            self.kernel = _dq.dequantize_units_kernel
            units = layout.rows * cols // seg
            cfg = tuning.config_for("dequantize_units_kernel", rows * cols)
            block_l = pow2(seg, cfg["TILE"])
            block_u = pow2(units, cfg["TILE"] // block_l) if units > 1 and block_l < cfg["TILE"] else 1
            chunks = triton.cdiv(seg, block_l)
            self.grid = (triton.cdiv(units, block_u) * chunks,)
            self.ints = (units, seg, chunks)
            self.num_warps = warps(block_u * block_l, cfg["EPT"])
            self.constexprs = dict(common, EVEN=units % block_u == 0 and seg % block_l == 0,
                                   BLOCK_U=block_u, BLOCK_L=block_l)
        else:
            self.kernel = _dq.dequantize_tile_kernel
            block_r, block_c, self.num_warps = tile("dequantize_tile_kernel", rows, cols)
            col_tiles = triton.cdiv(cols, block_c)
            self.grid = (triton.cdiv(rows, block_r) * col_tiles,)
            self.ints = (rows, cols, q_cols, cols, max(1, layout.num_groups),
                         max(1, layout.group_size), col_tiles, *layout.row_unit())
            self.constexprs = dict(common, MODE=layout.mode.code,
                                   EVEN=rows % block_r == 0 and cols % block_c == 0,
                                   BLOCK_R=block_r, BLOCK_C=block_c)
        self.numel = math.prod(layout.shape)

    def __call__(self, data, scale, zero_point, out=None):
        ops = self.ops
        if out is None:
            out = ops.empty(self.layout.shape, self.out_dtype, data)
        else:
            check_out(ops, "out", out, self.layout.shape, self.out_dtype, data)
        y = ops.view_as(out, "int16") if self.out_dtype == "bfloat16" else out
        with ops.launching(data):
            launch(self.kernel, self.grid,
                   ops.contiguous(data).reshape(self.code_shape), y, ops.contiguous(scale),
                   ops.contiguous(zero_point), *self.ints, num_warps=self.num_warps,
                   **self.constexprs)
        return out


def _run_length(layout: Layout) -> int:
    """The length of each unit when units are consecutive runs of the flat tensor, else 0."""
    if layout.mode == GROUP and layout.cols % layout.group_size == 0:
        return layout.group_size
    if layout.rows_are_units:
        return layout.cols
    return 0
