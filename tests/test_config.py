"""gq.QuantConfig (gpuquant/config.py), the float formats' rules (gpuquant/formats/schemes.py)
and the calibration methods it takes (gpuquant/calibration/methods.py): presets, dicts, reprs,
and the validation of every argument, integer and float."""

import json
import pydoc

import numpy as np
import pytest

import gpuquant as gq
from gpuquant.config import QuantConfig


def test_presets():
    assert gq.QuantConfig.int8_symmetric().describe() == "int8/tensor/sym/minmax"
    assert gq.QuantConfig.int8_asymmetric().symmetric is False
    c = gq.QuantConfig.int8_per_channel(num_channels=16, axis=-1)
    assert (c.granularity, c.axis, c.num_channels) == (gq.Granularity.CHANNEL, -1, 16)
    assert gq.QuantConfig.int4_symmetric().bits == 4
    assert gq.QuantConfig.int4_per_channel().granularity == "channel"
    g = gq.QuantConfig.int4_per_group()
    # one story (issue 13): symmetric by default everywhere, int4_per_group included
    assert (g.group_size, g.symmetric) == (128, True)
    assert g == gq.QuantConfig(scheme=4, granularity="group")
    assert gq.QuantConfig.int4_per_group(symmetric=False).qmin == 0
    assert gq.QuantConfig(granularity="per_group").group_size == 128


def test_scheme_compression_ratio():
    assert [gq.Scheme(s).compression_ratio for s in ("int4", "int8", "int16")] == [8.0, 4.0, 2.0]
    assert gq.Scheme.from_value(8) is gq.Scheme.INT8
    assert gq.QuantConfig(scheme=16).scheme is gq.Scheme.INT16


@pytest.mark.parametrize("cfg", [
    gq.QuantConfig(),
    gq.QuantConfig.int4_per_group(64, symmetric=False),
    gq.QuantConfig.int8_per_channel(num_channels=3, axis=-2),
    gq.QuantConfig(scheme="int16", calibration=gq.Percentile(0.5, 99.5), nibble_order="low_first",
                   ignore_nonfinite=True),
    gq.QuantConfig(granularity="token", calibration="percentile"),
])
def test_dict_roundtrip_through_json(cfg):
    d = json.loads(json.dumps(cfg.to_dict()))
    assert gq.QuantConfig.from_dict(d) == cfg


def test_from_dict_rejects_unknown_keys():
    with pytest.raises(gq.QuantizationError, match="unknown keys"):
        gq.QuantConfig.from_dict({"scheme": "int8", "bits": 8})


def test_reprs_are_readable():
    assert repr(gq.QuantConfig.int4_per_group()) == (
        "QuantConfig(scheme='int4', granularity='group', symmetric=True, group_size=128, "
        "calibration='minmax', nibble_order='high_first')")
    assert "Percentile" not in repr(gq.QuantConfig(calibration=gq.Percentile(1, 99)))
    qt = gq.quantize(np.ones((4, 8), np.float32), gq.QuantConfig.int4_per_group(4))
    r = repr(qt)
    assert r.startswith("QuantizedTensor(shape=(4, 8), dtype=float32, scheme=int4")
    assert "granularity=group(4)" in r and "data=uint8(4, 4)" in r


def test_help_and_docstrings():
    text = pydoc.render_doc(gq.QuantConfig)
    assert "# ---" not in text
    for name in ("int8_symmetric", "int8_asymmetric", "int8_per_channel", "int4_symmetric",
                 "int4_per_channel", "int4_per_group", "replace", "from_dict"):
        assert getattr(gq.QuantConfig, name).__doc__, name
    assert "0.5 .. 2" in repr(gq.QParams(np.array([0.5, 2.0], np.float32), np.zeros(2, np.int32)))


# ------------------------------------------------------------------ integer configs: validation
@pytest.mark.parametrize("kwargs,match", [
    ({"granularity": "channel", "num_channels": np.array([1, 2])}, "num_channels"),
    ({"granularity": "group", "group_size": np.array([1, 2])}, "group_size"),
    ({"granularity": "group", "group_size": 2.0}, "group_size"),
    ({"nibble_order": np.array([1, 2])}, "nibble_order"),
    ({"nibble_order": ["high_first"]}, "nibble_order"),
    ({"calibration": {"method": []}}, "calibration"),
    ({"scheme": 4.0}, "scheme"),
    ({"axis": "0"}, "axis"),
])
def test_quantconfig_argument_types(kwargs, match):
    with pytest.raises(gq.QuantizationError, match=match):
        gq.QuantConfig(**kwargs)


@pytest.mark.parametrize("data", [{"calibration": {"method": []}},
                                  {"calibration": {"method": "mse", "steps": 3}},
                                  {"calibration": {"method": "percentile", "lower": "a"}},
                                  {"calibration": 5}, {"scheme": {}}, []])
