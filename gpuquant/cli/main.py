"""The ``gpuquant`` command: quantize, dequantize and inspect safetensors checkpoints.

Exit codes: 0 success (a closed stdout, as in ``gpuquant inspect ... | head``,
is a normal end), 2 bad usage or input, 1 internal failure, 130 on Ctrl-C
and 143 on SIGTERM (the partial output is removed either way). Errors print
one line on stderr naming the file and the problem; GPUQUANT_DEBUG=1 shows
the traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys

from .. import __version__
from ..errors import QuantizationError
from .export import add_parsers as add_export_parsers
from .export import json_safe, workers_arg, world_size
from .formats import FLOAT_SCHEMES, add_float_options, float_config, scale_rule_of

__all__ = ["main", "build_parser"]

QUANTIZE_DESCRIPTION = """\
Quantize the weights of a safetensors checkpoint (one file, a folder of shards, or an index).

Defaults: int8, per channel along axis 0, symmetric, min/max calibration.
The Python API's QuantConfig() is int8 per tensor, symmetric; this command
quantizes checkpoints of weight matrices, so it defaults to one scale per
output channel (axis 0), which costs little and keeps an outlier row from
hurting the others.

Only float tensors (F16, BF16, F32, F64) with 2 or more dimensions are
quantized. Everything else passes through bit for bit, as does any tensor
whose quantized form would be larger than itself (the summary counts them)."""


class HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """Shows each option's default, except where there is none to show."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        hidden = action.default is None or isinstance(action.default, bool) or \
            action.default == argparse.SUPPRESS
        if hidden or "%(default)" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


class Progress:
    """A tqdm bar over tensors with bytes/s, silent off a terminal or with --quiet."""

    def __init__(self, total: int, quiet: bool):
        self.bar = None
        if not quiet and sys.stderr.isatty():
            try:
                from tqdm import tqdm

                self.bar = tqdm(total=total, unit="B", unit_scale=True, file=sys.stderr)
            except ImportError:
                pass

    def set_total(self, total: int) -> None:
        if self.bar is not None:
            self.bar.reset(total=total)

    def step_to(self, name: str, done: int) -> None:
        self.step(name, done - self.bar.n if self.bar is not None else 0)

    def step(self, name: str, nbytes: int) -> None:
        if self.bar is not None:
            self.bar.set_postfix_str(name[-40:])
            self.bar.update(nbytes)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _gb(n: float) -> str:
    return f"{n / 1e9:.3f} GB"


def _quantize_config(args: argparse.Namespace):
    from ..config import Percentile, QuantConfig

    if args.double_quant and args.scheme != "nf4":
        raise QuantizationError("--double-quant applies to --scheme nf4")
    if args.scheme in FLOAT_SCHEMES:
        return float_config(args)
    if args.group_size is not None and args.granularity != "group":
        raise QuantizationError("--group-size needs --granularity group")
    if args.percentile and args.calibration != "percentile":
        raise QuantizationError("--percentile needs --calibration percentile")
    calibration = args.calibration
    if calibration == "percentile":
        calibration = Percentile(*args.percentile) if args.percentile else Percentile()
    group_size = None
    if args.granularity == "group":
        group_size = 128 if args.group_size is None else args.group_size
    return QuantConfig(scheme=args.scheme, granularity=args.granularity, group_size=group_size,
                       axis=args.axis, symmetric=args.symmetric, calibration=calibration,
                       ignore_nonfinite=args.ignore_nonfinite,
                       scale_rule=scale_rule_of(args, integer=True))


def cmd_quantize(args: argparse.Namespace) -> int:
    from ..checkpoint.convert import quantize_checkpoint
    from ..core.devices import converter_for

    config = _quantize_config(args)
    if args.shard_size is not None or args.workers > 1 or world_size() > 1:
        from ..checkpoint.reshard import run_sharded

        stats = run_sharded(args, config, args.argv, lambda quiet: Progress(0, quiet))
        if stats is None:  # not rank 0, or the launcher of --workers: rank 0 reports
            return 0
        args.output += f" ({stats['shards']} shard(s))"
        return _summary(args, stats)
    to_device = converter_for(args.device)
    progress = Progress(_input_bytes(args.input), args.quiet)
    try:
        stats = quantize_checkpoint(args.input, args.output, config, include=args.include,
                                    exclude=args.exclude, to_device=to_device,
                                    force=args.force, step=progress.step)
    finally:
        progress.close()
    return _summary(args, stats)


