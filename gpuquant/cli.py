"""The ``gpuquant`` command.

Exit codes: 0 success, 2 bad usage or input (a gpuquant error), 1 internal
failure. Errors print one line on stderr; GPUQUANT_DEBUG=1 shows tracebacks.
"""

from __future__ import annotations

import argparse
import os
import sys

from .errors import QuantizationError

__all__ = ["main"]


def _best_backend() -> tuple[str, object]:
    """("triton", to_device) when a GPU works through CuPy or torch, else ("numpy", None)."""
    try:
        from .backends import available

        if "triton" in available():
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
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gpuquant", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="quantize embedded synthetic weights with every preset")
    demo.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    demo.add_argument("--seed", type=int, default=0)
    demo.set_defaults(func=cmd_demo)
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
    except Exception as exc:  # noqa: BLE001
        if os.environ.get("GPUQUANT_DEBUG") == "1":
            raise
        print(f"gpuquant: internal error: {type(exc).__name__}: {exc} "
              "(GPUQUANT_DEBUG=1 shows the traceback)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
