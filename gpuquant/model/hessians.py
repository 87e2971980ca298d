"""Layer inputs for GPTQ: the order layers run in, and one layer's Hessian at a time.

Each calibration item is run through the model (a mapping as ``model(**item)``,
anything else as ``model(item)``). For each layer, in the order the model first
calls them, a forward pre-hook accumulates H = 2 X^T X over every row of the
layer's inputs and then stops the forward (what follows the layer is not needed;
a layer called more than once a forward lets it run to the end). Consecutive
layers given the very same input tensor (q, k, v) share one Hessian.
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

__all__ = ["run_model", "call_groups", "layer_hessian", "reduce_hessian"]


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


def call_groups(model, modules: dict[str, Any], items: list) -> list[tuple[list[str], bool]]:
    """``modules`` in the order one forward of the first item first calls them, as groups of
    consecutive layers called with the very same input tensor (q, k and v; gate and up):
    their Hessians are one. With each group, whether its layer is called once a forward
    (the Hessian's forward may then stop there)."""
    import torch

    calls: list[tuple[str, Any]] = []  # keeps every input alive: no address is reused
    handles = [m.register_forward_pre_hook(
        lambda mod, args, name=name: calls.append((name, args[0] if args else None)))
        for name, m in modules.items()]
    try:
        with torch.no_grad():
            run_model(model, _first_item(items))
    finally:
        for h in handles:
            h.remove()
    missing = [n for n in modules if n not in {name for name, _ in calls}]
    if missing:
        raise CalibrationRequiredError(f"the calibration inputs never reach {missing[:5]}; "
                                       "GPTQ needs every layer's inputs (or ignore= them)")
    counts = {name: sum(1 for n, _ in calls if n == name) for name in modules}
    groups: list[tuple[list[str], bool]] = []
    seen: set[str] = set()
    last_input = None
    for name, x in calls:
        if name in seen:
            continue
        seen.add(name)
        once = counts[name] == 1
        if groups and once and groups[-1][1] and x is not None and x is last_input:
            groups[-1][0].append(name)
        else:
            groups.append(([name], once))
        last_input = x
    return groups


def layer_hessian(model, module, items: Iterable, dtype, device, stop: bool = True):
    """2 X^T X (in_features square, ``dtype`` on ``device``) of ``module``'s inputs; ``stop``:
    end each forward at the module (called once a forward)."""
    import torch

    k = module.in_features
    hessian = torch.zeros((k, k), dtype=dtype, device=device)

    def hook(mod, args):
        x = args[0].detach().reshape(-1, k).to(device=device, dtype=dtype)
        hessian.addmm_(x.t(), x, alpha=2.0)
        if stop:
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
    from ..calibration.collective import _Collective

    collective = _Collective(group)
    on = hessian.to(collective.device)
    collective.dist.all_reduce(on, op=collective.dist.ReduceOp.SUM, group=collective.group)
    return on.to(hessian.device)
