"""``gpuquant export --method hqq|gptq``: load the model with transformers, quantize its
Linear layers in memory (gq.quantize_model), write the compressed-tensors folder
(gq.export_model). ``--method rtn`` (the default) is the streaming exporter itself."""

from __future__ import annotations

import argparse
import time

from ..errors import QuantizationError

__all__ = ["export_with_method", "METHODS"]

METHODS = ("rtn", "hqq", "gptq")


def _load_model(model_dir: str):
    import transformers
    from transformers import AutoConfig, AutoModel

    config = AutoConfig.from_pretrained(model_dir, local_files_only=True)
    arch = (getattr(config, "architectures", None) or [None])[0]
    cls = getattr(transformers, arch, None) if arch else None
    transformers.logging.set_verbosity_error()
    return (cls or AutoModel).from_pretrained(model_dir, local_files_only=True).eval()


def _check(args: argparse.Namespace, options) -> None:
    if args.method == "gptq" and not args.calibration_data:
        raise QuantizationError("--method gptq needs --calibration-data FILE (one sample a line)")
    if args.method != "gptq" and args.calibration_data:
        raise QuantizationError(f"--calibration-data is for --method gptq, not {args.method}")
    if args.samples < 1 or args.seq_len < 1:
        raise QuantizationError(f"--samples {args.samples} --seq-len {args.seq_len}: give "
                                "positive numbers")
    if args.workers > 1:
        raise QuantizationError(f"--method {args.method} quantizes in one process; leave out "
                                "--workers")
    if options.scale_dtype not in (None, "float32"):
        raise QuantizationError(f"--method {args.method} stores float32 scales; leave out "
                                "--scale-dtype or pass float32")


def _device(name: str):
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return name


def export_with_method(args: argparse.Namespace, options) -> dict:
    """Quantize and export as ``args`` say; the stats ``gpuquant export`` prints."""
    from .api import quantize_model
    from .export import export_model
    from .methods import GPTQ, HQQ
    from .text import load_tokenizer, read_lines, tokenize_samples

    _check(args, options)
    start = time.perf_counter()
    device = _device(args.device)
    model = _load_model(args.model_dir).to(device)
    calibration = None
    if args.method == "gptq":
        lines = read_lines(args.calibration_data, args.samples)
        calibration = tokenize_samples(load_tokenizer(args.model_dir), lines, args.seq_len,
                                       device)
    method = GPTQ() if args.method == "gptq" else HQQ()
    report = quantize_model(model, options.quant_config(), method=method,
                            calibration=calibration, ignore=options.ignore,
                            targets=options.targets)
    stats = export_model(model.cpu(), args.output, force=args.force, copy_from=args.model_dir,
                         activations=options.activations)
    return {"quantized": stats["quantized"], "kept": None, "report": report,
            "scale_dtype": "float32", "seconds": time.perf_counter() - start}
