"""Record the kernel launches of gpuquant's standard calls, for the static SASS model.

Modelled on ../shared/sass/record.py (same command line, same launches.json), with more
calls: what record.py records (int4 g128 symmetric quantize and its dequantize, int8
per-channel and per-token quantize) plus asymmetric int4 g128, the int8 dequantizes, the
min/max passes of the calibrations (per group, per channel on axis 0 and on the last
axis), and the float formats' quantize and dequantize (q_/dq_ + FLOAT_CALLS: FP8 per
tensor, channel, token, 1x128 group and 128x128 block, MXFP8, MXFP4, NVFP4, NF4). x is
8192x8192 float16 (SIDE); nothing runs: gpuquant's launch recorder takes the launches of CPU
tensors under TRITON_INTERPRET=1, the plan a CUDA tensor of the shape gets.

    python bench/sass_calls.py [--repo .] [--out DIR] [--calls name,...]
    python bench/sass_model.py [--triton-venv v36] ...   (these calls through predict.py)

Each launch also carries ``trips``: the iterations of the kernel's loop (min/max kernels
loop over a unit's chunks), which the SASS model multiplies the loop body by.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

SIDE = 8192


def calls(gq, torch, side: int = SIDE) -> dict:
    """name -> (description, role, function making the launches to record, input)."""
    from gpuquant.backends.triton.backend import TritonBackend
    from gpuquant.backends.triton.launch import recording
    from gpuquant.core.layout import Layout

    x = torch.empty((side, side), dtype=torch.float16)
    shape = f"x {side}x{side} float16"
    int4_sym = gq.QuantConfig.int4_per_group(128, symmetric=True)
    int4_asym = gq.QuantConfig.int4_per_group(128, symmetric=False)
    int8_ch = gq.QuantConfig.int8_per_channel()
    int8_tok = gq.QuantConfig(scheme="int8", granularity="token")

    def quantize(cfg):
        return lambda: gq.quantize(x, cfg, backend="triton")

    def dequantize(cfg):
        def run():
            with recording():  # the quantized tensor (its launch is not kept)
                qt = gq.quantize(x, cfg, backend="triton")
            qt.dequantize(backend="triton" if cfg.is_float else None)
        return run

    def minmax(cfg):
        return lambda: TritonBackend().minmax(x, Layout.of(tuple(x.shape), cfg), defer=True)

    ch_last = gq.QuantConfig.int8_per_channel(axis=-1)
    return {
        "q_int4_g128_sym": (f"gq.quantize(x, QuantConfig.int4_per_group(128, symmetric=True)), {shape}",
                            "quantize", quantize(int4_sym), x),
        "dq_int4_g128_sym": ("qt.dequantize() of that int4 g128 sym result -> float16", "dequantize",
                             dequantize(int4_sym), x),
        "q_int8_channel": (f"gq.quantize(x, QuantConfig.int8_per_channel()), {shape}", "quantize",
                           quantize(int8_ch), x),
        "q_int8_token": (f"gq.quantize(x, QuantConfig(scheme='int8', granularity='token')), {shape}",
                         "quantize", quantize(int8_tok), x),
        "q_int4_g128_asym": (f"gq.quantize(x, QuantConfig.int4_per_group(128, symmetric=False)), {shape}",
                             "quantize", quantize(int4_asym), x),
        "dq_int4_g128_asym": ("qt.dequantize() of the int4 g128 asym result -> float16", "dequantize",
                              dequantize(int4_asym), x),
        "dq_int8_channel": ("qt.dequantize() of the int8 per-channel result -> float16", "dequantize",
                            dequantize(int8_ch), x),
        "dq_int8_token": ("qt.dequantize() of the int8 per-token result -> float16", "dequantize",
                          dequantize(int8_tok), x),
        "mm_group128": (f"TritonBackend().minmax(x, int4 g128 layout), {shape}", "minmax",
                        minmax(int4_sym), x),
        "mm_channel": (f"TritonBackend().minmax(x, int8 per-channel (axis 0) layout), {shape}", "minmax",
                       minmax(int8_ch), x),
        "mm_channel_last": (f"TritonBackend().minmax(x, int8 per-channel axis=-1 layout), {shape}",
                            "minmax", minmax(ch_last), x),
        **float_calls(gq, x, shape, quantize, dequantize),
    }


FLOAT_CALLS = {  # name -> the QuantConfig preset of a float-format call (and its arguments)
    "fp8_tensor": ("fp8_per_tensor", ()), "fp8_channel": ("fp8_per_channel", ()),
    "fp8_token": ("fp8_per_token", ()), "fp8_g128": ("fp8_per_group", (128,)),
    "fp8_block": ("fp8_block", ((128, 128),)), "mxfp8": ("mxfp8", ()), "mxfp4": ("mxfp4", ()),
    "nvfp4": ("nvfp4", ()), "nf4": ("nf4", ()),
}


def float_calls(gq, x, shape: str, quantize, dequantize) -> dict:
    """The float formats' calls: q_NAME (gq.quantize) and dq_NAME (its dequantize), with the
    presets' defaults (e4m3 elements, MX floor rule, NVFP4 of compressed-tensors, NF4 64)."""
    table = {}
    for name, (preset, args) in FLOAT_CALLS.items():
        cfg = getattr(gq.QuantConfig, preset)(*args)
        what = f"QuantConfig.{preset}({', '.join(map(repr, args))})"
        table[f"q_{name}"] = (f"gq.quantize(x, {what}), {shape}", "quantize", quantize(cfg), x)
        table[f"dq_{name}"] = (f"qt.dequantize() of the {what} result -> float16", "dequantize",
                               dequantize(cfg), x)
    return table


