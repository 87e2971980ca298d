"""The export commands of ``gpuquant``: ``export``, ``quantize --format gguf-*``, ``inspect``.

gpuquant/cli.py calls :func:`add_parsers` once with its subparsers and its
``quantize`` and ``inspect`` parsers; this module adds the ``export``
command and wraps the other two, so that a GGUF file or a compressed-tensors
folder is handled here and everything else as before.
"""

from __future__ import annotations

import argparse
import json
import math

from ..errors import QuantizationError
from .formats import add_scale_rule, scale_rule_of

__all__ = ["add_parsers", "cmd_export", "json_safe", "workers_arg", "world_size"]

FORMATS = ("gpuquant", "gguf-q8_0", "gguf-q4_0", "gguf-mxfp4")
# quantize options that GGUF output does not use: its blocks fix scheme, granularity and range
NOT_GGUF = ("scheme", "granularity", "group_size", "axis", "symmetric", "calibration",
            "percentile", "ignore_nonfinite", "scale_rule", "block_shape")
_UNSET = object()
FLOAT_SCHEMES = ("fp8", "nvfp4", "mxfp4")  # compressed-tensors float-quantized (export/ctensors_float.py)


def given_options(parser: argparse.ArgumentParser, argv: list[str], dests) -> list[str]:
    """The option strings among ``dests`` that ``argv`` (the command's own arguments) sets,
    even to their default value."""
    seen = argparse.Namespace(**{d: _UNSET for d in dests})
    parser.parse_known_args(argv, seen)
    names = {d: "/".join(o for a in parser._actions if a.dest == d
                         for o in a.option_strings if o.startswith("--")) for d in dests}
    return [names[d] for d in dests if getattr(seen, d) is not _UNSET]


def _calibration(args: argparse.Namespace):
    from ..config import Percentile

    if args.calibration == "percentile":
        return Percentile(*args.percentile) if args.percentile else Percentile()
    if args.percentile:
        raise QuantizationError("--percentile needs --calibration percentile")
    return args.calibration


def cmd_export(args: argparse.Namespace) -> int:
    args.scheme = args.scheme or ("fp8" if args.format == "deepseek" else "int4")
    if args.scheme in FLOAT_SCHEMES or args.format == "deepseek":
        options = _float_options(args)
    else:
        granularity = args.granularity or "group"
        if args.group_size is not None and granularity != "group":
            raise QuantizationError("--group-size needs --granularity group")
        options = _int_options(args, granularity)
    if args.method != "rtn":  # HQQ / GPTQ: the model in memory (gpuquant/model/cli.py)
        if args.scheme in FLOAT_SCHEMES or args.format != "compressed-tensors":
            raise QuantizationError(f"--method {args.method} takes --scheme int4 or int8 "
                                    "(compressed-tensors)")
        from ..model.cli import export_with_method

        stats = export_with_method(args, options)
        if not args.quiet:
            print(f"{stats['report']}\nexported {stats['quantized']} Linear weight(s) "
                  f"({args.method}) as {_kind(args, options)} in "
                  f"{stats['seconds']:.2f} s -> {args.output}")
        return 0
    stats = _export(args, options)
    if stats is not None and not args.quiet:
        print(f"exported {stats['quantized']} Linear weight(s) as {_kind(args, options)} "
              f"(scales {stats['scale_dtype']}), kept "
              f"{stats['kept']} tensor(s); {stats['bytes_in'] / 1e9:.3f} GB -> "
              f"{stats['bytes_out'] / 1e9:.3f} GB in {stats['seconds']:.2f} s -> {args.output}")
    return 0


def _kind(args: argparse.Namespace, options) -> str:
    """What the summary line calls the written folder."""
    if args.format == "deepseek":
        return "DeepSeek FP8 (quant_method fp8, 128x128 blocks)"
    if args.scheme in FLOAT_SCHEMES:
        return f"compressed-tensors float-quantized {args.scheme}"
    acts = f" + dynamic {options.activations} activations" if options.activations else ""
    return f"compressed-tensors {options.format} {args.scheme}{acts}"


def _float_options(args: argparse.Namespace):
    from ..export.ctensors_float import FloatOptions

    used = [o for o, v in (("--group-size", args.group_size), ("--asymmetric", args.asymmetric),
                           ("--calibration", args.calibration != "minmax"),
                           ("--ignore-nonfinite", args.ignore_nonfinite),
                           ("--activations", args.activations)) if v]
    if used:
        raise QuantizationError(f"--scheme {args.scheme}: leave out {', '.join(used)} (FP8 is "
                                "symmetric min/max with dynamic FP8 activations; "
                                "--granularity tensor|channel|block)")
    if args.scale_rule is not None:
        raise QuantizationError(f"--scale-rule applies to export --scheme int4 and int8; --scheme "
                                f"{args.scheme} has compressed-tensors' own scales: leave it out")
    if args.format == "deepseek":
        return _deepseek_options(args)
    if args.scheme != "fp8" and args.granularity is not None:
        raise QuantizationError(f"--scheme {args.scheme}: leave out --granularity (its blocks "
                                "fix it: NVFP4 16, MXFP4 32 values along a row)")
    return FloatOptions(scheme=args.scheme, granularity=args.granularity or "channel",
                        scale_dtype=None if args.scale_dtype == "model" else args.scale_dtype,
                        ignore=tuple(args.ignore), targets=args.targets)


