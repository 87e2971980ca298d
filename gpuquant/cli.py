"""The ``gpuquant`` command: quantize, dequantize and inspect safetensors checkpoints.

Exit codes: 0 success, 2 bad usage or input, 1 internal failure. Errors print
one line on stderr naming the file and the problem; GPUQUANT_DEBUG=1 shows
the traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from .errors import QuantizationError

__all__ = ["main"]


def _gb(n: float) -> str:
    return f"{n / 1e9:.3f} GB"


def cmd_quantize(args: argparse.Namespace) -> int:
    from .commands import run_quantize
    from .config import Percentile

    if args.calibration == "percentile":
        args.calibration_value = Percentile(*args.percentile) if args.percentile else Percentile()
    else:
        if args.percentile:
            raise QuantizationError("--percentile needs --calibration percentile")
        args.calibration_value = args.calibration
    stats = run_quantize(args)
    for glob in stats["unmatched_globs"]:
        print(f"gpuquant: warning: {glob!r} matches no tensor in {args.input}", file=sys.stderr)
    if not args.quiet:
        ratio = stats["bytes_in"] / stats["bytes_out"] if stats["bytes_out"] else float("nan")
        write_s = stats["seconds"] - stats["read_s"] - stats["compute_s"]
        print(f"quantized {stats['quantized']} tensor(s), kept {stats['kept']}; "
              f"{_gb(stats['bytes_in'])} -> {_gb(stats['bytes_out'])} ({ratio:.2f}x) in "
              f"{stats['seconds']:.2f} s (read {stats['read_s']:.2f} s, quantize "
              f"{stats['compute_s']:.2f} s, write {write_s:.2f} s) -> {args.output}")
    return 0


def cmd_dequantize(args: argparse.Namespace) -> int:
    from .commands import run_dequantize

    stats = run_dequantize(args)
    if not args.quiet:
        print(f"dequantized {stats['dequantized']} tensor(s), kept {stats['kept']} -> "
              f"{args.output}")
    return 0


def cmd_inspect(args: argparse.Namespace) -> int:
    from .commands import format_inspect, run_inspect

    report = run_inspect(args)
    if args.json:
        print(json.dumps(report, indent=2, default=str))
    else:
        print(format_inspect(report))
    return 0


def _best_backend() -> tuple[str, object]:
    """("triton", to_device) when a GPU works through CuPy or torch, else ("numpy", None)."""
    try:
        from .backends.triton import device_converter

        convert = device_converter()
        if convert is not None:
            return "triton", convert
    except Exception:  # noqa: BLE001 - any GPU failure means the CPU path
        pass
    return "numpy", None


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import format_table, run_demo

    backend, to_device = ("numpy", None) if args.device == "cpu" else _best_backend()
    if args.device == "cuda" and backend != "triton":
        raise QuantizationError("--device cuda: no working GPU (needs CuPy or torch with CUDA, "
                                "and Triton: pip install 'gpuquant[gpu]')")
    print(f"gpuquant demo: synthetic transformer weights with outlier channels, backend={backend}")
    print(format_table(run_demo(backend=backend, seed=args.seed, to_device=to_device)))
    if args.plot:
        try:
            from .demo import plot_error_vs_bits
        except ImportError as exc:
            print(f"gpuquant: warning: no plot ({exc}); pip install matplotlib", file=sys.stderr)
        else:
            print(f"wrote {plot_error_vs_bits(args.plot, seed=args.seed)}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gpuquant", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    q = sub.add_parser("quantize", help="quantize a safetensors checkpoint (file or shards)")
    q.add_argument("input", help=".safetensors file, folder of shards, or index .json")
    q.add_argument("-o", "--output", required=True, help="output file (folder if sharded)")
    q.add_argument("--scheme", choices=("int4", "int8", "int16"), default="int8")
    q.add_argument("--granularity", choices=("tensor", "channel", "group"), default="channel")
    q.add_argument("--group-size", type=int, default=128)
    q.add_argument("--axis", type=int, default=0, help="channel axis (default 0)")
    sym = q.add_mutually_exclusive_group()
    sym.add_argument("--symmetric", dest="symmetric", action="store_true", default=True)
    sym.add_argument("--asymmetric", dest="symmetric", action="store_false")
    q.add_argument("--calibration", choices=("minmax", "percentile", "entropy", "mse"),
                   default="minmax")
    q.add_argument("--percentile", nargs=2, type=float, metavar=("LO", "HI"))
    q.add_argument("--include", nargs="+", metavar="GLOB", help="quantize only matching names")
    q.add_argument("--exclude", nargs="+", metavar="GLOB", help="never quantize these names")
    q.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    q.add_argument("--force", action="store_true", help="replace an existing output")
    q.add_argument("--quiet", action="store_true")
    q.set_defaults(func=cmd_quantize)

    d = sub.add_parser("dequantize", help="write a plain checkpoint from a quantized one")
    d.add_argument("input")
    d.add_argument("-o", "--output", required=True)
    d.add_argument("--dtype", choices=("float16", "bfloat16", "float32"),
                   help="default: each tensor's original dtype")
    d.add_argument("--force", action="store_true")
    d.add_argument("--quiet", action="store_true")
    d.set_defaults(func=cmd_dequantize)

    i = sub.add_parser("inspect", help="table of tensors, bytes and (with --reference) errors")
    i.add_argument("input")
    i.add_argument("--reference", help="the original checkpoint, for SQNR and max abs error")
    i.add_argument("--json", action="store_true")
    i.set_defaults(func=cmd_inspect)

    demo = sub.add_parser("demo", help="quantize embedded synthetic weights with every preset")
    demo.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--plot", default="gpuquant-demo.png",
                      help="PNG of error against bits (default %(default)s; '' for none)")
    demo.set_defaults(func=cmd_demo)
    # export (gpuquant/export/cli.py): adds `export`, `quantize --format gguf-q8_0|gguf-q4_0`, and
    # `inspect` of GGUF files and compressed-tensors folders. Keep these three lines together.
    from .export.cli import add_parsers as add_export_parsers
    add_export_parsers(sub, quantize=q, inspect=i)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except QuantizationError as exc:
        if os.environ.get("GPUQUANT_DEBUG") == "1":
            raise
        print(f"gpuquant: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except OSError as exc:
        if os.environ.get("GPUQUANT_DEBUG") == "1":
            raise
        print(f"gpuquant: error: {exc.filename or ''}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # noqa: BLE001
        if os.environ.get("GPUQUANT_DEBUG") == "1":
            raise
        print(f"gpuquant: internal error: {type(exc).__name__}: {exc} "
              "(GPUQUANT_DEBUG=1 shows the traceback)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
