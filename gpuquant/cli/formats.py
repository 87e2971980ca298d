"""The float formats on the command line: ``gpuquant quantize --scheme fp8 | fp8-e5m2 |
mxfp8 | mxfp4 | nvfp4 | nf4`` with ``--block-shape``, ``--scale-rule`` (whose values
depend on --scheme: :func:`scale_rule_of`) and ``--double-quant``."""

from __future__ import annotations

import argparse

from ..errors import QuantizationError

__all__ = ["FLOAT_SCHEMES", "add_float_options", "float_config", "add_scale_rule",
           "scale_rule_of"]

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
    add_scale_rule(q, "; mxfp8/mxfp4: the E8M0 rule, floor (the default, the OCP spec), rceil "
                      "(NVIDIA's and torchao's inference default) or even (compressed-tensors')")
    q.add_argument("--double-quant", action="store_true",
                   help="nf4: code the block absmax in 8 bits too, as bitsandbytes' "
                        "compress_statistics=True (NAME.nested_absmax, NAME.nested_offset)")


_INT_RULES = ("max", "half_range")
_MX_RULES = ("floor", "rceil", "even")


def add_scale_rule(p: argparse.ArgumentParser, more: str = "") -> None:
    """One --scale-rule for every scheme; :func:`scale_rule_of` checks it against --scheme."""
    p.add_argument("--scale-rule", choices=(*_INT_RULES, *_MX_RULES),
                   help="int4/int8/int16 symmetric: max (amax / qmax, the default) or half_range "
                        "(compressed-tensors' and torchao's scale amax / ((qmax - qmin) / 2), and "
                        "compressed-tensors' codes x / scale)" + more)


def scale_rule_of(args: argparse.Namespace, integer: bool) -> str | None:
    """The --scale-rule of an integer (``integer``) or MX scheme; QuantizationError (exit 2,
    one line) for a value the scheme does not take."""
    rule, scheme = args.scale_rule, args.scheme
    accepted = _INT_RULES if integer else _MX_RULES if scheme in ("mxfp8", "mxfp4") else ()
    if rule is not None and rule not in accepted:
        raise QuantizationError(
            f"--scale-rule {rule} does not fit --scheme {scheme}: --scale-rule applies to the "
            "integer schemes (max, half_range) and to mxfp8, mxfp4 (floor, rceil, even)")
    symmetric = getattr(args, "symmetric", not getattr(args, "asymmetric", False))
    if integer and rule == "half_range" and not symmetric:
        raise QuantizationError("--scale-rule half_range is symmetric only: drop --asymmetric")
    return rule


def float_config(args: argparse.Namespace):
    """The QuantConfig of a float --scheme; QuantizationError for options that do not apply."""
    from ..config import QuantConfig

    scheme = args.scheme
    scale_rule_of(args, integer=False)
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
