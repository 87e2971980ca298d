"""QuantConfig's float element formats (issue 21): presets, defaults, validation, dicts."""

import json

import pytest

import gpuquant as gq
from gpuquant.config import QuantConfig

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
