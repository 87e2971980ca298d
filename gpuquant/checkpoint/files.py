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
import re
import struct
from collections.abc import Iterable

import numpy as np

from ..errors import FormatError, OutputPathError
from .output import staged_file

__all__ = ["SafetensorsFile", "write_safetensors", "write_safetensors_stream", "DTYPES", "BF16",
           "tag_of", "is_shape", "MAX_HEADER_BYTES", "MAX_TENSORS"]

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
# tags gpuquant writes (as their bit patterns) but reads only when asked (SafetensorsFile(fp8=True):
# inspect of the float exports): FP8 elements and scales
_WRITTEN = {**DTYPES, "F8_E4M3": np.dtype(np.uint8)}
_WITH_FP8 = {**_WRITTEN, "F8_E5M2": np.dtype(np.uint8)}
MAX_HEADER_BYTES = 100 << 20  # the safetensors package refuses larger headers too
MAX_TENSORS = 200_000  # entries per file; parsing costs ~1.4 kB each (a 1M-entry header ~1.4 GB)
MAX_DIMS = 64  # NumPy's own limit on dimensions
_CONTROL = re.compile("[\x00-\x1f\x7f]")
_MAX_INT_DIGITS = 20  # 2^64 has 20 digits; offsets and sizes are below 2^64


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def is_shape(value) -> bool:
    """A list of at most MAX_DIMS integers in [0, 2^63), never booleans."""
    return isinstance(value, list) and len(value) <= MAX_DIMS and all(
        _is_int(d) and 0 <= d < 2 ** 63 for d in value)


def _parse_int(text: str) -> int:
    if len(text.lstrip("-")) > _MAX_INT_DIGITS:
        raise ValueError(f"integer of {len(text)} digits")
    return int(text)


def _refuse_constant(text: str):
    raise ValueError(f"{text} is not JSON")


def _unique_keys(pairs: list) -> dict:
    """A JSON object whose keys are all distinct (the safetensors package refuses repeats)."""
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen: set = set()
        repeated = next(k for k, _ in pairs if k in seen or seen.add(k))
        raise ValueError(f"duplicate key {repeated[:80]!r}")
    return obj