def trips(launch) -> int:
    """Iterations of the kernel's loop in one program (1: no loop)."""
    c, a = launch.constexprs, dict(zip(launch.kernel.arg_names, launch.args))
    if launch.name == "segment_minmax_kernel":
        return -(-int(a["seg_len"]) // c["BLOCK_L"])
    if launch.name == "column_minmax_kernel":
        return -(-int(a["rows_per_split"]) // c["BLOCK_R"])
    return 1


def describe(launch, options) -> dict:
    args, total = [], 0
    for a in launch.args:
        if hasattr(a, "data_ptr"):
            nbytes = a.numel() * a.element_size()
            total += nbytes
            args.append({"tensor": str(a.dtype).replace("torch.", ""), "shape": list(a.shape),
                         "bytes": nbytes})
        else:
            args.append({"int": int(a)})
    return dict(module=launch.kernel.fn.__module__, kernel=launch.name, grid=list(launch.grid),
                num_warps=launch.num_warps, constexprs=dict(launch.constexprs), args=args,
                arg_names=list(launch.kernel.arg_names), options=dict(options), bytes=total,
                trips=trips(launch))


def record(names=None, side: int = SIDE) -> dict:
    """The launches of the calls ``names`` (default: all), as launches.json holds them."""
    import torch

    import gpuquant as gq
    from gpuquant.backends.triton.launch import OPTIONS, recording

    table = calls(gq, torch, side)
    names = list(table) if names is None else names
    unknown = [n for n in names if n not in table]
    if unknown:
        raise SystemExit(f"unknown calls {unknown}; known: {', '.join(table)}")
    result = dict(gpuquant=str(Path(gq.__file__).resolve().parent), torch=torch.__version__, calls=[])
    for name in names:
        what, role, fn, x = table[name]
        with recording() as launches:
            try:
                fn()
            except gq.NonFiniteError:  # not run: a report read after the launch may raise
                pass
        rec = [describe(launch, OPTIONS) for launch in launches]
        result["calls"].append(dict(call=name, role=role, what=what, numel=x.numel(), launches=rec))
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repo", default=".", help="the gpuquant checkout (default: .)")
    ap.add_argument("--out", default=None, help="output folder (default: a new temporary one)")
    ap.add_argument("--calls", default=None, help="comma-separated subset of the calls")
    ap.add_argument("--side", type=int, default=SIDE, help=f"x is side x side (default {SIDE})")
    a = ap.parse_args()
    repo = Path(a.repo).resolve()
    out = Path(a.out or tempfile.mkdtemp(prefix="gpuquant-sass-"))
    out.mkdir(parents=True, exist_ok=True)
    os.environ["TRITON_INTERPRET"] = "1"
    sys.path.insert(0, str(repo))
    result = record(a.calls.split(",") if a.calls else None, a.side)
    result["gpuquant"] = str(Path(result["gpuquant"]).relative_to(repo))
    for call in result["calls"]:
        for d in call["launches"]:
            print(f"{call['call']:18} {d['kernel']:24} grid {d['grid']} warps {d['num_warps']} "
                  f"{d['constexprs']}")
    (out / "launches.json").write_text(json.dumps(result, indent=1))
    print(f"-> {out / 'launches.json'}")


if __name__ == "__main__":
    main()