def _summary(args: argparse.Namespace, stats: dict) -> int:
    for glob in stats["unmatched_globs"]:
        print(f"gpuquant: warning: {glob!r} matches no tensor in {args.input}", file=sys.stderr)
    if not args.quiet:
        ratio = stats["bytes_in"] / stats["bytes_out"] if stats["bytes_out"] else float("nan")
        write_s = stats["seconds"] - stats["read_s"] - stats["compute_s"]
        grew = f" ({stats['grew']} would grow)" if stats["grew"] else ""
        print(f"quantized {stats['quantized']} tensor(s), kept {stats['kept']}{grew}; "
              f"{_gb(stats['bytes_in'])} -> {_gb(stats['bytes_out'])} ({ratio:.2f}x) in "
              f"{stats['seconds']:.2f} s (read {stats['read_s']:.2f} s, quantize "
              f"{stats['compute_s']:.2f} s, write {write_s:.2f} s) -> {args.output}")
    return 0


def _input_bytes(path: str) -> int:
    """Total tensor bytes of a checkpoint, for the progress bar (headers only)."""
    if not sys.stderr.isatty():
        return 0
    from ..checkpoint.index import open_checkpoint

    return sum(f.nbytes(k) for _, f in open_checkpoint(path).files() for k in f.keys())


def cmd_dequantize(args: argparse.Namespace) -> int:
    from ..checkpoint.convert import dequantize_checkpoint

    stats = dequantize_checkpoint(args.input, args.output, args.dtype, args.force)
    if not args.quiet:
        print(f"dequantized {stats['dequantized']} tensor(s), kept {stats['kept']} -> "
              f"{args.output}")
    return 0


def cmd_inspect(args: argparse.Namespace) -> int:
    from ..checkpoint.convert import inspect_checkpoint

    report = inspect_checkpoint(args.input, args.reference)
    if args.json:
        print(json.dumps(json_safe(report), indent=2, allow_nan=False))
    else:
        print(format_inspect(report))
    return 0


def format_inspect(report: dict) -> str:
    """The inspect table: full names, symmetric/asymmetric, a summary line."""
    rows = report["tensors"]
    width = max([len("name")] + [len(r["name"]) for r in rows])
    has_ref = any("sqnr_db" in r or "identical" in r for r in rows)
    head = f"{'name':<{width}} {'shape':<18} {'scheme':<6} {'granularity':<24} {'bytes':>12}"
    if has_ref:
        head += f" {'SQNR dB':>9} {'max abs err':>12}"
    lines = [head, "-" * len(head)]
    for r in rows:
        gran = r["granularity"]
        if r["symmetric"] is not None:
            gran += " sym" if r["symmetric"] else " asym"
        line = (f"{r['name']:<{width}} {'x'.join(map(str, r['shape'])):<18} {r['scheme']:<6} "
                f"{gran:<24} {r['bytes']:>12}")
        if "sqnr_db" in r:
            line += f" {r['sqnr_db']:9.2f} {r['max_abs_err']:12.6f}"
        elif "identical" in r:
            line += f" {'identical' if r['identical'] else 'DIFFERENT':>22}"
        lines.append(line)
    lines.append("-" * len(head))
    summary = (f"total: {len(rows)} tensor(s), {report['quantized']} quantized, "
               f"{report['kept']} kept; {report['total_original_bytes']} bytes -> "
               f"{report['total_bytes']} bytes, compression "
               + ("-" if report["compression_ratio"] is None
                  else f"{report['compression_ratio']:.2f}x"))
    if report["sqnr_min_db"] is not None:
        summary += (f"; SQNR min {report['sqnr_min_db']:.2f} dB, "
                    f"median {report['sqnr_median_db']:.2f} dB")
    lines.append(summary)
    return "\n".join(lines)