def _deepseek_options(args: argparse.Namespace):
    from ..export.deepseek_fp8 import DeepSeekOptions

    if args.scheme != "fp8" or args.granularity not in (None, "block"):
        raise QuantizationError(f"--format deepseek: FP8 in 128x128 blocks; leave out --scheme "
                                f"{args.scheme} / --granularity {args.granularity} (or pass "
                                "--scheme fp8 --granularity block)")
    if args.scale_dtype not in ("model", "float32"):
        raise QuantizationError(f"--format deepseek stores weight_scale_inv in float32; leave "
                                f"out --scale-dtype {args.scale_dtype}")
    return DeepSeekOptions(ignore=tuple(args.ignore), targets=args.targets)


def _int_options(args: argparse.Namespace, granularity: str):
    from ..export.ctensors import PackOptions

    return PackOptions(scheme=args.scheme, granularity=granularity,
                          group_size=128 if args.group_size is None else args.group_size,
                          symmetric=not args.asymmetric,
                          calibration=_calibration(args),
                          scale_dtype=None if args.scale_dtype == "model" else args.scale_dtype,
                          ignore=tuple(args.ignore), targets=args.targets,
                          ignore_nonfinite=args.ignore_nonfinite, activations=args.activations,
                          scale_rule=scale_rule_of(args, integer=True) or "max")


def _export(args: argparse.Namespace, options):
    """One process, or this rank of torchrun / --workers (None but on rank 0)."""
    from ..export.hf_folder import compressed_tensors, export_folder, prepare_export

    world = world_size()
    if args.workers == 1 and world == 1:
        return compressed_tensors(args.model_dir, args.output, options, force=args.force,
                                  device=args.device)
    from ..checkpoint.job import launch_or_join, reporting_peer_failure

    # every rank plans alike (and fails alike on bad input) before it joins the process
    # group: transformers building its meta model after gloo started made ~1 exit in 8 abort
    prepared = prepare_export(args.model_dir, args.output, args.force, options) \
        if world > 1 else None
    with reporting_peer_failure():
        joined = launch_or_join(args, args.argv)
        if joined is None:  # the launcher of --workers: rank 0 reported
            return None
        to_device, team = joined
        try:
            stats = export_folder(args.model_dir, args.output, options, args.force, to_device,
                                  team, prepared)
        finally:
            team.close()
    return stats if team.rank == 0 else None


def world_size() -> int:
    """WORLD_SIZE (set by torchrun), 1 when unset; a bad value is refused."""
    from ..core.environ import env_int

    return env_int("WORLD_SIZE", 1, 1, "the processes of a torchrun job")


