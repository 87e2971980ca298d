"""gq.pack_int4 / gq.unpack_int4 (gpuquant/core/packing.py): hand-packed bytes, round trips, refusals."""

import numpy as np
import pytest
from naive import naive_pack

import gpuquant as gq


def test_hand_packed_bytes():
    codes = np.array([1, -1, 7, -8], np.int8)
    assert gq.pack_int4(codes).tolist() == [0x1F, 0x78]
    assert gq.pack_int4(codes, nibble_order="low_first").tolist() == [0xF1, 0x87]
    # odd length pads one zero nibble
    assert gq.pack_int4(np.array([3, 4, 5])).tolist() == [0x34, 0x50]
    assert gq.pack_int4(np.array([3, 4, 5]), "low_first").tolist() == [0x43, 0x05]


@pytest.mark.parametrize("order", ["high_first", "low_first"])
@pytest.mark.parametrize("shape", [(1,), (7,), (3, 8), (2, 3, 5), ()])
def test_roundtrip_signed_and_unsigned(rng, order, shape):
    signed = rng.integers(-8, 8, shape).astype(np.int8)
    packed = gq.pack_int4(signed, order)
    np.testing.assert_array_equal(packed, naive_pack(signed, order == "high_first"))
    k = shape[-1] if shape else 1
    back = gq.unpack_int4(packed, k, signed=True, nibble_order=order)
    np.testing.assert_array_equal(back, signed.reshape(back.shape))
    unsigned = rng.integers(0, 16, shape).astype(np.uint8)
    back = gq.unpack_int4(gq.pack_int4(unsigned, order), k, signed=False, nibble_order=order)
    assert back.dtype == np.uint8
    np.testing.assert_array_equal(back, unsigned.reshape(back.shape))


def test_negative_codes_keep_their_sign():
    # the original lost the sign of negative codes on unpack
    codes = np.arange(-8, 8, dtype=np.int8)
    assert gq.unpack_int4(gq.pack_int4(codes), 16).tolist() == list(range(-8, 8))


def test_bad_packing_input():
    with pytest.raises(gq.InvalidDtypeError, match="codes"):
        gq.pack_int4(np.array([0.5]))
    with pytest.raises(gq.QuantizationError, match="-8..7"):
        gq.pack_int4(np.array([16]))
    with pytest.raises(gq.InvalidShapeError, match="length=5"):
        gq.unpack_int4(np.zeros(2, np.uint8), 5)
    with pytest.raises(gq.InvalidDtypeError, match="uint8"):
        gq.unpack_int4(np.zeros(2, np.int8), 4)
    with pytest.raises(gq.QuantizationError, match="nibble_order"):
        gq.pack_int4(np.zeros(2, np.int8), nibble_order="middle")


@pytest.mark.parametrize("order", ["high_first", "low_first"])
def test_quantized_int4_data_uses_the_config_order(rng, order):
    x = rng.standard_normal((4, 9)).astype(np.float32)
    qt = gq.quantize(x, gq.QuantConfig(scheme="int4", granularity="group", group_size=4,
                                       nibble_order=order))
    assert qt.data.shape == (4, 5)
    codes = gq.unpack_int4(qt.data, 9, signed=True, nibble_order=order)
    np.testing.assert_array_equal(qt.data, naive_pack(codes, order == "high_first"))


@pytest.mark.parametrize("shape", [(0,), (3, 0), (0, 5), (2, 0, 3)])
def test_pack_int4_of_empty_arrays(shape):
    packed = gq.pack_int4(np.zeros(shape, np.int8))
    assert packed.shape == (*shape[:-1], (shape[-1] + 1) // 2) and packed.dtype == np.uint8
    assert gq.unpack_int4(packed, shape[-1]).shape == shape


def test_pack_int4_refuses_mixed_and_out_of_range_codes():
    with pytest.raises(gq.InvalidDtypeError, match=r"mix signed and unsigned.*-3\.\.12"):
        gq.pack_int4(np.array([-3, 12]))
    with pytest.raises(gq.InvalidDtypeError, match=r"-8\.\.7 \(signed"):
        gq.pack_int4(np.array([9]), signed=True)
    with pytest.raises(gq.InvalidDtypeError, match=r"0\.\.15 \(unsigned"):
        gq.pack_int4(np.array([-1]), signed=False)
    np.testing.assert_array_equal(gq.pack_int4(np.array([1, 2]), signed=False), [0x12])
    for bad in ("yes", 1):
        with pytest.raises(gq.QuantizationError, match="signed="):
            gq.pack_int4(np.array([1]), signed=bad)
        with pytest.raises(gq.QuantizationError, match="signed="):
            gq.unpack_int4(np.zeros(1, np.uint8), 2, signed=bad)
    with pytest.raises(gq.InvalidShapeError, match="length"):
        gq.unpack_int4(np.zeros(1, np.uint8), 2.0)
