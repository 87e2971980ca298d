"""gq.quantize_model: replace a torch model's Linear layers by QuantizedLinear, in place."""

from __future__ import annotations

import dataclasses
import re
import time
from typing import Any

from ..config import QuantConfig
from ..core.frameworks import host_copy
from ..errors import QuantizationError, UnsupportedSchemeError
from ..export.targets import is_ignored
from ..metrics import sqnr
from .methods import GPTQ, HQQ, as_method

__all__ = ["quantize_model", "LayerReport", "QuantizationReport", "select_linears"]


@dataclasses.dataclass(frozen=True)
class LayerReport:
    name: str
    shape: tuple[int, int]
    scheme: str       # the config, as QuantConfig.describe() writes it
    method: str
    sqnr_db: float    # of the dequantized weight against the float weight
    seconds: float    # quantizing this layer (GPTQ: its Hessian and solve)


@dataclasses.dataclass(frozen=True)
class QuantizationReport:
    method: str
    layers: list[LayerReport]

    @property
    def seconds(self) -> float:
        return sum(layer.seconds for layer in self.layers)

    def __str__(self) -> str:
        lines = [f"{'layer':<48} {'shape':>12} {'scheme':<24} {'SQNR dB':>8} {'s':>7}"]
        for r in self.layers:
            shape = f"{r.shape[0]}x{r.shape[1]}"
            lines.append(f"{r.name:<48} {shape:>12} {r.scheme:<24} {r.sqnr_db:8.2f} "
                         f"{r.seconds:7.3f}")
        lines.append(f"{len(self.layers)} layer(s) by {self.method} in {self.seconds:.2f} s")
        return "\n".join(lines)


def select_linears(model, targets: str | None, ignore) -> dict[str, Any]:
    """{name: nn.Linear} to quantize: every Linear (or those whose name ``re.match``es
    ``targets``), less ``ignore`` (exact names, or ``re:PATTERN``, as compressed-tensors)."""
    from torch import nn

    if isinstance(ignore, str):
        ignore = (ignore,)
    pattern = None if targets is None else re.compile(targets)
    return {name: m for name, m in model.named_modules()
            if type(m) is nn.Linear and (pattern is None or pattern.match(name))
            and not is_ignored(name, list(ignore))}


def _set_module(model, name: str, module) -> None:
    parent, _, leaf = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, leaf, module)


def _quantize_weight(w, config: QuantConfig, method, hessian=None):
    from ..quantize import quantize

    if isinstance(method, HQQ):
        from .hqq import hqq_quantize

        return hqq_quantize(w, config, method)
    if isinstance(method, GPTQ):
        from .gptq import gptq_quantize

        return gptq_quantize(w, hessian, config, method)
    return quantize(w, config)


def _replace(model, name: str, linear, config, method, device, activations, hessian=None):
    from ..nn import QuantizedLinear

    start = time.perf_counter()
    w = linear.weight.detach()
    qt = _quantize_weight(w if device is None else w.to(device), config, method, hessian)
    module = QuantizedLinear(qt, linear.bias, activations).to(linear.weight.device)
    _set_module(model, name, module)
    seconds = time.perf_counter() - start
    deq = host_copy(module.dequantized_weight(getattr(w, "dtype", None)).float())
    return LayerReport(name, (linear.out_features, linear.in_features), config.describe(),
                       method.name, float(sqnr(host_copy(w.float()), deq)), seconds)


def _gptq_layers(model, layers, config, method: GPTQ, calibration, device, activations):
    import torch

    from .hessians import call_groups, layer_hessian, reduce_hessian

    items = list(calibration)
    reports = []
    for names, once in call_groups(model, layers, items):
        first = layers[names[0]]
        start = time.perf_counter()
        solve_device = torch.device(device) if device is not None else first.weight.device
        precision = method.precision or ("float64" if solve_device.type == "cpu" else "float32")
        dtype = torch.float64 if precision == "float64" else torch.float32
        hessian = reduce_hessian(layer_hessian(model, first, items, dtype, solve_device, once),
                                 method.group)
        for name in names:  # the same input: one Hessian
            report = _replace(model, name, layers[name], config, method, device, activations,
                              hessian)
            reports.append(dataclasses.replace(report, seconds=time.perf_counter() - start))
            start = time.perf_counter()
    return reports


def quantize_model(model, config: QuantConfig, *, method: Any = "rtn", calibration=None,
                   ignore=("lm_head",), targets: str | None = None, device=None,
                   activations: str | None = None) -> QuantizationReport:
    """Replace ``model``'s ``nn.Linear`` layers by :class:`gq.nn.QuantizedLinear` in place.

    Args:
        model: a torch ``nn.Module`` (a transformers model, say).
        config: the weights' QuantConfig (its calibration: min/max, MSE search, ...).
        method: "rtn" (round-to-nearest), "hqq" (no data) or "gptq" (needs
            ``calibration``), or a ``gq.model.HQQ(...)`` / ``gq.model.GPTQ(...)``.
        calibration: GPTQ's model inputs: an iterable of items, a mapping passed as
            ``model(**item)`` (tokenizer output), anything else as ``model(item)``.
        ignore: Linear layers left as they are: exact names or ``re:PATTERN``.
        targets: a regular expression of layer names (``re.match``) to quantize
            instead of every Linear.
        device: where the weights are quantized (GPTQ: also its Hessians); None: where
            each weight is. The modules stay on the layers' devices.
        activations: None, "int8" for W8A8 (per-token int8 activations), or "fp8" (FP8
            e4m3 weights per tensor or channel: vLLM's dynamic per-token FP8 activations).

    Float configs (FP8, MXFP8, MXFP4, NVFP4, NF4) take method="rtn" only.

    Returns:
        A QuantizationReport: per layer the scheme, the weight SQNR and the time.
    """
    if not isinstance(config, QuantConfig):
        raise QuantizationError(f"config must be a gq.QuantConfig, got {type(config).__name__}")
    method = as_method(method)
    if config.is_float and isinstance(method, (GPTQ, HQQ)):
        raise UnsupportedSchemeError(
            f"method={method.name!r} solves integer codes; {config.describe()} is a float "
            "format: use method='rtn'")
    from ..nn.activations import check

    check(activations, config)
    if not isinstance(method, GPTQ) and calibration is not None:
        raise QuantizationError(f"calibration= is for method='gptq'; method={method.name!r} "
                                "uses no data")
    layers = select_linears(model, targets, ignore)
    if not layers:
        raise QuantizationError(f"no nn.Linear to quantize (targets={targets!r}, ignore="
                                f"{list(ignore) if not isinstance(ignore, str) else ignore})")
    if isinstance(method, GPTQ):
        if calibration is None:
            from ..errors import CalibrationRequiredError

            raise CalibrationRequiredError("method='gptq' needs calibration= (model inputs)")
        reports = _gptq_layers(model, layers, config, method, calibration, device, activations)
    else:
        reports = [_replace(model, name, linear, config, method, device, activations)
                   for name, linear in layers.items()]
    return QuantizationReport(method.name, reports)

