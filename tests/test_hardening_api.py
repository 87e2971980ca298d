"""The public API refuses what it cannot use, with a gpuquant error naming the argument (issue 13)."""

import copy
import importlib.metadata
import json
import os
import pydoc
import warnings

import numpy as np
import pytest
from conftest import codes_of

import gpuquant as gq
from gpuquant.calibration import histograms as streaming
from gpuquant.calibration.histograms import HistogramState


# ------------------------------------------------- float64 beyond float32 (item 9)
def test_float64_beyond_float32_is_infinite():
    x = np.array([1.0, 1e39, -2.0])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        qt = gq.quantize(x, gq.QuantConfig(ignore_nonfinite=True))
        assert codes_of(qt).tolist() == [64, 127, -127]
        assert qt.scale == np.float32(2) / np.float32(127)
        per_channel = gq.quantize(x.reshape(1, 3), gq.QuantConfig.int8_per_channel().replace(
            ignore_nonfinite=True))
        assert codes_of(per_channel).tolist() == [[64, 127, -127]]
        for cfg in (gq.QuantConfig(), gq.QuantConfig.int4_per_group(2)):
            with pytest.raises(gq.NonFiniteError, match=r"1 non-finite .* 1e\+39 at index \(1,\)"):
                gq.quantize(x, cfg)


# ----------------------------------------------------------- packing (item 11)
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


# ---------------------------------------------------------------- devices
def test_meta_tensors_are_refused():
    torch = pytest.importorskip("torch")
    x = torch.ones(4, 4, device="meta")
    for call in (lambda: gq.quantize(x), lambda: gq.calibrate(x), lambda: gq.quantize(
            x, backend="triton"), lambda: gq.DynamicQuantizer()(x)):
        with pytest.raises(gq.BackendUnavailableError, match="meta device"):
            call()


# ------------------------------------------------------- constructor arguments
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


# ------------------------------------------------------------ QuantizedTensor
def _parts():
    x = np.linspace(-1, 2, 24, dtype=np.float32).reshape(4, 6)
    qt = gq.quantize(x, gq.QuantConfig.int4_per_group(4, symmetric=False))
    return qt, dict(data=qt.data, scale=qt.scale, zero_point=qt.zero_point, shape=qt.shape,
                    dtype=qt.dtype, config=qt.config)


def test_quantized_tensor_accepts_valid_parts():
    qt, parts = _parts()
    again = gq.QuantizedTensor(**parts)
    np.testing.assert_array_equal(again.dequantize(), qt.dequantize())
    assert again.framework == "numpy" and again.layout == qt.layout


@pytest.mark.parametrize("change,error,match", [
    ({"data": np.zeros((4, 4), np.uint8)}, gq.InvalidShapeError, r"data has shape \(4, 4\)"),
    ({"data": np.zeros((4, 3), np.float32)}, gq.InvalidDtypeError, "data has dtype float32"),
    ({"data": np.zeros((4, 3), np.int8)}, gq.InvalidDtypeError, "needs uint8"),
    ({"scale": np.full((4, 2), np.nan, np.float32)}, gq.InvalidCalibrationError, "scale"),
    ({"scale": np.full((4, 2), 1e-42, np.float32)}, gq.InvalidCalibrationError, "normal"),
    ({"scale": np.ones((4, 2), np.float64)}, gq.InvalidDtypeError, "scale has dtype float64"),
    ({"scale": np.ones((2, 4), np.float32)}, gq.InvalidShapeError, "scale has shape"),
    ({"zero_point": np.full((4, 2), 16, np.int32)}, gq.InvalidCalibrationError, r"\[0, 15\]"),
    ({"zero_point": np.zeros((4, 2), np.int64)}, gq.InvalidDtypeError, "zero_point has dtype"),
    ({"shape": (4, 7)}, gq.InvalidShapeError, "needs"),
    ({"shape": (4, -6)}, gq.InvalidShapeError, "shape="),
    ({"shape": "4x6"}, gq.InvalidShapeError, "shape="),
    ({"dtype": "int8"}, gq.InvalidDtypeError, "dtype='int8'"),
    ({"dtype": np.float32}, gq.InvalidDtypeError, "dtype="),
    ({"config": "int4"}, gq.QuantizationError, "config must be a gq.QuantConfig"),
    ({"data": object()}, gq.InvalidDtypeError, "data has dtype object"),
])
def test_quantized_tensor_validates(change, error, match):
    _, parts = _parts()
    parts.update(change)
    with pytest.raises(error, match=match):
        gq.QuantizedTensor(**parts)


def test_quantized_tensor_parts_stay_together():
    torch = pytest.importorskip("torch")
    _, parts = _parts()
    with pytest.raises(gq.QuantizationError, match="keep the parts together"):
        gq.QuantizedTensor(**dict(parts, scale=torch.from_numpy(parts["scale"])))
    as_torch = {k: torch.from_numpy(v) if isinstance(v, np.ndarray) else v
                for k, v in parts.items()}
    qt = gq.QuantizedTensor(**as_torch)  # no info: the framework is read off the data
    assert qt.framework == "torch" and isinstance(qt.dequantize(), torch.Tensor)
    with pytest.raises(gq.QuantizationError, match="info says numpy on cpu"):
        gq.QuantizedTensor(**as_torch, info=_parts()[0]._info)


def test_trusted_constructor_checks_nothing():
    qt, parts = _parts()
    made = gq.quantize(np.ones(qt.shape, np.float32), qt.config)
    bad = gq.QuantizedTensor._trusted(np.zeros(1, np.float64), parts["scale"], parts["zero_point"],
                                      made._plan)
    assert bad.data.dtype == np.float64 and bad.layout is made.layout and bad.shape == qt.shape


