"""The pack-quantized int32 layout against compressed-tensors' own pack_to_int32."""

import numpy as np
import pytest

import gpuquant as gq
from gpuquant.export.pack32 import pack32, unpack32, words_from_codes_bytes

torch = pytest.importorskip("torch")
helpers = pytest.importorskip("compressed_tensors.compressors.pack_quantized.helpers")

SHAPES = [(5, 37), (7, 64), (1, 8), (33, 3)]


def theirs(stored: np.ndarray, bits: int, dim: int) -> np.ndarray:
    """compressed-tensors packs signed int8 codes (it adds the 2^(b-1) offset itself)."""
    signed = torch.from_numpy(stored.astype(np.int16) - (1 << (bits - 1))).to(torch.int8)
    return helpers.pack_to_int32(signed, bits, packed_dim=dim).numpy()


@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dim", [0, 1])
def test_pack32_matches_compressed_tensors(rng, bits, shape, dim):
    stored = rng.integers(0, 1 << bits, size=shape).astype(np.uint8)
    stored[0, 0], stored[-1, -1] = 0, (1 << bits) - 1  # both ends of the range
    words = pack32(stored, bits, dim=dim)
    want = theirs(stored, bits, dim)
    assert words.dtype == np.int32 and words.shape == want.shape
    assert np.array_equal(words, want)
    n = shape[dim]
    assert np.array_equal(unpack32(words, bits, n, dim=dim), stored)


@pytest.mark.parametrize("scheme", ["int4", "int8"])
@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("cols", [64, 37])
def test_words_from_gpuquant_codes(rng, scheme, symmetric, cols):
    """gpuquant's low-nibble-first bytes become the same words as packing its codes."""
    w = (rng.standard_normal((6, cols)) * 2).astype(np.float32)
    cfg = gq.QuantConfig(scheme=scheme, granularity="channel", symmetric=symmetric,
                         nibble_order="low_first")
    qt = gq.quantize(w, cfg)
    bits = cfg.bits
    codes = np.asarray(qt.data)
    if bits == 4:
        codes = gq.unpack_int4(codes, cols, signed=symmetric, nibble_order="low_first")
    stored = codes.astype(np.int16) + ((1 << (bits - 1)) if symmetric else 0)
    words = words_from_codes_bytes(np.asarray(qt.data), bits, symmetric, cols)
    assert np.array_equal(words, pack32(stored, bits))
    assert np.array_equal(words, theirs(stored.astype(np.uint8), bits, 1))


def test_pack32_refuses_bad_input():
    with pytest.raises(gq.InvalidShapeError, match="bits=2"):
        pack32(np.zeros((2, 8), np.uint8), 2)
    with pytest.raises(gq.InvalidShapeError, match=r"\[0, 15\]"):
        pack32(np.full((2, 8), 16, np.uint8), 4)
