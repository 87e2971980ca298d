"""A strict reader and an atomic writer of the safetensors format, in pure NumPy.

Layout of a file: an 8-byte little-endian header length N, N bytes of JSON
(``{name: {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__":
{str: str}}``), then the tensor bytes, offsets relative to the end of the
header. Every field is checked before any data is read, so a truncated file,
a header that lies about sizes, or a file that is not safetensors at all
raises :class:`FormatError` naming the file and the problem. Nothing is ever
unpickled. bfloat16 is read and written as raw 16-bit patterns, so it needs
no torch.
"""

from __future__ import annotations

import json
import math
import os
import struct
import tempfile
from collections.abc import Iterable

import numpy as np

from .errors import FormatError

__all__ = ["SafetensorsFile", "write_safetensors", "write_safetensors_stream", "DTYPES", "BF16",
           "tag_of"]

BF16 = "BF16"
# safetensors dtype tag -> NumPy storage dtype (BF16 is stored as its bits in uint16)
DTYPES = {
    "BOOL": np.dtype(np.bool_), "U8": np.dtype(np.uint8), "I8": np.dtype(np.int8),
    "U16": np.dtype("<u2"), "I16": np.dtype("<i2"), "F16": np.dtype("<f2"),
    BF16: np.dtype("<u2"), "U32": np.dtype("<u4"), "I32": np.dtype("<i4"),
    "F32": np.dtype("<f4"), "U64": np.dtype("<u8"), "I64": np.dtype("<i8"),
    "F64": np.dtype("<f8"),
}
_TAGS = {v.newbyteorder("<").str: k for k, v in DTYPES.items() if k != BF16}
_MAX_HEADER = 100 << 20


def tag_of(dtype: np.dtype) -> str:
    tag = _TAGS.get(np.dtype(dtype).newbyteorder("<").str)
    if tag is None:
        raise FormatError(f"dtype {dtype} cannot be stored in safetensors")
    return tag