def json_safe(value):
    """Infinite SQNR (no error at all) as null: inspect's --json output stays strict JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [json_safe(v) for v in value]
    return value


def workers_arg(text: str) -> int:
    """argparse type of --workers (export's and quantize's): processes, 1 or more."""
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: give a number of processes, 1 or more")
    return int(text)


def _add_export(sub, formatter) -> None:
    e = sub.add_parser("export", help="write a Hugging Face model folder as compressed-tensors "
                                      "pack-quantized (vLLM, transformers)",
                       formatter_class=formatter)
    e.add_argument("model_dir", help="folder with config.json and safetensors (sharded or not)")
    e.add_argument("-o", "--output", required=True, help="the new model folder")
    e.add_argument("--scheme", choices=("int4", "int8", *FLOAT_SCHEMES),
                   help="int4/int8: pack-quantized; fp8: float-quantized E4M3 (FP8_DYNAMIC); "
                        "nvfp4, mxfp4 (default: int4)")
    e.add_argument("--activations", choices=("int8", "fp8"),
                   help="int4/int8: add dynamic per-token input activations and store the "
                        "weights int-quantized: --scheme int8 --granularity channel "
                        "--activations int8 is W8A8, --scheme int4 --activations fp8 W4AFP8")
    e.add_argument("--format", choices=("compressed-tensors", "deepseek"),
                   default="compressed-tensors",
                   help="deepseek: FP8 128x128 blocks with weight_scale_inv and quant_method "
                        "fp8 (DeepSeek-V3's layout; transformers' FineGrainedFP8); its scheme "
                        "is fp8, the default there")
    e.add_argument("--granularity", choices=("group", "channel", "tensor", "block"),
                   help="int4/int8: group or channel (default: group); fp8: channel (the "
                        "default there), tensor, or block (128x128)")
    e.add_argument("--group-size", type=int,
                   help="values per group; only with --granularity group (default 128 there)")
    e.add_argument("--asymmetric", action="store_true",
                   help="unsigned codes and zero points (load with CompressedTensorsConfig("
                        "dequantize=True))")
    add_scale_rule(e, " (the min/max QuantizationModifier's bytes)")
    e.add_argument("--ignore", nargs="*", default=["lm_head"], metavar="MODULE",
                   help="modules left unquantized: names, or re:PATTERN")
    e.add_argument("--targets", metavar="REGEX",
                   help="module names to quantize, instead of the Linear modules transformers "
                        "finds from config.json")
    e.add_argument("--calibration", choices=("minmax", "percentile", "entropy", "mse"),
                   default="minmax", help="how each range is chosen")
    e.add_argument("--percentile", nargs=2, type=float, metavar=("LO", "HI"),
                   help="bounds of --calibration percentile (default 0.01 99.99)")
    e.add_argument("--method", choices=("rtn", "hqq", "gptq"), default="rtn",
                   help="rtn: round-to-nearest, streamed; hqq (no data) and gptq load the model")
    e.add_argument("--calibration-data", metavar="FILE",
                   help="--method gptq: text, one sample a line, read with the model's tokenizer")
    e.add_argument("--samples", type=int, default=128, metavar="N",
                   help="--method gptq: calibration lines used (default 128)")
    e.add_argument("--seq-len", type=int, default=512, metavar="L",
                   help="--method gptq: tokens per sample at most (default 512)")
    e.add_argument("--scale-dtype", choices=("model", "float16", "bfloat16", "float32"),
                   default="model", help="dtype of the stored scales; model: the model's, "
                                         "as compressed-tensors does")
    e.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                   help="auto uses a GPU when one works (CuPy or torch, and Triton)")
    e.add_argument("--workers", type=workers_arg, default=1, metavar="N",
                   help="processes on this machine (torch.distributed), each writing a share "
                        "of the shards; under torchrun leave it out")
    e.add_argument("--ignore-nonfinite", action="store_true",
                   help="calibrate over finite values instead of refusing NaN/Inf")
    e.add_argument("--force", action="store_true", help="replace the files of an existing output")
    e.add_argument("--quiet", action="store_true", help="no summary")
    e.set_defaults(func=cmd_export)


def _wrap_quantize(q: argparse.ArgumentParser) -> None:
    q.add_argument("--format", choices=FORMATS, default="gpuquant",
                   help="gpuquant's layout, or a .gguf file of Q8_0 / Q4_0 / MXFP4 blocks "
                        "(byte for byte gguf.quants.quantize)")
    plain = q.get_default("func")

    def run(args: argparse.Namespace) -> int:
        if args.format == "gpuquant":
            if args.output.lower().endswith(".gguf"):
                raise QuantizationError(f"{args.output}: a .gguf name needs --format gguf-q8_0, "
                                        "gguf-q4_0 or gguf-mxfp4 (the default writes gpuquant "
                                        "safetensors)")
            return plain(args)
        if args.shard_size is not None or args.workers > 1:
            raise QuantizationError(f"--format {args.format}: GGUF output is one file; leave "
                                    "out --shard-size and --workers")
        unused = given_options(q, args.argv[1:], NOT_GGUF)
        if unused:
            raise QuantizationError(f"--format {args.format}: leave out {', '.join(unused)}: "
                                    "GGUF blocks fix them (Q8_0 int8, Q4_0 int4, MXFP4 E2M1 "
                                    "with ggml's E8M0 floor rule; symmetric, one scale per 32 "
                                    "values, from the block's largest |x|)")
        from ..export.gguf_file import gguf

        stats = gguf(args.input, args.output, args.format.split("-")[1], force=args.force,
                     include=args.include, exclude=args.exclude,
                     device="cpu" if args.device == "cpu" else args.device)
        if not args.quiet:
            print(f"wrote {stats['quantized']} {args.format} tensor(s) and {stats['kept']} "
                  f"unquantized; {stats['bytes_in'] / 1e9:.3f} GB -> "
                  f"{stats['bytes_out'] / 1e9:.3f} GB in {stats['seconds']:.2f} s -> {args.output}")
        return 0

    q.set_defaults(func=run)


def _wrap_inspect(i: argparse.ArgumentParser) -> None:
    plain = i.get_default("func")

    def run(args: argparse.Namespace) -> int:
        from ..export.inspect import format_report, inspect_export

        report = inspect_export(args.input, args.reference)
        if report is None:
            return plain(args)
        print(json.dumps(json_safe(report), indent=2, default=str, allow_nan=False) if args.json
              else format_report(report))
        return 0

    i.set_defaults(func=run)


def add_parsers(sub, quantize: argparse.ArgumentParser | None = None,
                inspect: argparse.ArgumentParser | None = None) -> None:
    """Add ``export``; give ``quantize`` its --format and ``inspect`` the two export formats."""
    _add_export(sub, quantize.formatter_class if quantize is not None else argparse.HelpFormatter)
    if quantize is not None:
        _wrap_quantize(quantize)
    if inspect is not None:
        _wrap_inspect(inspect)
