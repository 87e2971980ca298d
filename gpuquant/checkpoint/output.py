"""The one output writer of every command: a file or a folder that appears whole or not at all.

Rules, the same for ``quantize``, ``dequantize``, ``export``, GGUF and ``gq.save``:

- the input is never written: not the output path itself, nor any file the output consists of,
  with every shard, index and symlink resolved (``--force`` does not change this);
- without ``force`` an existing output is refused; a new output is created exclusively (a
  rename that does not replace), so of two runs creating the same path one fails;
- only regular files are written, replaced or removed: a FIFO, device, socket or symlink at
  the output (or at a file of an output folder) is refused, ``force`` or not;
- a file is written to a temporary file beside it and renamed over; a folder is written to a
  staging folder beside it and renamed into place whole (new) or file by file, the index last
  (``force``), which also removes the stale shards an earlier run left there;
- modes follow the umask as ``open()`` would: a new file gets ``0o666 & ~umask``, a replaced
  file keeps its mode;
- temporary names carry the host and process id (``.gpuquant-HOST-PID-TOKEN``): each run
  removes the ones whose process on this host is gone (a run killed with SIGKILL).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import json
import os
import re
import secrets
import shutil
import socket
import stat
import zlib
from collections.abc import Iterable, Iterator

from ..errors import OutputPathError

__all__ = ["check_output", "staged_file", "staged_folder", "make_staging", "staging_path",
           "place_folder", "sweep_stale", "INDEX_NAME"]

INDEX_NAME = "model.safetensors.index.json"
_PREFIX = ".gpuquant-"
HOST = zlib.crc32(socket.gethostname().encode())  # names this machine in temporary names
_STALE = re.compile(re.escape(_PREFIX) + r"(?P<host>[0-9a-f]{8})-(?P<pid>\d+)-[0-9a-f]{12}(\.tmp)?$")
_SHARD = re.compile(r"model(-\d{5}-of-\d{5})?\.safetensors$")


def _same(a: str, b: str) -> bool:
    """Whether two paths name one file or folder (through symlinks and hard links)."""
    if os.path.realpath(a) == os.path.realpath(b):
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def _kind(path: str) -> str | None:
    """None (nothing there), "file", "folder", or what else is there (never followed)."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return None
    if stat.S_ISREG(mode):
        return "file"
    if stat.S_ISDIR(mode):
        return "folder"
    return {stat.S_IFLNK: "a symlink", stat.S_IFIFO: "a FIFO", stat.S_IFSOCK: "a socket",
            stat.S_IFCHR: "a device", stat.S_IFBLK: "a device"}.get(stat.S_IFMT(mode), "special")


def check_output(out: str, inputs: Iterable[str], force: bool, folder: bool,
                 names: Iterable[str] = ()) -> bool:
    """Refuse what this module never does (see the module docstring), before any work; returns
    whether ``out`` is new (then it is created exclusively when placed).

    ``inputs``: every file and folder the command reads; ``folder``: the output is a folder of
    ``names`` (and the index); else one file."""
    if not isinstance(out, str) or not out:
        raise OutputPathError(f"output={out!r}: give a file or folder path")
    inputs = list(inputs)
    targets = [os.path.join(out, n) for n in names] if folder else [out]
    for src in inputs:
        if os.path.isdir(src) and _same(out, src):
            raise OutputPathError(f"{out}: is the input folder; choose another output folder "
                                  "(even --force never replaces the input)")
    for target in ([out] if folder else []) + targets:
        for src in inputs:
            if _same(target, src) or (folder and _inside(src, out) and target == out):
                raise OutputPathError(f"{out}: would overwrite the input {src}; choose another "
                                      "output (even --force never replaces the input)")
    parent = os.path.dirname(os.path.abspath(out))
    if not os.path.isdir(parent):
        raise OutputPathError(f"{out}: the folder {parent} does not exist")
    kind = _kind(out)
    if kind is None:
        return True
    if not force:
        raise OutputPathError(f"{out}: exists; pass --force to replace it")
    want = "folder" if folder else "file"
    if kind != want:
        raise OutputPathError(f"{out}: is {_a(kind)}, not a regular {want}; --force replaces "
                              f"only regular {want}s")
    shards = [os.path.join(out, n) for n in os.listdir(out) if _SHARD.match(n)] if folder else []
    for target in (targets + shards + [os.path.join(out, INDEX_NAME)]) if folder else []:
        if _kind(target) not in (None, "file"):
            raise OutputPathError(f"{target}: is {_a(_kind(target))}; --force replaces only "
                                  "regular files")
    return False


def _a(kind: str) -> str:
    return "a " + kind if kind in ("file", "folder") else kind


def _inside(path: str, folder: str) -> bool:
    """Whether ``path`` (resolved) lies in ``folder`` (resolved)."""
    p, f = os.path.realpath(path), os.path.realpath(folder)
    return p.startswith(f.rstrip(os.sep) + os.sep)


