"""Layer inputs for GPTQ: the order layers run in, and one layer's Hessian at a time.

Each calibration item is run through the model (a mapping as ``model(**item)``,
anything else as ``model(item)``). For each layer, in the order the model first
calls them, a forward pre-hook accumulates H = 2 X^T X over every row of the
layer's inputs and then stops the forward (what follows the layer is not needed).
Layers already replaced by QuantizedLinear feed the later ones, so every layer
sees the outputs of the quantized layers before it. Only one Hessian is held at a
time. Under torch.distributed the Hessians are summed across the ranks (the
collective layer of Calibrator.all_reduce), so each rank solves with the Hessian
of all the ranks' data.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from ..errors import CalibrationRequiredError

__all__ = ["run_model", "call_order", "layer_hessian", "reduce_hessian"]


class _Stop(Exception):
    """Raised by a hook to end a forward pass once the layer's inputs are captured."""


def run_model(model, item: Any):
    if isinstance(item, Mapping):
        return model(**item)
    return model(item)


def _first_item(items: list):
    if not items:
        raise CalibrationRequiredError("method='gptq' needs calibration= with at least one model "
                                       "input (an iterable of tensors or of mappings)")
    return items[0]


def call_order(model, modules: dict[str, Any], items: list) -> list[str]:
    """Names of ``modules`` in the order one forward of the first item calls them."""
    import torch

    order: list[str] = []
    handles = [m.register_forward_pre_hook(
        lambda mod, args, name=name: order.append(name) if name not in order else None)
        for name, m in modules.items()]
    try:
        with torch.no_grad():
            run_model(model, _first_item(items))
    finally:
        for h in handles:
            h.remove()
    missing = [n for n in modules if n not in order]
    if missing:
        raise CalibrationRequiredError(f"the calibration inputs never reach {missing[:5]}; "
                                       "GPTQ needs every layer's inputs (or ignore= them)")
    return order


def layer_hessian(model, module, items: Iterable, dtype, device):
    """2 X^T X (in_features square, ``dtype`` on ``device``) of ``module``'s inputs."""
    import torch

    k = module.in_features
    hessian = torch.zeros((k, k), dtype=dtype, device=device)

    def hook(mod, args):
        x = args[0].detach().reshape(-1, k).to(device=device, dtype=dtype)
        hessian.addmm_(x.t(), x, alpha=2.0)
        raise _Stop

    handle = module.register_forward_pre_hook(hook)
    try:
        with torch.no_grad():
            for item in items:
                try:
                    run_model(model, item)
                except _Stop:
                    pass
    finally:
        handle.remove()
    return hessian


def _distributed(group: Any) -> bool:
    try:
        import torch.distributed as dist
    except ImportError:
        return False
    if group is not None:
        return True
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def reduce_hessian(hessian, group: Any = None):
    """SUM of ``hessian`` (a torch tensor) across the ranks of ``group`` (or the default
    group, when one is initialised with more than one rank); itself otherwise."""
    if not _distributed(group):
        return hessian
    from ..distributed import _Collective

    collective = _Collective(group)
    on = hessian.to(collective.device)
    collective.dist.all_reduce(on, op=collective.dist.ReduceOp.SUM, group=collective.group)
    return on.to(hessian.device)
