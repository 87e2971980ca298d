"""Host runners of the float formats on torch tensors (kernels/float_quant.py).

``quantize_float(x, cfg) -> (codes, scale, extra)`` and
``dequantize_float(codes, scale, extra, cfg, shape, dtype)`` (extra: None, NVFP4's
global scale, or a double-quantized NF4's (nested_absmax, nested_offset)) follow the
storage layout of the NumPy reference (gpuquant/formats/reference.py, the
float-format interface): fp8 codes are uint8 bit patterns of x's shape; fp4
(MX, NVFP4) two per byte along the last axis, the even element low; NF4 two per
byte over the flattened tensor, the first element high. Nothing on the path
copies to the host or synchronises: a per-tensor amax is an integer atomic max
on the device read by the next kernel. ``quantize_fp8_dynamic`` is vLLM's
dynamic activation quantizer (per token, or per 1 x group_size group).
"""

from __future__ import annotations

import dataclasses
import math

from ...errors import BackendUnavailableError, InvalidDtypeError, InvalidShapeError, UnsupportedSchemeError
from .launch import launch

try:
    import torch
    import triton

    from gpuquant.kernels import float_quant as _fq
except ImportError as exc:  # pragma: no cover - depends on the machine
    raise BackendUnavailableError(
        f"the Triton float kernels need torch and Triton (>= 3.6): pip install 'gpuquant[gpu]' ({exc})"
    ) from None

__all__ = ["quantize_float", "dequantize_float", "quantize_fp8_dynamic", "FloatPlan", "plan_for"]

FMT = {"fp8_e4m3": 0, "fp8_e5m2": 1, "fp4_e2m1": 2, "nf4": 3}
FMT_E2M1_CT, FMT_E2M1_MO = 4, 5  # E2M1 with compressed-tensors' / ModelOpt's signs (NVFP4)
RULE = {"floor": 0, "rceil": 1, "even": 2}
ROW_TILE = 8192  # longest row one program of float_units_kernel holds
TENSOR_CHUNK = 4096  # elements a program quantizes per tensor
AMAX_BLOCK = 4096
_OUT = {torch.float32: "float32", torch.float16: "float16", torch.bfloat16: "bfloat16"}


def _s(v) -> str:
    return str(getattr(v, "value", v))