class SafetensorsFile:
    """Lazy, validated access to one safetensors file (memory-mapped, read-only)."""

    def __init__(self, path: str | os.PathLike):
        self.path = os.fspath(path)
        try:
            self._file = open(self.path, "rb")
        except FileNotFoundError:
            raise FormatError(f"{self.path}: no such file") from None
        except IsADirectoryError:
            raise FormatError(f"{self.path}: is a directory, not a safetensors file") from None
        try:
            self._read_header()
        except BaseException:
            self._file.close()
            raise

    def _fail(self, problem: str) -> FormatError:
        return FormatError(f"{self.path}: {problem}")

    def _read_header(self) -> None:
        size = os.fstat(self._file.fileno()).st_size
        if size < 8:
            raise self._fail(f"not a safetensors file: {size} bytes, too short for a header")
        (n,) = struct.unpack("<Q", self._file.read(8))
        if n > min(size - 8, _MAX_HEADER):
            raise self._fail(f"not a safetensors file or truncated: header length {n} but the "
                             f"file has {size} bytes")
        try:
            header = json.loads(self._file.read(n).decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise self._fail(f"not a safetensors file: header is not JSON ({exc})") from None
        if not isinstance(header, dict):
            raise self._fail("not a safetensors file: header is not a JSON object")
        meta = header.pop("__metadata__", None) or {}
        if not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
            raise self._fail("__metadata__ must map strings to strings")
        self.metadata: dict[str, str] = meta
        self._start = 8 + n
        data_size = size - self._start
        self._entries: dict[str, tuple[str, tuple[int, ...], int, int]] = {}
        for name, entry in header.items():
            self._entries[name] = self._check_entry(name, entry, data_size)

    def _check_entry(self, name, entry, data_size):
        try:
            tag, shape, (begin, end) = entry["dtype"], entry["shape"], entry["data_offsets"]
        except (KeyError, TypeError, ValueError):
            raise self._fail(f"tensor {name!r}: header entry needs dtype, shape, "
                             "data_offsets") from None
        if tag not in DTYPES:
            raise self._fail(f"tensor {name!r}: unsupported dtype {tag!r}; supported: "
                             + ", ".join(DTYPES))
        if not isinstance(shape, list) or not all(isinstance(s, int) and s >= 0 for s in shape):
            raise self._fail(f"tensor {name!r}: bad shape {shape!r}")
        if not (isinstance(begin, int) and isinstance(end, int) and 0 <= begin <= end):
            raise self._fail(f"tensor {name!r}: bad data_offsets {[begin, end]!r}")
        expected = math.prod(shape) * DTYPES[tag].itemsize
        if end - begin != expected:
            raise self._fail(f"tensor {name!r}: header says {end - begin} bytes but shape "
                             f"{shape} of {tag} needs {expected}")
        if end > data_size:
            raise self._fail(f"truncated: tensor {name!r} ends at byte {end} of the data but "
                             f"the data has {data_size} bytes")
        return tag, tuple(shape), begin, end

    # ---------------------------------------------------------------- access
    def keys(self) -> list[str]:
        return list(self._entries)

    def __contains__(self, name: str) -> bool:
        return name in self._entries

    def dtype_tag(self, name: str) -> str:
        return self._entries[name][0]

    def shape(self, name: str) -> tuple[int, ...]:
        return self._entries[name][1]

    def nbytes(self, name: str) -> int:
        _, _, begin, end = self._entries[name]
        return end - begin

    def get(self, name: str) -> np.ndarray:
        """The tensor read into a new NumPy array (BF16 as uint16 bits).

        Plain reads, not a memory map: only the tensors a caller holds count
        towards its memory, never the whole file.
        """
        if name not in self._entries:
            raise self._fail(f"no tensor named {name!r}")
        tag, shape, begin, end = self._entries[name]
        arr = np.empty(shape, DTYPES[tag])
        view = memoryview(arr.reshape(-1)).cast("B")
        done = 0
        while done < end - begin:
            n = os.preadv(self._file.fileno(), [view[done:]], self._start + begin + done)
            if n <= 0:
                raise self._fail(f"truncated while reading tensor {name!r}")
            done += n
        return arr if DTYPES[tag].isnative else arr.astype(DTYPES[tag].newbyteorder("="))

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> SafetensorsFile:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def write_safetensors(path: str | os.PathLike,
                      tensors: Iterable[tuple[str, str, np.ndarray]],
                      metadata: dict[str, str] | None = None) -> None:
    """Write ``(name, dtype tag, array)`` triples atomically (temporary file, then rename)."""
    items = list(tensors)
    write_safetensors_stream(path, [(name, tag, arr.shape) for name, tag, arr in items],
                             (arr for _, _, arr in items), metadata)


def write_safetensors_stream(path: str | os.PathLike,
                             entries: list[tuple[str, str, tuple[int, ...]]],
                             arrays: Iterable[np.ndarray],
                             metadata: dict[str, str] | None = None) -> None:
    """Write a file whose header is known up front and whose arrays come one at a time.

    ``entries`` are (name, dtype tag, shape) in file order; ``arrays`` yields
    the matching arrays lazily, so peak memory stays near the largest one.
    The file appears under ``path`` only once complete (temporary file in the
    same folder, fsync, rename); on any failure nothing is left behind.
    """
    path = os.fspath(path)
    header: dict[str, object] = {}
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    offset = 0
    for name, tag, shape in entries:
        nbytes = math.prod(shape) * DTYPES[tag].itemsize
        header[name] = {"dtype": tag, "shape": list(shape),
                        "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    blob = json.dumps(header, separators=(",", ":")).encode("utf-8")
    blob += b" " * (-len(blob) % 8)  # data starts 8-byte aligned
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".gpuquant-", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(struct.pack("<Q", len(blob)))
            f.write(blob)
            count = 0
            for (name, tag, shape), arr in zip(entries, arrays):
                arr = np.asarray(arr, dtype=DTYPES[tag])
                arr = arr if arr.flags.c_contiguous else arr.copy()  # keeps 0-d arrays 0-d
                if tuple(arr.shape) != tuple(shape):
                    raise FormatError(f"{path}: tensor {name!r} has shape {arr.shape}, "
                                      f"planned {tuple(shape)}")
                f.write(arr.reshape(-1).data)
                count += 1
            if count != len(entries):
                raise FormatError(f"{path}: {len(entries) - count} planned tensor(s) missing")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