def cmd_demo(args: argparse.Namespace) -> int:
    from ..core.devices import converter_for
    from .demo import NOTES, pick_line, run_demo, table_head, table_row

    if not 0 <= args.seed < 2**64:
        raise QuantizationError(f"--seed {args.seed}: give an integer from 0 to 2**64 - 1")
    to_device = converter_for(args.device)
    backend = "numpy" if to_device is None else "triton"
    print(f"gpuquant demo: synthetic transformer weights with outlier channels, backend={backend}; "
          "one row per config as it is measured", flush=True)
    print(table_head(), flush=True)
    rows = run_demo(backend=backend, seed=args.seed, to_device=to_device,
                    on_row=lambda row: print(table_row(row), flush=True))
    print("\n".join(NOTES))
    print(pick_line(rows))
    if args.plot:
        from .demo import plot_error_vs_bits

        path = os.path.abspath(args.plot)
        print(f"plotting SQNR against bits to {path} (--plot '' for none) ...", flush=True)
        try:
            plot_error_vs_bits(path, seed=args.seed)
        except ImportError as exc:
            print(f"gpuquant: warning: no plot ({exc}); pip install matplotlib", file=sys.stderr)
        else:
            print(f"wrote {path}")
    return 0


def _size(text: str) -> int:
    from ..checkpoint.index import parse_size

    try:
        return parse_size(text)
    except QuantizationError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _add_quantize(sub) -> argparse.ArgumentParser:
    q = sub.add_parser("quantize", help="quantize a safetensors checkpoint (file or shards)",
                       description=QUANTIZE_DESCRIPTION, formatter_class=HelpFormatter)
    q.add_argument("input", help=".safetensors file, folder of shards, or index .json")
    q.add_argument("-o", "--output", required=True, help="output file (folder if sharded)")
    q.add_argument("--scheme", choices=("int4", "int8", "int16", *FLOAT_SCHEMES), default="int8",
                   help="integer codes, or a float format (docs/ARCHITECTURE.md)")
    add_float_options(q)
    q.add_argument("--granularity", choices=("tensor", "channel", "group", "block"), default="channel",
                   help="one scale per tensor, per channel (--axis) or per group of values")
    q.add_argument("--group-size", type=int,
                   help="values per group along the last axis; only with --granularity group "
                        "(default 128 there)")
    q.add_argument("--axis", type=int, default=0, help="channel axis of --granularity channel")
    sym = q.add_mutually_exclusive_group()
    sym.add_argument("--symmetric", dest="symmetric", action="store_true", default=True,
                     help="zero point 0, range [-max|x|, max|x|] (the default)")
    sym.add_argument("--asymmetric", dest="symmetric", action="store_false",
                     help="range [min, max] with a zero point")
    q.add_argument("--calibration", choices=("minmax", "percentile", "entropy", "mse"),
                   default="minmax", help="how each range is chosen")
    q.add_argument("--percentile", nargs=2, type=float, metavar=("LO", "HI"),
                   help="bounds of --calibration percentile (default 0.01 99.99)")
    q.add_argument("--ignore-nonfinite", action="store_true",
                   help="calibrate over the finite values only, instead of refusing NaN/Inf")
    q.add_argument("--include", nargs="+", metavar="GLOB",
                   help="quantize only matching names (default: all)")
    q.add_argument("--exclude", nargs="+", metavar="GLOB", help="never quantize these names")
    q.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                   help="auto uses a GPU when one works (CuPy or torch, and Triton)")
    q.add_argument("--force", action="store_true",
                   help="replace the output's files (never the input, nor other files)")
    q.add_argument("--quiet", action="store_true", help="no summary, no progress bar")
    q.add_argument("--shard-size", type=_size, metavar="SIZE",
                   help="write a folder of shards of at most SIZE stored bytes each (5GB, "
                        "500MB, 100KB or bytes) and model.safetensors.index.json")
    q.add_argument("--workers", type=workers_arg, default=1, metavar="N",
                   help="processes on this machine (torch.distributed; needs --shard-size); "
                        "or run under torchrun -m gpuquant")
    q.set_defaults(func=cmd_quantize)
    return q