def test_from_dict_refuses_tampered_dicts(data):
    with pytest.raises(gq.QuantizationError):
        gq.QuantConfig.from_dict(data)


@pytest.mark.parametrize("size", [0, -3, 2.5, True])
def test_group_size(size):
    with pytest.raises(gq.InvalidShapeError, match="group_size"):
        gq.QuantConfig(granularity="group", group_size=size)


def test_config_type_checks():
    with pytest.raises(gq.QuantizationError, match="symmetric"):
        gq.QuantConfig(symmetric="yes")
    with pytest.raises(gq.InvalidShapeError, match="group_size"):
        gq.QuantConfig(granularity="tensor", group_size=64)
    with pytest.raises(gq.QuantizationError, match="config must be"):
        gq.quantize(np.ones(3), config="int8")


def test_unknown_scheme_and_calibrations():
    for bad in ["int3", 5, "fp8", None]:
        with pytest.raises(gq.InvalidBitWidthError, match="accepted: 'int4', 'int8', 'int16'"):
            gq.QuantConfig(scheme=bad)
    assert issubclass(gq.InvalidBitWidthError, gq.UnsupportedSchemeError)
    with pytest.raises(gq.UnsupportedSchemeError, match="granularity"):
        gq.QuantConfig(granularity="block")
    with pytest.raises(gq.UnsupportedSchemeError, match="int4 and int8"):
        gq.QuantConfig(scheme="int16", calibration="entropy")
    with pytest.raises(gq.InvalidCalibrationError, match="bins"):
        gq.Entropy(bins=1)
    with pytest.raises(gq.InvalidCalibrationError, match="bins >= 128"):
        gq.QuantConfig(scheme="int8", calibration=gq.Entropy(64))
    with pytest.raises(gq.InvalidCalibrationError, match="candidates"):
        gq.MSE(candidates=0)
    with pytest.raises(gq.UnsupportedSchemeError, match="accepted"):
        gq.QuantConfig(calibration="magic")


# --------------------------------------- calibration methods: gq.Percentile, gq.Entropy, gq.MSE
@pytest.mark.parametrize("lower,upper", [(-1, 50), (10, 101), (60, 40), (50, 50), ("a", 9)])
def test_percentile_bounds(lower, upper):
    with pytest.raises(gq.InvalidCalibrationError, match="Percentile"):
        gq.Percentile(lower, upper)


def test_calibration_limits_are_named():
    with pytest.raises(gq.InvalidCalibrationError, match=r"\[1, 1000\]"):
        gq.MSE(10 ** 9)
    with pytest.raises(gq.InvalidCalibrationError, match=r"\[2, 16384\]"):
        gq.Entropy(1 << 20)
    assert gq.MSE(1000).candidates == 1000 and gq.Entropy(16384).bins == 16384
    # NumPy scalars are numbers too, stored as Python ones (JSON-serialisable in to_dict)
    assert type(gq.MSE(np.int64(10)).candidates) is int and gq.Entropy(np.int32(256)).bins == 256
    assert gq.Percentile(np.float32(1), np.int64(99)).upper == 99.0
    json_ready = gq.QuantConfig(calibration=gq.MSE(np.int64(10))).to_dict()
    assert json.loads(json.dumps(json_ready))["calibration"]["candidates"] == 10
    for cls in (gq.MSE, gq.Entropy, gq.Percentile):
        for bad in ("10", [3], None, 2.5j):
            with pytest.raises(gq.InvalidCalibrationError):
                cls(bad)


# ----------------------- float element formats (issue 21): presets, defaults, validation, dicts
PRESETS = [
    QuantConfig.fp8_per_tensor(), QuantConfig.fp8_per_channel(), QuantConfig.fp8_per_token(),
    QuantConfig.fp8_per_group(), QuantConfig.fp8_block(), QuantConfig.fp8_block((64, 32), "fp8_e5m2"),
    QuantConfig.mxfp8(), QuantConfig.mxfp8("rceil", "fp8_e5m2"), QuantConfig.mxfp4("even"),
    QuantConfig.nvfp4(), QuantConfig.nvfp4("modelopt"), QuantConfig.nf4(), QuantConfig.nf4(128),
]


@pytest.mark.parametrize("cfg", PRESETS, ids=lambda c: c.describe())
def test_float_presets_round_trip_through_json(cfg):
    d = json.loads(json.dumps(cfg.to_dict()))
    assert QuantConfig.from_dict(d) == cfg
    assert cfg.is_float and cfg.element == cfg.scheme.value


