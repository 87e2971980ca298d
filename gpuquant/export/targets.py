"""Which checkpoint tensors are the weights of ``nn.Linear`` modules.

compressed-tensors quantizes Linear modules, so the exporter must know which
tensors belong to one. It builds the model on the meta device (no memory, no
weights) from ``config.json`` with transformers and lists its Linear modules;
nothing is guessed from names. Without transformers, or for an architecture
transformers does not know, ``--targets REGEX`` names the modules instead.

Names in ``ignore`` follow compressed-tensors: an exact module name, or
``re:PATTERN`` matched (``re.match``) against the module name.
"""

from __future__ import annotations

import contextlib
import io
import re

from ..errors import BackendUnavailableError, FormatError

__all__ = ["linear_modules", "select_weights", "is_ignored"]

_FALLBACK = "pass --targets REGEX (module names, matched from the start) to name the Linear " \
            "modules instead"


def linear_modules(model_dir: str) -> tuple[set[str], str]:
    """(names of the model's nn.Linear modules, base_model_prefix), from config.json."""
    try:
        import torch
        import transformers
    except ImportError as exc:
        raise BackendUnavailableError(
            f"finding the Linear weights needs transformers and torch ({exc}): "
            f"pip install 'gpuquant[export]', or {_FALLBACK}") from None
    from transformers import AutoConfig, AutoModel

    quiet = io.StringIO()
    try:
        with contextlib.redirect_stderr(quiet):
            config = AutoConfig.from_pretrained(model_dir, local_files_only=True)
    except Exception as exc:  # noqa: BLE001 - transformers raises many kinds here
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise FormatError(f"{model_dir}/config.json: transformers "
                          f"{transformers.__version__} cannot read it ({first[:160]}); "
                          f"{_FALLBACK}") from None
    arch = (getattr(config, "architectures", None) or [None])[0]
    cls = getattr(transformers, arch, None) if arch else AutoModel
    if cls is None:
        raise FormatError(f"{model_dir}/config.json: architecture {arch!r} is unknown to "
                          f"transformers {transformers.__version__}; {_FALLBACK}")
    try:
        with torch.device("meta"), contextlib.redirect_stderr(quiet):
            model = cls._from_config(config) if hasattr(cls, "_from_config") \
                else cls.from_config(config)
    except Exception as exc:  # noqa: BLE001
        raise FormatError(f"{model_dir}: transformers could not build {arch or 'the model'} "
                          f"from config.json ({type(exc).__name__}: {str(exc)[:160]}); "
                          f"{_FALLBACK}") from None
    names = {name for name, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    return names, getattr(model, "base_model_prefix", "") or ""


def is_ignored(module: str, ignore: list[str]) -> bool:
    for entry in ignore:
        if entry.startswith("re:"):
            if re.match(entry[3:], module):
                return True
        elif entry == module:
            return True
    return False


def select_weights(model_dir: str, shapes: dict[str, tuple[int, ...]], targets: str | None,
                   ignore: list[str]) -> tuple[dict[str, str], list[str]]:
    """({checkpoint tensor name: module name} to quantize, Linear modules not in the checkpoint).

    ``shapes`` maps every floating tensor of the checkpoint to its shape. A
    Linear module missing from the checkpoint (a tied ``lm_head``) is not
    quantized; the exporter adds it to the config's ignore list, or the
    loader would look for its packed weight.
    """
    if targets is not None:
        try:
            pattern = re.compile(targets)
        except re.error as exc:
            raise FormatError(f"--targets {targets!r} is not a regular expression: {exc}") from None
        modules = {k[: -len(".weight")] for k, s in shapes.items()
                   if k.endswith(".weight") and len(s) == 2 and pattern.match(k[: -len(".weight")])}
        prefix = ""
    else:
        modules, prefix = linear_modules(model_dir)
    chosen, absent = {}, []
    for module in sorted(modules):
        found = [n for n in _candidates(module, prefix) if len(shapes.get(n + ".weight", ())) == 2]
        if any(is_ignored(n, ignore) for n in [module, *found]):
            continue
        if found:
            chosen[found[0] + ".weight"] = found[0]
        else:
            absent.append(module)
    return chosen, absent


def _candidates(module: str, prefix: str) -> list[str]:
    """Checkpoint names a module's weight may have: as is, with or without the base prefix."""
    names = [module]
    if prefix:
        if module.startswith(prefix + "."):
            names.append(module[len(prefix) + 1:])
        else:
            names.append(f"{prefix}.{module}")
    return names