def _add_dequantize(sub) -> argparse.ArgumentParser:
    d = sub.add_parser("dequantize", help="write a plain checkpoint from a quantized one",
                       formatter_class=HelpFormatter)
    d.add_argument("input", help="quantized .safetensors file, folder of shards, or index .json")
    d.add_argument("-o", "--output", required=True, help="output file (folder if sharded)")
    d.add_argument("--dtype", choices=("float16", "bfloat16", "float32"),
                   help="output dtype (default: each tensor's original dtype)")
    d.add_argument("--force", action="store_true",
                   help="replace the output's files (never the input, nor other files)")
    d.add_argument("--quiet", action="store_true", help="no summary")
    d.set_defaults(func=cmd_dequantize)
    return d


def _add_inspect(sub) -> argparse.ArgumentParser:
    i = sub.add_parser("inspect", help="table of tensors, bytes and (with --reference) errors",
                       formatter_class=HelpFormatter)
    i.add_argument("input", help=".safetensors file, folder of shards, or index .json")
    i.add_argument("--reference", help="the original checkpoint, for SQNR and max abs error")
    i.add_argument("--json", action="store_true",
                   help="one JSON document instead of the table (infinite SQNR as null)")
    i.set_defaults(func=cmd_inspect)
    return i


def _add_demo(sub) -> argparse.ArgumentParser:
    demo = sub.add_parser("demo", help="quantize embedded synthetic weights with every preset",
                          formatter_class=HelpFormatter)
    demo.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                      help="auto uses a GPU when one works (CuPy or torch, and Triton)")
    demo.add_argument("--seed", type=int, default=0, help="seed of the synthetic weights")
    demo.add_argument("--plot", default="gpuquant-demo.png",
                      help="PNG of error against bits, in the current folder unless a path is "
                           "given ('' for none)")
    demo.set_defaults(func=cmd_demo)
    return demo


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gpuquant", description="Quantize, dequantize, "
                                     "inspect and export safetensors checkpoints.",
                                     formatter_class=HelpFormatter)
    parser.add_argument("--version", action="version", version=f"gpuquant {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    q = _add_quantize(sub)
    _add_dequantize(sub)
    i = _add_inspect(sub)
    _add_demo(sub)
    # gpuquant/export/cli.py: `export`, `quantize --format gguf-*` (Q8_0, Q4_0, MXFP4), and `inspect`
    # of GGUF files and compressed-tensors folders
    add_export_parsers(sub, quantize=q, inspect=i)
    return parser


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the program is so that partial outputs are cleaned up."""


def _on_sigterm(signum, frame):
    raise Terminated()


def _fail(message: str, code: int) -> int:
    if os.environ.get("GPUQUANT_DEBUG") == "1":
        raise
    print(message, file=sys.stderr)
    return code


def _quiet_stdout() -> None:
    """After a closed stdout (EPIPE): send what is left to /dev/null, so exit is quiet."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):  # stdout is no file descriptor (an embedding caller)
        pass


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    previous = None
    try:
        previous = signal.signal(signal.SIGTERM, _on_sigterm)
    except ValueError:  # not the main thread: leave signals alone
        pass
    try:
        code = int(args.func(args) or 0)
        sys.stdout.flush()
        return code
    except BrokenPipeError:
        _quiet_stdout()
        return 0
    except QuantizationError as exc:
        return _fail(f"gpuquant: error: {exc}", 2)
    except KeyboardInterrupt as exc:
        print("gpuquant: interrupted", file=sys.stderr)
        return 143 if isinstance(exc, Terminated) else 130
    except OSError as exc:  # a write without a file name (disk full): the output being written
        name = exc.filename or getattr(args, "output", None) or getattr(args, "input", "")
        return _fail(f"gpuquant: error: {name}: {exc.strerror or exc}", 2)
    except Exception as exc:  # noqa: BLE001 - the last resort: one line, exit 1
        return _fail(f"gpuquant: internal error: {type(exc).__name__}: {exc} "
                     "(GPUQUANT_DEBUG=1 shows the traceback)", 1)
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    sys.exit(main())