def test_preset_attributes_follow_the_interface():
    nv = QuantConfig.nvfp4()
    assert (nv.element, nv.scale_format, nv.granularity, nv.group_size) == ("fp4_e2m1", "e4m3", "group", 16)
    assert nv.global_scale_convention == "compressed_tensors" and nv.scale_rule is None
    mx = QuantConfig.mxfp4()
    assert (mx.scale_format, mx.group_size, mx.scale_rule) == ("e8m0", 32, "floor")
    assert QuantConfig.mxfp8("RCEIL").scale_rule == "rceil"
    assert QuantConfig.mxfp8().element == "fp8_e4m3" and QuantConfig.mxfp8().bits == 8
    assert QuantConfig.fp8_block().block_shape == (128, 128)
    assert QuantConfig.fp8_per_channel().axis == 0
    assert (QuantConfig.nf4().group_size, QuantConfig.nf4().scale_format) == (64, "float32")
    assert QuantConfig.fp8_per_tensor().scale_format == "float32"
    assert str(QuantConfig.fp8_block().granularity) == "block"
    # the defaults a bare config fills in
    assert QuantConfig(scheme="fp4_e2m1", granularity="group").scale_format == "e8m0"
    assert QuantConfig(scheme="fp4_e2m1", granularity="group", scale_format="e4m3").group_size == 16
    assert QuantConfig(scheme="fp8_e4m3", granularity="block").block_shape == (128, 128)


def test_integer_configs_keep_their_dict_and_bits():
    assert "scale_format" not in QuantConfig().to_dict()
    assert QuantConfig().scale_format == "float32" and not QuantConfig().is_float
    assert [gq.Scheme(s).bits for s in ("int4", "int8", "int16", "nf4", "fp8_e5m2")] == [4, 8, 16, 4, 8]
    assert QuantConfig.from_dict({"scheme": "int4", "granularity": "group"}).group_size == 128


@pytest.mark.parametrize("kwargs, error, words", [
    (dict(scheme="fp4_e2m1", granularity="tensor"), gq.UnsupportedSchemeError, "granularity='tensor'"),
    (dict(scheme="nf4", granularity="channel"), gq.UnsupportedSchemeError, "'group'"),
    (dict(scheme="fp8_e4m3", scale_format="e4m3"), gq.UnsupportedSchemeError, "scale_format='e4m3'"),
    (dict(scheme="nf4", granularity="group", scale_format="e8m0"), gq.UnsupportedSchemeError,
     "accepted: 'float32'"),
    (dict(scheme="fp4_e2m1", granularity="group", scale_rule="round"), gq.UnsupportedSchemeError,
     "scale_rule='round'"),
    (dict(scheme="fp8_e4m3", scale_rule="floor"), gq.UnsupportedSchemeError, "scale_format='e8m0'"),
    (dict(scheme="fp4_e2m1", granularity="group", global_scale_convention="modelopt"),
     gq.UnsupportedSchemeError, "scale_format='e4m3'"),
    (dict(scheme="fp4_e2m1", granularity="group", scale_format="e4m3", global_scale_convention="x"),
     gq.UnsupportedSchemeError, "'compressed_tensors', 'modelopt'"),
    (dict(scheme="fp8_e4m3", granularity="block", block_shape=(128,)), gq.InvalidShapeError, "block_shape"),
    (dict(scheme="fp8_e4m3", granularity="block", block_shape=(0, 4)), gq.InvalidShapeError, ">= 1"),
    (dict(scheme="fp8_e4m3", block_shape=(4, 4)), gq.UnsupportedSchemeError, "granularity='block'"),
    (dict(scheme="int8", granularity="block"), gq.UnsupportedSchemeError, "fp8 elements only"),
    (dict(scheme="int8", scale_rule="floor"), gq.UnsupportedSchemeError, "float elements only"),
    (dict(scheme="int4", scale_format="e8m0"), gq.UnsupportedSchemeError, "scale_format"),
    (dict(scheme="fp8_e4m3", symmetric=False), gq.UnsupportedSchemeError, "symmetric=True"),
    (dict(scheme="fp8_e4m3", calibration="mse"), gq.UnsupportedSchemeError, "calibration='minmax'"),
    (dict(scheme="fp6_e2m3"), gq.InvalidBitWidthError, "'nf4'"),
])
def test_invalid_float_combinations_name_the_argument(kwargs, error, words):
    with pytest.raises(error, match=words.replace("(", r"\(").replace(")", r"\)")):
        QuantConfig(**kwargs)


def test_reprs_and_labels():
    assert QuantConfig.nvfp4().describe() == "fp4_e2m1/group16/e4m3/compressed_tensors"
    assert QuantConfig.fp8_block().describe() == "fp8_e4m3/block128x128/float32"
    assert "scale_rule='floor'" in repr(QuantConfig.mxfp4())
    assert "nibble_order" not in repr(QuantConfig.nf4())
