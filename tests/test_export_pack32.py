"""The pack-quantized int32 layout against compressed-tensors' own pack_to_int32."""

import numpy as np
import pytest

import gpuquant as gq
from gpuquant.core.pack_quantized import pack32, unpack32, words_from_codes_bytes

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


@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("scheme,granularity", [("int4", "group"), ("int8", "channel")])
def test_pack_weight_matches_the_compressor(rng, symmetric, scheme, granularity):
    """compressed-tensors' PackedQuantizationCompressor.compress, given gpuquant's scales and
    zero points and gpuquant's dequantized weight (on the grid, so it picks gpuquant's codes),
    writes the words gpuquant packs from its own codes."""
    from compressed_tensors.compressors.pack_quantized import PackedQuantizationCompressor
    from compressed_tensors.quantization import QuantizationArgs, QuantizationScheme

    from gpuquant.export.ctensors import PackOptions, quantize_weight

    options = PackOptions(scheme=scheme, granularity=granularity, group_size=32,
                          symmetric=symmetric)
    w = (rng.standard_normal((24, 96)) * 2).astype(np.float32)
    qt, _ = quantize_weight(w, options, "float32")
    on_grid = qt.dequantize(dtype="float32")
    bits = options.bits
    ours = {"weight_packed": words_from_codes_bytes(np.asarray(qt.data), bits, symmetric, 96),
            "weight_zero_point": pack32(np.asarray(qt.zero_point).reshape(24, -1), bits, dim=0)}
    scale = np.asarray(qt.scale, np.float32).reshape(24, -1)
    state = {"weight": torch.from_numpy(on_grid), "weight_scale": torch.from_numpy(scale)}
    if not symmetric:  # compressed-tensors' zero points are signed
        zp = np.asarray(qt.zero_point).reshape(24, -1).astype(np.int16) - (1 << (bits - 1))
        state["weight_zero_point"] = torch.from_numpy(zp.astype(np.int8))
    args = {"num_bits": bits, "type": "int", "symmetric": symmetric, "strategy": granularity}
    if granularity == "group":
        args["group_size"] = 32
    qscheme = QuantizationScheme(targets=["Linear"], weights=QuantizationArgs(**args))
    theirs = PackedQuantizationCompressor.compress(state, qscheme)
    assert np.array_equal(theirs["weight_packed"].numpy(), ours["weight_packed"])
    assert theirs["weight_shape"].tolist() == [24, 96]
    if symmetric:
        assert "weight_zero_point" not in theirs
    else:
        assert np.array_equal(theirs["weight_zero_point"].numpy(), ours["weight_zero_point"])