def _check_text(text: str, what: str, fail) -> None:
    """Names and metadata must be valid UTF-8 (no lone surrogates) without control characters."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise fail(f"{what} {text[:80]!r} is not valid UTF-8 (lone surrogate)") from None
    if what == "tensor name" and _CONTROL.search(text):
        raise fail(f"{what} {text[:80]!r} holds control characters")


def tag_of(dtype: np.dtype) -> str:
    tag = _TAGS.get(np.dtype(dtype).newbyteorder("<").str)
    if tag is None:
        raise FormatError(f"dtype {dtype} cannot be stored in safetensors")
    return tag


class SafetensorsFile:
    """Lazy, validated access to one safetensors file (memory-mapped, read-only).

    ``fp8=True`` also reads F8_E4M3 and F8_E5M2 tensors, as their uint8 bit patterns."""

    def __init__(self, path: str | os.PathLike, fp8: bool = False):
        self.path = os.fspath(path)
        self._dtypes = _WITH_FP8 if fp8 else DTYPES
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
        if n > MAX_HEADER_BYTES:
            raise self._fail(f"header length {n} exceeds the limit of {MAX_HEADER_BYTES} bytes "
                             "(100 MiB, as in the safetensors package); not a safetensors file?")
        if n > size - 8:
            raise self._fail(f"not a safetensors file or truncated: header length {n} but the "
                             f"file has {size} bytes")
        header = self._parse(self._file.read(n))
        meta = header.pop("__metadata__", None)
        meta = {} if meta is None else meta
        if not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
            raise self._fail("__metadata__ must map strings to strings")
        for text in [*meta, *meta.values()]:
            _check_text(text, "__metadata__ key or value", self._fail)
        self.metadata: dict[str, str] = meta
        self._start = 8 + n
        data_size = size - self._start
        self._entries: dict[str, tuple[str, tuple[int, ...], int, int]] = {}
        for name, entry in header.items():
            _check_text(name, "tensor name", self._fail)
            self._entries[name] = self._check_entry(name, entry, data_size)
        self._check_tiling(data_size)

    def _parse(self, raw: bytes) -> dict:
        """The header as a dict, or FormatError: never RecursionError, ValueError, ...."""
        if not raw.startswith(b"{"):  # as the safetensors package requires
            raise self._fail("not a safetensors file: header is not a JSON object")
        entries = raw.count(b'"data_offsets"')  # one per tensor, however the names read
        if entries > MAX_TENSORS:  # refuse before building a dict per entry
            raise self._too_many(entries)
        try:
            header = json.loads(raw.decode("utf-8"), parse_int=_parse_int,
                                parse_constant=_refuse_constant, object_pairs_hook=_unique_keys)
        except (UnicodeDecodeError, ValueError, RecursionError, MemoryError) as exc:
            problem = "nested too deeply" if isinstance(exc, RecursionError) else str(exc)
            raise self._fail(f"not a safetensors file: header is not valid JSON "
                             f"({problem[:200]})") from None
        if not isinstance(header, dict):
            raise self._fail("not a safetensors file: header is not a JSON object")
        count = len(header) - ("__metadata__" in header)
        if count > MAX_TENSORS:
            raise self._too_many(count)
        return header

    def _too_many(self, count: int) -> FormatError:
        return self._fail(f"header lists {count} tensors; gpuquant reads at most {MAX_TENSORS} "
                          "per file (shard larger checkpoints)")

    def _check_entry(self, name, entry, data_size):
        if not isinstance(entry, dict) or not {"dtype", "shape", "data_offsets"} <= set(entry):
            raise self._fail(f"tensor {name!r}: header entry must be an object with dtype, "
                             "shape and data_offsets")
        tag, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
        if not isinstance(tag, str) or tag not in self._dtypes:
            raise self._fail(f"tensor {name!r}: unsupported dtype {tag!r}; supported: "
                             + ", ".join(self._dtypes))
        if not is_shape(shape):
            raise self._fail(f"tensor {name!r}: bad shape {str(shape)[:200]}; a shape is a list "
                             f"of at most {MAX_DIMS} non-negative integers")
        if math.prod(d for d in shape if d) * self._dtypes[tag].itemsize >= 2 ** 63:
            raise self._fail(f"tensor {name!r}: shape {shape} is too large for any array")
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(map(_is_int, offsets))
                and 0 <= offsets[0] <= offsets[1]):
            raise self._fail(f"tensor {name!r}: bad data_offsets {str(offsets)[:200]}; "
                             "expected [begin, end] with 0 <= begin <= end")
        begin, end = offsets
        expected = math.prod(shape) * self._dtypes[tag].itemsize
        if end - begin != expected:
            raise self._fail(f"tensor {name!r}: header says {end - begin} bytes but shape "
                             f"{shape} of {tag} needs {expected}")
        if end > data_size:
            raise self._fail(f"truncated: tensor {name!r} ends at byte {end} of the data but "
                             f"the data has {data_size} bytes")
        return tag, tuple(shape), begin, end

    def _check_tiling(self, data_size: int) -> None:
        """Tensors cover the data exactly, without overlap (the safetensors package's rule)."""
        spans = sorted((e[2], e[3], name) for name, e in self._entries.items())
        at = 0
        for begin, end, name in spans:
            if begin != at:
                what = "overlaps the tensor before it" if begin < at else "leaves a gap before it"
                raise self._fail(f"tensor {name!r} at data bytes {begin}..{end} {what} (at {at})")
            at = end
        if at != data_size:
            raise self._fail(f"the tensors cover {at} bytes of data but the file holds "
                             f"{data_size}")

    # ---------------------------------------------------------------- access
    def keys(self) -> list[str]:
        return list(self._entries)

    def __contains__(self, name: str) -> bool:
        return name in self._entries

    def _entry(self, name: str) -> tuple[str, tuple[int, ...], int, int]:
        try:
            return self._entries[name]
        except (KeyError, TypeError):
            raise self._fail(f"no tensor named {name!r}") from None

    def dtype_tag(self, name: str) -> str:
        return self._entry(name)[0]

    def shape(self, name: str) -> tuple[int, ...]:
        return self._entry(name)[1]

    def nbytes(self, name: str) -> int:
        _, _, begin, end = self._entry(name)
        return end - begin

    def get(self, name: str) -> np.ndarray:
        """The tensor read into a new NumPy array (BF16 as uint16 bits).

        Plain reads, not a memory map: only the tensors a caller holds count
        towards its memory, never the whole file.
        """
        tag, shape, begin, end = self._entry(name)
        arr = np.empty(shape, self._dtypes[tag])
        view = memoryview(arr.reshape(-1)).cast("B")
        done = 0
        while done < end - begin:
            n = os.preadv(self._file.fileno(), [view[done:]], self._start + begin + done)
            if n <= 0:
                raise self._fail(f"truncated while reading tensor {name!r}")
            done += n
        dtype = self._dtypes[tag]
        return arr if dtype.isnative else arr.astype(dtype.newbyteorder("="))

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> SafetensorsFile:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _output_folder(path: str) -> str:
    """The existing folder that will hold ``path``; OutputPathError naming what is wrong."""
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        given = os.path.dirname(path) or "."
        raise OutputPathError(f"{path}: the output folder {given!r} does not exist; create it "
                              "first")
    if os.path.isdir(path):
        raise OutputPathError(f"{path}: is a folder; give a file name such as "
                              f"{os.path.join(path, 'model.safetensors')!r}")
    return directory


def write_safetensors(path: str | os.PathLike,
                      tensors: Iterable[tuple[str, str, np.ndarray]],
                      metadata: dict[str, str] | None = None) -> None:
    """Write ``(name, dtype tag, array)`` triples atomically (temporary file, then rename)."""
    items = list(tensors)
    write_safetensors_stream(path, [(name, tag, arr.shape) for name, tag, arr in items],
                             (arr for _, _, arr in items), metadata)


def _header_blob(path: str, entries, metadata) -> bytes:
    """The JSON header of ``entries`` (offsets in file order), padded to 8 bytes."""
    header: dict[str, object] = {}

    def fail(problem: str) -> FormatError:
        return FormatError(f"{path}: {problem}; such a file could not be read back")

    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
        for text in [*header["__metadata__"], *header["__metadata__"].values()]:
            _check_text(text, "__metadata__ key or value", fail)
    for name, _, _ in entries:
        _check_text(name, "tensor name", fail)
        if name == "__metadata__":
            raise fail("tensor name '__metadata__' is reserved for the header's metadata")
    offset = 0
    for name, tag, shape in entries:
        nbytes = math.prod(shape) * _WRITTEN[tag].itemsize
        header[name] = {"dtype": tag, "shape": list(shape),
                        "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    blob = json.dumps(header, separators=(",", ":")).encode("utf-8")
    return blob + b" " * (-len(blob) % 8)  # data starts 8-byte aligned


def write_safetensors_stream(path: str | os.PathLike,
                             entries: list[tuple[str, str, tuple[int, ...]]],
                             arrays: Iterable[np.ndarray],
                             metadata: dict[str, str] | None = None) -> None:
    """Write a file whose header is known up front and whose arrays come one at a time.

    ``entries`` are (name, dtype tag, shape) in file order; ``arrays`` yields
    the matching arrays lazily, so peak memory stays near the largest one.
    The file appears under ``path`` only once complete, through
    gpuquant.checkpoint.output (a temporary file in the same folder, fsync, rename; an existing
    regular file is replaced, anything else at ``path`` refused); on any failure nothing is
    left behind.
    """
    path = os.fspath(path)
    _output_folder(path)
    if len(entries) > MAX_TENSORS:
        raise FormatError(f"{path}: {len(entries)} tensors; a file holds at most {MAX_TENSORS} "
                          "(shard the checkpoint)")
    blob = _header_blob(path, entries, metadata)
    with staged_file(path, force=True) as tmp, open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(blob)))
        f.write(blob)
        count = 0
        for (name, tag, shape), arr in zip(entries, arrays):
            arr = np.asarray(arr, dtype=_WRITTEN[tag])
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