# ------------------------------------------------------------ tampered states
def _calibrator_state(calibration="minmax", momentum=None):
    cfg = gq.QuantConfig.int8_per_channel().replace(calibration=calibration)
    cal = gq.Calibrator(cfg, momentum=momentum)
    rng = np.random.default_rng(3)
    for _ in range(2):
        cal.update(rng.standard_normal((3, 16)).astype(np.float32))
    return cal.state_dict()


@pytest.mark.parametrize("edit,match", [
    (lambda s: s.update(momentum=1.5), "momentum"),
    (lambda s: s.update(momentum=-0.1), "momentum"),
    (lambda s: s.update(momentum="fast"), "momentum"),
    (lambda s: s.update(batches=-1), "batches"),
    (lambda s: s.update(batches=True), "batches"),
    (lambda s: s.update(backend="tpu"), "backend"),
    (lambda s: s.update(lo=[0.0, 1.0]), "lo and hi need 3"),
    (lambda s: s.update(lo=[5.0, 5.0, 5.0]), "lo <= hi"),
    (lambda s: s.update(hi=[float("nan")] * 3), "finite"),
    (lambda s: s.update(unit_shape="3"), "unit_shape"),
    (lambda s: s.update(histogram={"bins": 8}), "histogram"),
    (lambda s: s.pop("lo"), "not a Calibrator state"),
])
def test_tampered_minmax_states(edit, match):
    state = _calibrator_state()
    streaming.check_calibrator_state(copy.deepcopy(state))
    edit(state)
    with pytest.raises(gq.InvalidCalibrationError, match=match):
        streaming.check_calibrator_state(state)


@pytest.mark.parametrize("edit,match", [
    (lambda h: h.update(counts=-h["counts"]), "non-negative"),
    (lambda h: h.update(counts=h["counts"][:, :-2]), "shape"),
    (lambda h: h.update(counts=h["counts"].astype(np.float64) + 0.5), "dtype float64"),
    (lambda h: h.update(counts=h["counts"][:2]), r"radius has shape \(3,\); expected \(2,\)"),
    (lambda h: h.update({k: h[k][:2] for k in ("counts", "radius", "lo", "hi")}),
     "histogram units do not match"),
    (lambda h: h.update(radius=h["radius"] * 3), "powers of two"),
    (lambda h: h.update(radius=h["radius"].astype(np.complex128)), "dtype complex128"),
    (lambda h: h.update(lo=h["lo"][:1]), "shape"),
    (lambda h: h.update(hi=h["hi"] * 1e6), "inside"),
    (lambda h: h.update(bins=7), "bins=7"),
    (lambda h: h.update(bins="4096"), "bins="),
    (lambda h: h.update(radius=None), "all present"),
    (lambda h: h.update(counts="many"), "dtype"),
])
def test_tampered_histogram_states(edit, match):
    state = _calibrator_state("percentile")
    streaming.check_calibrator_state(copy.deepcopy(state))
    HistogramState.from_state(copy.deepcopy(state["histogram"]))
    edit(state["histogram"])
    with pytest.raises(gq.InvalidCalibrationError, match=match):
        streaming.check_calibrator_state(state)


def test_momentum_and_histogram_state_checks():
    assert streaming.check_momentum(None) is None and streaming.check_momentum(np.float32(0.5)) == 0.5
    for bad in (0, 2, float("nan"), True, "0.5", [0.5]):
        with pytest.raises(gq.InvalidCalibrationError, match="momentum"):
            streaming.check_momentum(bad)
    state = _calibrator_state(momentum=0.5)
    state["config"]["calibration"] = {"method": "percentile", "lower": 1.0, "upper": 99.0}
    with pytest.raises(gq.InvalidCalibrationError, match="minmax only"):
        streaming.check_calibrator_state(state)
    with pytest.raises(gq.InvalidCalibrationError, match="bins"):
        HistogramState("4096")


# ------------------------------------------------------------------ polish
def test_help_and_docstrings():
    text = pydoc.render_doc(gq.QuantConfig)
    assert "# ---" not in text
    for name in ("int8_symmetric", "int8_asymmetric", "int8_per_channel", "int4_symmetric",
                 "int4_per_channel", "int4_per_group", "replace", "from_dict"):
        assert getattr(gq.QuantConfig, name).__doc__, name
    assert "0.5 .. 2" in repr(gq.QParams(np.array([0.5, 2.0], np.float32), np.zeros(2, np.int32)))


def test_py_typed_and_version():
    assert os.path.exists(os.path.join(os.path.dirname(gq.__file__), "py.typed"))
    assert gq.__version__ == importlib.metadata.version("gpuquant")


# ------------------------------------------- anything a user can pass (item 11)
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


def test_meta_tensors_cannot_be_saved_or_packed(tmp_path):
    torch = pytest.importorskip("torch")
    meta = torch.ones(3, device="meta")
    with pytest.raises(gq.BackendUnavailableError, match="meta device"):
        gq.save(tmp_path / "m.safetensors", {"a": meta})
    with pytest.raises(gq.InvalidDtypeError, match="codes cannot be read as an array"):
        gq.pack_int4(meta.to(torch.int8))


def test_qparams_repr_never_raises():
    assert repr(gq.QParams(None, None)).startswith("QParams(shape=()")
    assert repr(gq.QParams(np.array(["a"]), np.array(["b"]))).startswith("QParams(shape=(1,)")
