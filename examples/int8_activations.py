"""An MLP block with int8 per-token activations and int4 g128 weights, under torch.compile.

    python examples/int8_activations.py [--tokens 32] [--hidden 256] [--inner 512] [--device cuda]

Each linear layer quantizes its input per token to int8 (symmetric:
``x ~= codes * scale[:, None]``), dequantizes its int4 group-128 weight on
the fly and multiplies the codes by it: ``y = (codes @ W.T) * scale[:, None]``.
The block is compiled with ``torch.compile(fullgraph=True)``: the gpuquant
calls become ``torch.ops.gpuquant`` operators in the graph (on a GPU, with
``mode="reduce-overhead"``, the whole block is one CUDA graph). The script
checks the compiled output against the eager one bit for bit and prints the
time of both. It runs on the CPU (the NumPy reference kernels) and on CUDA.
"""

from __future__ import annotations

import argparse
import time

import torch

import gpuquant as gq

WEIGHTS = gq.QuantConfig.int4_per_group(group_size=128)  # symmetric int4 (the default), groups of 128


class Int8MLP:
    """relu(x W_up^T) W_down^T with both products taken on int8 activation codes."""

    def __init__(self, hidden: int, inner: int, dtype: torch.dtype, device: str, seed: int = 0):
        g = torch.Generator(device="cpu").manual_seed(seed)
        w_up = torch.randn(inner, hidden, generator=g) / hidden ** 0.5
        w_down = torch.randn(hidden, inner, generator=g) / inner ** 0.5
        self.up = gq.quantize(w_up.to(device, dtype), WEIGHTS)
        self.down = gq.quantize(w_down.to(device, dtype), WEIGHTS)
        self.activations = gq.DynamicQuantizer("int8", symmetric=True, per_token=True)

    def linear(self, x: torch.Tensor, weight: gq.QuantizedTensor) -> torch.Tensor:
        qx = self.activations(x)  # codes (tokens, k) int8, scale (tokens,) float32
        w = weight.dequantize()  # (n, k) in the weight's dtype, every call
        y = qx.data.to(w.dtype) @ w.T  # int8 codes are exact in float16 and float32
        return (y * qx.scale.unsqueeze(-1)).to(x.dtype)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(torch.relu(self.linear(x, self.up)), self.down)


def timed(fn, x, repeats: int) -> tuple[float, float]:
    """(median, best) seconds per call (CUDA events on a GPU, the host clock on the CPU)."""
    times = []
    for _ in range(repeats):
        if x.is_cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn(x)
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1e3)
        else:
            t0 = time.perf_counter()
            fn(x)
            times.append(time.perf_counter() - t0)
    times.sort()
    return times[len(times) // 2], times[0]


def run(tokens: int = 32, hidden: int = 256, inner: int = 512, repeats: int = 10,
        device: str | None = None) -> dict:
    """Build the block, compile it, check it against eager; the medians in seconds."""
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.float16 if device.startswith("cuda") else torch.float32
    block = Int8MLP(hidden, inner, dtype, device)
    mode = "reduce-overhead" if device.startswith("cuda") else None  # one CUDA graph
    compiled = torch.compile(block.__call__, fullgraph=True, mode=mode)
    x = torch.randn(tokens, hidden, device=device, dtype=dtype)
    with torch.inference_mode():
        want = block(x)
        for _ in range(3):  # compile, then the CUDA graph's warm-up and recording
            got = compiled(x).clone()
        if not torch.equal(got, want):
            raise AssertionError("the compiled block differs from eager")
        x2 = torch.randn_like(x)  # new values, same shape: no recompilation
        if not torch.equal(compiled(x2), block(x2)):
            raise AssertionError("the compiled block differs from eager on new values")
        eager_s, eager_best = timed(block, x, repeats)
        compiled_s, compiled_best = timed(compiled, x, repeats)
    return {"device": device, "eager_s": eager_s, "compiled_s": compiled_s,
            "eager_best_s": eager_best, "compiled_best_s": compiled_best}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--inner", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--device", default=None)
    args = parser.parse_args()
    result = run(args.tokens, args.hidden, args.inner, args.repeats, args.device)
    print(f"device {result['device']}: compiled output equals eager bit for bit")
    print(f"per call, median (best) of {args.repeats}:")
    for name in ("eager", "compiled"):
        print(f"  {name:8s} {result[name + '_s'] * 1e6:10.1f} us "
              f"({result[name + '_best_s'] * 1e6:.1f} us)")


if __name__ == "__main__":
    main()
