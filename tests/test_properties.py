"""Hypothesis property tests of the reference."""

import numpy as np
from conftest import codes_of
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import gpuquant as gq

SETTINGS = settings(max_examples=60, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])

configs = st.builds(
    lambda scheme, sym, gran, order: gq.QuantConfig(
        scheme=scheme, symmetric=sym, nibble_order=order,
        **({"granularity": "group", "group_size": 3} if gran == "group" else
           {"granularity": gran} if gran != "channel" else {"granularity": "channel", "axis": -1})),
    st.sampled_from(["int4", "int8", "int16"]), st.booleans(),
    st.sampled_from(["tensor", "channel", "group", "token"]),
    st.sampled_from(["high_first", "low_first"]))

finite = st.floats(-1e4, 1e4, allow_nan=False, width=32)
arrays = hnp.arrays(np.float32, hnp.array_shapes(min_dims=1, max_dims=3, max_side=9), elements=finite)


@SETTINGS
@given(arrays, configs)
def test_codes_in_range_and_roundtrip_error(x, cfg):
    qt = gq.quantize(x, cfg)
    codes = codes_of(qt)
    assert codes.min() >= cfg.qmin and codes.max() <= cfg.qmax
    # min/max calibration puts every value inside the clamp range: error <= scale / 2
    y = qt.dequantize().astype(np.float64)
    scale = np.asarray(qt.scale, np.float64)
    layout = qt.layout
    if layout.mode == "col":
        bound = np.broadcast_to(scale, x.shape)
    elif layout.mode == "group":
        bound = np.repeat(scale, 3, axis=-1)[..., : x.shape[-1]]
    elif layout.mode == "row":
        bound = scale[..., None] if cfg.granularity == "token" else scale.reshape(-1, 1)
    else:
        bound = scale
    err = np.abs(y - x)
    # half a step, plus the float32 rounding of the dequantized product and of inv_scale
    assert np.all(err <= np.broadcast_to(bound, x.shape) * (0.5 + 1e-5) + np.abs(x) * 1e-6)


@SETTINGS
@given(hnp.arrays(np.int8, hnp.array_shapes(min_dims=1, max_dims=3, max_side=9),
                  elements=st.integers(-8, 7)), st.sampled_from(["high_first", "low_first"]))
def test_pack_unpack_identity(codes, order):
    back = gq.unpack_int4(gq.pack_int4(codes, order), codes.shape[-1], True, order)
    np.testing.assert_array_equal(back, codes)


@SETTINGS
@given(arrays, configs)
def test_save_load_identity(tmp_path_factory, x, cfg):
    path = tmp_path_factory.mktemp("io") / "t.safetensors"
    qt = gq.quantize(x, cfg)
    gq.save(path, {"t": qt})
    back = gq.load(path)["t"]
    for a in ("data", "scale", "zero_point"):
        np.testing.assert_array_equal(getattr(back, a), getattr(qt, a))
    assert back.config == qt.config and back.shape == qt.shape


@SETTINGS
@given(hnp.arrays(np.float16, hnp.array_shapes(min_dims=1, max_dims=2, max_side=12),
                  elements=st.floats(-6e4, 6e4, allow_nan=False, width=16)), configs)
def test_float16_gives_the_codes_of_the_same_float32_values(x, cfg):
    a, b = gq.quantize(x, cfg), gq.quantize(x.astype(np.float32), cfg)
    np.testing.assert_array_equal(a.data, b.data)
    np.testing.assert_array_equal(a.scale, b.scale)
    np.testing.assert_array_equal(a.zero_point, b.zero_point)
