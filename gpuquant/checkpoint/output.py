"""Outputs that appear whole or not at all: a staged folder or a temporary file, then a rename.

Without ``force`` an existing output is refused. With ``force`` a folder
output keeps what the export does not write (notes, other files), gets every
file the export writes replaced one rename at a time, and loses the stale
weight files of an earlier checkpoint (``*.safetensors`` and the index),
which would otherwise be loaded with the new ones.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator

from ..errors import QuantizationError

__all__ = ["staged_folder", "staged_file", "check_new_output", "place_folder"]

_STALE_SUFFIXES = (".safetensors", ".safetensors.index.json")


def check_new_output(out: str, force: bool, folder: bool) -> None:
    """Refuse an existing output without ``force``, a missing parent, or the wrong kind."""
    parent = os.path.dirname(os.path.abspath(out))
    if not os.path.isdir(parent):
        raise QuantizationError(f"{out}: the folder {parent} does not exist")
    if os.path.lexists(out):
        if not force:
            raise QuantizationError(f"{out}: exists; pass --force to replace it")
        if folder != os.path.isdir(out):
            kind = "a folder" if folder else "a file"
            raise QuantizationError(f"{out}: exists and is not {kind}; choose another output")


@contextlib.contextmanager
def staged_folder(out: str, force: bool) -> Iterator[str]:
    """Yield an empty folder beside ``out``; on success it becomes ``out``, on failure it goes."""
    check_new_output(out, force, folder=True)
    parent = os.path.dirname(os.path.abspath(out))
    staging = tempfile.mkdtemp(prefix=".gpuquant-export-", dir=parent)
    try:
        yield staging
        place_folder(staging, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def place_folder(staging: str, out: str) -> None:
    """Rename ``staging`` to a new ``out``, or move its files into an existing one (``force``),
    removing the stale weight files there and then ``staging``."""
    if not os.path.exists(out):
        os.replace(staging, out)
        return
    _merge_into(staging, out)
    shutil.rmtree(staging, ignore_errors=True)


def _merge_into(staging: str, out: str) -> None:
    written = set(os.listdir(staging))
    for name in os.listdir(out):
        if name not in written and name.endswith(_STALE_SUFFIXES):
            os.unlink(os.path.join(out, name))
    for name in sorted(written):
        src, dst = os.path.join(staging, name), os.path.join(out, name)
        if os.path.isdir(dst) and not os.path.islink(dst):
            shutil.rmtree(dst)
        os.replace(src, dst)


@contextlib.contextmanager
def staged_file(out: str, force: bool) -> Iterator[str]:
    """Yield a temporary path beside ``out``; on success it is renamed to ``out``."""
    check_new_output(out, force, folder=False)
    parent = os.path.dirname(os.path.abspath(out))
    fd, tmp = tempfile.mkstemp(prefix=".gpuquant-", suffix=".tmp", dir=parent)
    os.close(fd)
    try:
        yield tmp
        os.replace(tmp, out)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
