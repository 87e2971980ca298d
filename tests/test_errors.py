"""gpuquant/errors.py: the error hierarchy, and the rule every public function keeps: an argument
it cannot use raises a QuantizationError subclass (each module's own test file checks the
messages that name the argument and what is accepted)."""

import os

import numpy as np
import pytest

import gpuquant as gq


def test_hierarchy():
    for name in ["InvalidBitWidthError", "InvalidShapeError", "InvalidChannelCountError",
                 "EmptyTensorError", "CalibrationRequiredError", "UnsupportedSchemeError",
                 "InvalidDtypeError", "InvalidCalibrationError", "NonFiniteError",
                 "BackendUnavailableError", "FormatError"]:
        cls = getattr(gq, name)
        assert issubclass(cls, gq.QuantizationError) and issubclass(cls, ValueError)


RAGGED = [[1.0], [1.0, 2.0]]


def _saved(tmp_path):
    path = tmp_path / "v.safetensors"
    gq.save(path, {"a": np.ones(2, np.float32)})
    return path


@pytest.mark.parametrize("call", [
    lambda p: gq.quantize(RAGGED), lambda p: gq.calibrate(RAGGED), lambda p: gq.sqnr(RAGGED, RAGGED),
    lambda p: gq.mse(np.ones(2), RAGGED), lambda p: gq.pack_int4(RAGGED),
    lambda p: gq.unpack_int4(RAGGED, 2), lambda p: gq.pack_int4([1], nibble_order=np.ones(2)),
    lambda p: gq.save(p / "x.safetensors", {"a": RAGGED}),
    lambda p: gq.save(p / "x.safetensors", {"a": np.ones(2)}, metadata=["k"]),
    lambda p: gq.save(None, {"a": np.ones(2)}), lambda p: gq.load(5),
    lambda p: gq.load(_saved(p), framework=np.ones(2)),
    lambda p: gq.load(_saved(p), device=np.ones(2)),
    lambda p: gq.save(p / "x.safetensors", {"a": np.array(["text"])}),
    lambda p: gq.save(p / "x.safetensors", {"a": np.ones(2, np.complex64)}),
], ids=["quantize", "calibrate", "sqnr", "mse", "pack", "unpack", "nibble_order", "save ragged",
        "save metadata", "save path", "load path", "load framework", "load device", "save text",
        "save complex"])
def test_unusable_arguments_raise_gpuquant_errors(tmp_path, call):
    with pytest.raises(gq.QuantizationError):
        call(tmp_path)
    assert not [n for n in os.listdir(tmp_path) if n.startswith(".gpuquant-")]