def _new_mode(existing: str | None) -> int:
    if existing is not None and _kind(existing) == "file":
        return stat.S_IMODE(os.lstat(existing).st_mode)
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def _libc_renameat2():
    try:
        fn = ctypes.CDLL(None, use_errno=True).renameat2
    except (AttributeError, OSError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    return fn


_RENAMEAT2 = _libc_renameat2()
_AT_FDCWD, _RENAME_NOREPLACE = -100, 1


def rename_new(src: str, dst: str) -> None:
    """Rename ``src`` to ``dst`` only if nothing is at ``dst`` (atomically where the system can)."""
    if _RENAMEAT2 is not None:
        if _RENAMEAT2(_AT_FDCWD, os.fsencode(src), _AT_FDCWD, os.fsencode(dst), _RENAME_NOREPLACE) == 0:
            return
        err = ctypes.get_errno()
        if err == errno.EEXIST:
            raise OutputPathError(f"{dst}: was created by another process meanwhile; nothing "
                                  "was replaced")
        if err not in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP):
            raise OSError(err, os.strerror(err), dst)
    if os.path.isdir(src):  # no exclusive rename here: the folder must not exist (an empty one
        try:                # would be replaced by os.rename), so claim the name first
            os.mkdir(dst)
        except FileExistsError:
            raise OutputPathError(f"{dst}: was created by another process meanwhile") from None
        os.rmdir(dst)
        os.rename(src, dst)
        return
    try:
        os.link(src, dst)
    except FileExistsError:
        raise OutputPathError(f"{dst}: was created by another process meanwhile") from None
    os.unlink(src)


def _replace_file(src: str, dst: str, new: bool = False) -> None:
    """Put ``src`` over ``dst``: a ``new`` name exclusively, else a regular file or nothing."""
    kind = _kind(dst)
    if new or kind is None:
        rename_new(src, dst)
    elif kind == "file":
        os.replace(src, dst)
    else:
        raise OutputPathError(f"{dst}: is {_a(kind)}; only regular files are replaced")


def _temp_name(parent: str, stage: tuple[int, int, int] | None = None, suffix: str = "") -> str:
    """``stage``: (host, pid, token) of the process that made it; this process by default."""
    host, pid, token = stage or (HOST, os.getpid(), secrets.randbits(48))
    return os.path.join(parent, f"{_PREFIX}{host:08x}-{pid}-{token:012x}{suffix}")


def sweep_stale(parent: str) -> None:
    """Remove this host's temporary files and folders whose process has ended."""
    with contextlib.suppress(OSError):
        for name in os.listdir(parent):
            m = _STALE.match(name)
            if not m or int(m["host"], 16) != HOST or _alive(int(m["pid"])):
                continue
            path = os.path.join(parent, name)
            if _kind(path) == "folder":
                shutil.rmtree(path, ignore_errors=True)
            elif _kind(path) == "file":
                with contextlib.suppress(OSError):
                    os.unlink(path)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@contextlib.contextmanager
def staged_file(out: str, inputs: Iterable[str] = (), force: bool = False) -> Iterator[str]:
    """Yield a temporary path beside ``out``; on success it becomes ``out``, else it goes."""
    new = check_output(out, inputs, force, folder=False)
    parent = os.path.dirname(os.path.abspath(out))
    sweep_stale(parent)
    tmp = _temp_name(parent, suffix=".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    os.close(fd)
    try:
        yield tmp
        os.chmod(tmp, _new_mode(None if new else out))
        _replace_file(tmp, out, new)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def staging_path(out: str, stage: tuple[int, int, int]) -> str:
    """The hidden folder beside ``out`` where an output folder is written before it is placed;
    ``stage``: (host, pid, token) as :func:`make_staging` returned it on the rank that made it."""
    return _temp_name(os.path.dirname(os.path.abspath(out)), stage)


def make_staging(out: str, token: int | None = None) -> tuple[int, int, int]:
    """Create the staging folder of ``out`` (umask permissions); returns its (host, pid, token)."""
    sweep_stale(os.path.dirname(os.path.abspath(out)))
    while True:
        stage = (HOST, os.getpid(), secrets.randbits(48) if token is None else token)
        try:
            os.mkdir(staging_path(out, stage))
            return stage
        except FileExistsError:
            if token is not None:
                raise


def place_folder(out: str, staging: str, new: bool) -> None:
    """Put the folder written in ``staging`` in place: renamed whole as a ``new`` ``out`` (what
    :func:`check_output` said), or into an existing one (``--force``) file by file, the index
    last, after the stale shards of an earlier run there are removed. Other files in ``out``
    are kept."""
    if new:
        rename_new(staging, out)
        return
    written = set(os.listdir(staging))
    for name in _stale_shards(out, written):
        os.unlink(os.path.join(out, name))
    last = [INDEX_NAME] if INDEX_NAME in written else []
    for name in [n for n in sorted(written) if n not in last] + last:
        src, dst = os.path.join(staging, name), os.path.join(out, name)
        if _kind(src) == "folder" and _kind(dst) == "folder":  # a copied side folder
            shutil.rmtree(dst)
        _replace_file(src, dst)
    shutil.rmtree(staging, ignore_errors=True)


def _stale_shards(out: str, written: set[str]) -> list[str]:
    """Weight files of an earlier checkpoint in ``out`` that this run does not write: named as
    gpuquant and transformers name shards, or listed in the index there. Only regular files."""
    listed: set[str] = set()
    with contextlib.suppress(OSError, ValueError, AttributeError):
        with open(os.path.join(out, INDEX_NAME)) as f:
            listed = set(json.load(f)["weight_map"].values())
    return sorted(n for n in os.listdir(out)
                  if n not in written and (_SHARD.match(n) or n in listed or n == INDEX_NAME)
                  and _kind(os.path.join(out, n)) == "file")


@contextlib.contextmanager
def staged_folder(out: str, inputs: Iterable[str] = (), force: bool = False,
                  names: Iterable[str] = ()) -> Iterator[str]:
    """Yield an empty staging folder beside ``out``; on success it is placed (see
    :func:`place_folder`), on failure it goes."""
    new = check_output(out, inputs, force, folder=True, names=list(names))
    staging = staging_path(out, make_staging(out))
    try:
        yield staging
        place_folder(out, staging, new)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