@dataclasses.dataclass(frozen=True)
class FloatPlan:
    """How a shape is cut into units for a config: a (rows, row_len) view, units of
    seg_len columns, what the kernels specialise on and the output shapes."""

    kind: str  # "units" | "rows" | "blocks" | "tensor"
    rows: int
    row_len: int
    seg_len: int
    fmt: int
    scale: int
    rule: int
    pack: bool
    high_first: bool
    code_shape: tuple
    scale_shape: tuple
    scale_dtype: object
    block: tuple = (1, 1)
    modelopt: bool = False

    @property
    def units_per_row(self) -> int:
        return -(-self.row_len // self.seg_len)


def plan_for(shape: tuple, cfg) -> FloatPlan:
    """The plan of ``shape`` (a tuple) for ``cfg``; raises on combinations not supported."""
    element, scale_format = _s(cfg.element), _s(cfg.scale_format)
    if element not in FMT:
        raise UnsupportedSchemeError(f"cfg.element {element!r}: the float kernels take {sorted(FMT)}")
    n = math.prod(shape)
    if n == 0:
        raise InvalidShapeError(f"x has shape {shape}: the float kernels need at least one element")
    k = shape[-1] if shape else 1
    rows = n // k
    fmt = FMT[element]
    if element == "nf4":
        bs = int(cfg.group_size)
        if bs < 2 or bs % 2:
            raise InvalidShapeError(f"cfg.group_size {bs}: NF4 takes an even block size")
        return FloatPlan("units", 1, n, bs, fmt, 5, 0, True, True, (-(-n // 2),), (-(-n // bs),),
                         torch.float32)
    if scale_format in ("e8m0", "e4m3"):
        return _block_scaled(shape, cfg, fmt, rows, k, scale_format)
    if element == "fp4_e2m1":
        raise UnsupportedSchemeError("cfg.element 'fp4_e2m1' takes scale_format 'e8m0' (MX) "
                                     "or 'e4m3' (NVFP4)")
    if scale_format != "float32":
        raise UnsupportedSchemeError(f"cfg.scale_format {scale_format!r}: fp8 takes 'float32', 'e8m0'")
    return _fp8_plan(shape, cfg, fmt, rows, k)


def _block_scaled(shape, cfg, fmt, rows, k, scale_format) -> FloatPlan:
    g = int(cfg.group_size)
    if g < 2 or g % 2:
        raise InvalidShapeError(f"cfg.group_size {g}: block-scaled formats take an even block length")
    pack = fmt == 2
    code_shape = tuple(shape[:-1]) + ((-(-k // 2),) if pack else (k,))
    scale_shape = tuple(shape[:-1]) + (-(-k // g),)
    if scale_format == "e8m0":
        rule = _s(cfg.scale_rule)
        if rule not in RULE:
            raise UnsupportedSchemeError(f"cfg.scale_rule {rule!r}: MX takes {sorted(RULE)}")
        return FloatPlan("units", rows, k, g, fmt, 3, RULE[rule], pack, False, code_shape, scale_shape,
                         torch.uint8)
    if fmt != 2:
        raise UnsupportedSchemeError("scale_format 'e4m3' (NVFP4) takes cfg.element 'fp4_e2m1'")
    conv = _s(getattr(cfg, "global_scale_convention", "compressed_tensors"))
    if conv not in ("compressed_tensors", "modelopt"):
        raise UnsupportedSchemeError(f"cfg.global_scale_convention {conv!r}: "
                                     "takes 'compressed_tensors' or 'modelopt'")
    modelopt = conv == "modelopt"
    return FloatPlan("units", rows, k, g, FMT_E2M1_MO if modelopt else FMT_E2M1_CT, 4, 0, True, False,
                     code_shape, scale_shape, torch.uint8, modelopt=modelopt)


def _fp8_plan(shape, cfg, fmt, rows, k) -> FloatPlan:
    gran = _s(cfg.granularity)
    shape = tuple(shape)
    n = math.prod(shape)
    if gran == "tensor":
        return FloatPlan("tensor", 1, n, min(n, TENSOR_CHUNK), fmt, 0, 0, False, False, shape, (),
                         torch.float32)
    if gran == "token":
        kind = "units" if k <= ROW_TILE else "rows"
        return FloatPlan(kind, rows, k, k, fmt, 0, 0, False, False, shape, shape[:-1], torch.float32)
    if gran == "channel":
        if int(cfg.axis) not in (0, -len(shape)) or not shape:
            raise UnsupportedSchemeError(f"cfg.axis {cfg.axis}: fp8 per channel takes axis 0")
        cols = n // shape[0]
        kind = "units" if cols <= ROW_TILE else "rows"
        return FloatPlan(kind, shape[0], cols, cols, fmt, 0, 0, False, False, shape, shape[:1], torch.float32)
    if gran == "group":
        g = int(cfg.group_size)
        if not 1 <= g <= ROW_TILE:
            raise InvalidShapeError(f"cfg.group_size {g}: fp8 groups take 1 .. {ROW_TILE}")
        return FloatPlan("units", rows, k, g, fmt, 0, 0, False, False, shape,
                         shape[:-1] + (-(-k // g),), torch.float32)
    if gran == "block":
        bn, bk = (int(v) for v in cfg.block_shape)
        if len(shape) != 2 or bn < 1 or bk < 1 or bn * bk > 65536:
            raise InvalidShapeError(f"cfg.block_shape {cfg.block_shape} on shape {shape}: 2-D blocks take "
                                    "a 2-D tensor and at most 65536 elements a block")
        return FloatPlan("blocks", shape[0], k, bk, fmt, 0, 0, False, False, shape,
                         (-(-shape[0] // bn), -(-k // bk)), torch.float32, block=(bn, bk))
    raise UnsupportedSchemeError(f"cfg.granularity {gran!r}: fp8 takes tensor, channel, token, group, block")


def _pow2(n: int) -> int:
    return max(2, triton.next_power_of_2(max(1, n)))


def _units_launch(plan: FloatPlan, x, codes, scale, g_amax, gs, tensor: bool) -> None:
    n_units = plan.rows * plan.units_per_row
    block_l = _pow2(plan.seg_len)
    block_u = max(1, min(_pow2(n_units), 4096 // block_l))
    stride_q = -(-plan.row_len // 2) if plan.pack else plan.row_len
    launch(_fq.float_units_kernel, (triton.cdiv(n_units, block_u),),
           x, codes, scale, g_amax, gs, n_units, plan.units_per_row, plan.seg_len, plan.row_len, stride_q,
           num_warps=max(1, min(8, block_u * block_l // 256)),
           FMT=plan.fmt, SCALE=plan.scale, RULE=plan.rule, MODELOPT=plan.modelopt, PACK=plan.pack,
           HIGH_FIRST=plan.high_first, TENSOR=tensor,
           FLAT=plan.row_len % block_l == 0 and plan.seg_len == block_l, BLOCK_U=block_u, BLOCK_L=block_l)


def _amax(x, n: int):
    g_amax = torch.zeros(1, dtype=torch.int32, device=x.device)
    launch(_fq.amax_kernel, (triton.cdiv(n, AMAX_BLOCK),), x, g_amax, n, BLOCK=AMAX_BLOCK)
    return g_amax


def _input(x):
    if not isinstance(x, torch.Tensor):
        raise InvalidDtypeError(f"x is a {type(x).__name__}: the Triton float kernels take a torch tensor")
    if x.dtype not in (torch.float16, torch.bfloat16, torch.float32, torch.float64):
        raise InvalidDtypeError(f"x has dtype {x.dtype}: takes float16, bfloat16, float32 or float64")
    return x.contiguous()


def quantize_float(x, cfg):
    """(codes, scale, global_scale or None) of x (a torch tensor) for a float-format cfg; NF4
    with double_quant: (codes, absmax codes, (nested_absmax, nested_offset)) (nested.py)."""
    x = _input(x)
    plan = plan_for(tuple(x.shape), cfg)
    if x.dtype == torch.float64:
        x = x.to(torch.float32)  # rounded once, as the reference widens: the kernels read float32
    codes = torch.empty(plan.code_shape, dtype=torch.uint8, device=x.device)
    scale = torch.empty(plan.scale_shape, dtype=plan.scale_dtype, device=x.device)
    gs = None
    if plan.kind == "tensor":
        _units_launch(plan, x, codes, scale, _amax(x, x.numel()), scale, True)
    elif plan.scale == 4:  # NVFP4: the tensor amax, then the fused blocks
        gs = torch.empty((), dtype=torch.float32, device=x.device)
        _units_launch(plan, x, codes, scale, _amax(x, x.numel()), gs, False)
    elif plan.kind == "units":
        _units_launch(plan, x, codes, scale, scale, scale, False)
    elif plan.kind == "rows":
        launch(_fq.float_rows_kernel, (plan.rows,), x, codes, scale, plan.row_len, num_warps=8,
               FMT=plan.fmt, SCALE=plan.scale, BLOCK_L=4096)
    else:
        bn, bk = plan.block
        nb = plan.scale_shape
        launch(_fq.float_blocks_kernel, (nb[0] * nb[1],), x, codes, scale, plan.rows, plan.row_len, bn, bk,
               nb[1], num_warps=16 if bn * bk >= 16384 else 8 if bn * bk >= 8192 else 4, FMT=plan.fmt,
               BLOCK_N=_pow2(bn), BLOCK_K=_pow2(bk))
    if getattr(cfg, "double_quant", False):
        from .nested import nest

        q, nested, offset = nest(scale)
        return codes, q, (nested, offset)
    return codes, scale, gs


def quantize_fp8_dynamic(x, granularity: str = "token", group_size: int = 128):
    """vLLM's dynamic FP8 e4m3 activation quantizer: (codes uint8, scale float32).

    "token": one scale a row of the last axis, s = max(amax / 448, 1 / (448 * 512));
    "group": one a run of group_size along it, s = max(amax, 1e-10) / 448 (per token group).
    Codes are clamp(x / s, +/-448) rounded to nearest even, scale shape x.shape[:-1] (+ groups).
    """
    x = _input(x)
    if x.dtype == torch.float64:
        x = x.to(torch.float32)
    if granularity not in ("token", "group"):
        raise UnsupportedSchemeError(f"granularity {granularity!r}: takes 'token' or 'group'")
    if x.ndim == 0 or x.numel() == 0:
        raise InvalidShapeError(f"x has shape {tuple(x.shape)}: takes a non-empty tensor of rank >= 1")
    shape, k = tuple(x.shape), x.shape[-1]
    rows = x.numel() // k
    g = k if granularity == "token" else int(group_size)
    if not 1 <= g <= ROW_TILE:
        raise InvalidShapeError(f"group_size {g} (or the row length): takes 1 .. {ROW_TILE}")
    scale_shape = shape[:-1] if granularity == "token" else shape[:-1] + (-(-k // g),)
    plan = FloatPlan("units", rows, k, g, 0, 1 if granularity == "token" else 2, 0, False, False, shape,
                     scale_shape, torch.float32)
    codes = torch.empty(shape, dtype=torch.uint8, device=x.device)
    scale = torch.empty(scale_shape, dtype=torch.float32, device=x.device)
    _units_launch(plan, x, codes, scale, scale, scale, False)
    return codes, scale


def dequantize_float(codes, scale, global_scale, cfg, shape, dtype=None):
    """x' = value(codes) * scale, in ``dtype`` (float32 default, float16, bfloat16)."""
    dtype = torch.float32 if dtype is None else dtype
    if getattr(cfg, "double_quant", False):  # the absmax first, from their codes (nested.py)
        from .nested import unnest

        scale, global_scale = unnest(scale, *global_scale), None
    if dtype not in _OUT:
        raise InvalidDtypeError(f"dtype {dtype}: dequantize_float writes float32, float16 or bfloat16")
    shape = tuple(shape)
    plan = plan_for(shape, cfg)
    if tuple(codes.shape) != plan.code_shape or tuple(scale.shape) != plan.scale_shape:
        raise InvalidShapeError(f"codes {tuple(codes.shape)} / scale {tuple(scale.shape)} do not fit shape "
                                f"{shape}: expected {plan.code_shape} / {plan.scale_shape}")
    if codes.dtype != torch.uint8 or scale.dtype != plan.scale_dtype:
        raise InvalidDtypeError(f"codes {codes.dtype} / scale {scale.dtype}: this format stores uint8 codes "
                                f"and {plan.scale_dtype} scales")
    if plan.scale == 4 and global_scale is None:
        raise InvalidShapeError("global_scale is None: NVFP4 needs the tensor's global scale")
    y = torch.empty(shape, dtype=dtype, device=codes.device)
    bf16 = dtype == torch.bfloat16
    out = y.view(torch.int16) if bf16 else y
    rows, cols, units = plan.rows, plan.row_len, 0
    bn, bk = plan.block
    if plan.kind == "blocks":  # units of a constant shape: constexpr divisions
        units, row_div, upr, seg = 3, bn, plan.units_per_row, bk
    elif plan.kind == "tensor":  # one scale
        units, row_div, upr, seg = 2, 1, 1, cols
    elif plan.kind != "blocks" and cols % plan.seg_len == 0:  # flat units, viewed as rows
        units, rows, cols = 1, rows * plan.units_per_row, plan.seg_len
        row_div, upr, seg = 1, 1, cols
    else:
        row_div, upr, seg = 1, plan.units_per_row, plan.seg_len
    stride_q = -(-cols // 2) if plan.pack else cols
    block_c = min(_pow2(cols), 1024)
    block_r = min(_pow2(rows), max(1, 4096 // block_c)) if rows > 1 else 1
    col_tiles = triton.cdiv(cols, block_c)
    gs = global_scale.reshape(1) if global_scale is not None else scale
    launch(_fq.float_dequant_kernel, (triton.cdiv(rows, block_r) * col_tiles,),
           codes.contiguous(), out, scale.contiguous(), gs, rows, cols, stride_q, row_div, upr, seg,
           col_tiles, num_warps=8 if plan.pack else 4, FMT=plan.fmt, SCALE=plan.scale, MODELOPT=plan.modelopt,
           PACKED=plan.pack, HIGH_FIRST=plan.high_first, BF16=bf16, UNITS=units,
           EVEN_C=units == 1 and cols == block_c, BN=bn, BK=bk, BLOCK_R=block_r, BLOCK_C=block_c)
    return y
