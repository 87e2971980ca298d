"""The float formats on the command line: ``gpuquant quantize --scheme fp8 | fp8-e5m2 |
mxfp8 | mxfp4 | nvfp4 | nf4`` with ``--block-shape``, ``--scale-rule`` and ``--double-quant``."""

from __future__ import annotations

import argparse

from ..errors import QuantizationError

__all__ = ["FLOAT_SCHEMES", "add_float_options", "float_config"]

FLOAT_SCHEMES = ("fp8", "fp8-e5m2", "mxfp8", "mxfp4", "nvfp4", "nf4")


def _block_shape(text: str) -> tuple[int, int]:
    try:
        dims = tuple(int(t) for t in text.lower().replace("x", ",").split(","))
    except ValueError:
        dims = ()
    if len(dims) != 2 or min(dims) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not two positive integers such as 128,128")
    return dims


def add_float_options(q: argparse.ArgumentParser) -> None:
    q.add_argument("--block-shape", type=_block_shape, metavar="BN,BK",
                   help="fp8 with --granularity block: the 2-D block (default 128,128, "
                        "DeepSeek-V3's weight_scale_inv)")
    q.add_argument("--scale-rule", choices=("floor", "rceil", "even"),
                   help="mxfp8/mxfp4: the E8M0 scale rule (default floor, the OCP spec; rceil "
                        "is NVIDIA's and torchao's inference default; even compressed-tensors')")
    q.add_argument("--double-quant", action="store_true",
                   help="nf4: code the block absmax in 8 bits too, as bitsandbytes' "
                        "compress_statistics=True (NAME.nested_absmax, NAME.nested_offset)")


def float_config(args: argparse.Namespace):
    """The QuantConfig of a float --scheme; QuantizationError for options that do not apply."""
    from ..config import QuantConfig

    scheme = args.scheme
    if args.scale_rule is not None and scheme not in ("mxfp8", "mxfp4"):
        raise QuantizationError("--scale-rule applies to --scheme mxfp8 and mxfp4")
    block = args.granularity == "block"
    if args.block_shape is not None and not (scheme.startswith("fp8") and block):
        raise QuantizationError("--block-shape needs --scheme fp8 (or fp8-e5m2) and "
                                "--granularity block")
    if block and not scheme.startswith("fp8"):
        raise QuantizationError("--granularity block applies to --scheme fp8 and fp8-e5m2")
    if not args.symmetric:
        raise QuantizationError(f"--scheme {scheme} is symmetric: drop --asymmetric")
    common = dict(calibration=args.calibration, ignore_nonfinite=args.ignore_nonfinite)
    if scheme.startswith("fp8"):
        element = "fp8_e5m2" if scheme == "fp8-e5m2" else "fp8_e4m3"
        group = (128 if args.group_size is None else args.group_size) \
            if args.granularity == "group" else None
        return QuantConfig(scheme=element, granularity=args.granularity, axis=args.axis,
                           group_size=group, block_shape=args.block_shape if block else None,
                           **common)
    if scheme == "nvfp4":
        cfg = QuantConfig.nvfp4()
        if args.group_size not in (None, 16):
            raise QuantizationError("--scheme nvfp4 has blocks of 16: drop --group-size")
    elif scheme == "nf4":
        cfg = QuantConfig.nf4(64 if args.group_size is None else args.group_size,
                              double_quant=args.double_quant)
    else:
        rule = args.scale_rule or "floor"
        size = 32 if args.group_size is None else args.group_size
        cfg = QuantConfig.mxfp8(rule, block_size=size) if scheme == "mxfp8" else \
            QuantConfig.mxfp4(rule, block_size=size)
    return cfg.replace(**common)
