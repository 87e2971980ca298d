"""gq.model: quantize a torch model's Linear layers (round-to-nearest, HQQ, GPTQ) and export it.

Imports torch only when a function is called: ``import gpuquant.model`` needs NumPy only.
"""

from .methods import GPTQ, HQQ, RTN

__all__ = ["GPTQ", "HQQ", "RTN", "quantize_model", "export_model"]


def quantize_model(model, config, **kwargs):
    from .api import quantize_model as run

    return run(model, config, **kwargs)


quantize_model.__doc__ = "See gpuquant.model.api.quantize_model."


def export_model(model, out_dir, **kwargs):
    from .export import export_model as run

    return run(model, out_dir, **kwargs)


export_model.__doc__ = "See gpuquant.model.export.export_model."
