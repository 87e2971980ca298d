"""The Triton backend: the Backend primitives on torch CUDA tensors and CuPy arrays.

The hot operations (calibrate + quantize, quantize with known qparams,
dequantize) are launch plans built once per input class
(backends/triton_runners.py, cached by gpuquant.core.plan). The primitives below
serve the calibrations (percentile, entropy, MSE, streamed Calibrators) and
launch the same kernels. Under TRITON_INTERPRET=1 everything runs on torch
CPU tensors: that is how CI tests the kernels bit for bit.
"""

from __future__ import annotations

import math

from ...config import QuantConfig
from ...core.frameworks import TensorInfo
from ...core.layout import Layout
from ...core.nonfinite import board_for, new_slot, wait_all
from ...errors import BackendUnavailableError
from ...kernels.modes import COL, ROW, SCALAR
from ..array_ops import ops_for

try:
    import triton

    from gpuquant.kernels import quantize as _q

    from . import calibration, export, runners
    from .launch import launch
except ImportError as exc:  # pragma: no cover - depends on the machine
    raise BackendUnavailableError(
        f"the Triton backend needs Triton (>= 3.6): pip install 'gpuquant[gpu]' ({exc})"
    ) from None

__all__ = ["TritonBackend"]



class TritonBackend:
    """The Backend protocol (backends/__init__.py) with Triton kernels."""

    name = "triton"

    # -- arrays --------------------------------------------------------------
    def native(self, x, info: TensorInfo):
        return x

    def wrap(self, arr, info: TensorInfo):
        return arr

    # -- launch plans --------------------------------------------------------
    def plan_quantize(self, layout: Layout, config: QuantConfig, x):
        """A runner ``(x, out=None) -> (codes, scale, zero_point)``: min/max, qparams, codes."""
        if runners.fusable(layout, config):
            return runners.FusedQuantize(layout, config, x)
        return runners.StagedQuantize(layout, config, x)

    def plan_quantize_given(self, layout: Layout, config: QuantConfig, x):
        """A runner ``(x, scale, zero_point, out=None) -> codes``."""
        return runners.GivenQuantize(layout, config, x)

    def plan_dequantize(self, layout: Layout, config: QuantConfig, data, out_dtype: str):
        """A runner ``(codes, scale, zero_point, out=None) -> y`` in ``out_dtype``."""
        return runners.Dequantize(layout, config, data, out_dtype)

    # -- primitives of the calibrations --------------------------------------
    def minmax(self, x2, layout: Layout, ignore_nonfinite: bool = False, defer: bool = False):
        """Finite float32 (lo, hi) per unit. NaN/Inf raise NonFiniteError unless ignored: at
        once (a wait for the device) or, with ``defer``, at the next gpuquant call."""
        ops = ops_for(x2)
        x2 = ops.as_2d(x2, layout.rows, layout.cols)
        with ops.launching(x2):
            lo, hi = self._reduce(ops, x2, layout, not ignore_nonfinite)
        if not ignore_nonfinite and not defer:
            wait_all()
        return lo, hi

    def _reduce(self, ops, x2, layout: Layout, check: bool):
        """Per-unit finite (lo, hi), one read of the data; NaN/Inf go to the board."""
        red = runners.minmax_launch(layout, ops.row_stride(x2), check,
                                    new_slot(layout.shape, layout.num_units))
        lo, hi = (ops.empty(red.parts, "float32", x2) for _ in range(2))
        launch(red.kernel, red.grid, x2, lo, hi, board_for(x2).tensor, *red.ints,
               num_warps=red.num_warps, **red.constexprs)
        if layout.mode == COL:
            return ops.amin(lo, 0), ops.amax(hi, 0)
        if layout.mode == SCALAR:
            return ops.amin(lo), ops.amax(hi)
        if layout.mode == ROW and not layout.rows_are_units:
            lo = layout.units_from_rows(lo, ops.amin)
            hi = layout.units_from_rows(hi, ops.amax)
        return lo.reshape(layout.unit_shape), hi.reshape(layout.unit_shape)

    def qparams(self, lo, hi, config: QuantConfig):
        scale, zero_point, _ = self._qparams(lo, hi, config)
        return scale, zero_point

    def _qparams(self, lo, hi, config: QuantConfig):
        """(scale, zero point, 1 / scale) of per-unit ranges, one launch (half_range: the scale
        rule, and the third array is the scale again: its codes divide)."""
        ops = ops_for(lo)
        lo, hi = ops.contiguous(lo), ops.contiguous(hi)
        scale, inv = (ops.empty(lo.shape, "float32", lo) for _ in range(2))
        zero_point = ops.empty(lo.shape, "int32", lo)
        n = math.prod(lo.shape)
        block_n = runners.pow2(n, 128)
        with ops.launching(lo):
            launch(_q.finalize_qparams_kernel, (triton.cdiv(n, block_n),), lo, hi, scale,
                   zero_point, inv, n, 1, 1, QMIN=config.qmin, QMAX=config.qmax,
                   SYMMETRIC=config.symmetric, BLOCK_P=2, BLOCK_N=block_n,
                   HALF_RANGE=config.scale_rule == "half_range")
        return scale, zero_point, inv

    def percentile(self, x2, layout: Layout, lower: float, upper: float,
                   ignore_nonfinite: bool = False):
        ops = ops_for(x2)
        x2 = ops.as_2d(x2, layout.rows, layout.cols)
        return calibration.unit_percentiles(ops, x2, layout, lower, upper, ignore_nonfinite)

    def abs_histogram(self, x2, layout: Layout, amax, bins: int, signed: bool = False):
        ops = ops_for(x2)
        return calibration.abs_histogram(ops, ops.as_2d(x2, layout.rows, layout.cols), layout,
                                         amax, bins, signed)

    def mse_errors(self, x2, layout: Layout, lo, hi, factors, config: QuantConfig):
        """float64 (units, candidates) squared errors of the shrunk ranges, one read of x."""
        ops = ops_for(x2)
        return calibration.mse_errors(self, ops, ops.as_2d(x2, layout.rows, layout.cols),
                                      layout, lo, hi, factors, config)

    # -- export (gpuquant.export) ----------------------------------------------
    def quantize_pack32(self, x2, scale, zero_point, config: QuantConfig):
        """compressed-tensors pack-quantized int32 words of a 2-D weight, in one kernel."""
        group = config.group_size if config.granularity.value == "group" else int(x2.shape[1])
        return export.quantize_pack32(x2, scale, zero_point, config.bits, config.symmetric, group,
                                      half_range=config.scale_rule == "half_range")

    def quantize_gguf(self, x, scheme: str, bf16_bits: bool = False):
        """GGUF Q8_0 / Q4_0 blocks (uint8) of x; ``bf16_bits``: x holds bfloat16 bit patterns
        (a torch int16/uint16 tensor, read as bfloat16 by the kernel)."""
        if bf16_bits:
            x = ops_for(x).view_as(x, "bfloat16")
        return export.quantize_gguf(x, scheme)
