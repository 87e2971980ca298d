"""gq.Calibrator: one combine rule for merge and all_reduce, checked states, threads."""

import copy
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

import gpuquant as gq
from gpuquant.calibration import collective
from gpuquant.calibration import histograms as streaming
from gpuquant.calibration.histograms import HistogramState


class _FakeRank:
    """One rank of a process group simulated with threads: every call deposits its array,
    and all ranks get the reduction over the deposits in rank order (as gloo's two-rank
    SUM: rank 0 + rank 1)."""

    def __init__(self, rank: int, shared: dict):
        self.rank, self.shared = rank, shared

    def __call__(self, values, op):
        shared = self.shared
        shared["in"][self.rank] = np.array(values, copy=True)
        shared["barrier"].wait()
        parts = shared["in"]
        if op == "SUM":
            out = parts[0].copy()
            for p in parts[1:]:
                out = out + p
        else:
            out = (np.maximum if op == "MAX" else np.minimum).reduce(parts)
        shared["barrier"].wait()
        return out


def _all_reduce(pool, calibrators, monkeypatch):
    monkeypatch.setattr(collective, "_Collective", lambda group: group)
    shared = {"in": [None] * len(calibrators), "barrier": threading.Barrier(len(calibrators))}
    futures = [pool.submit(c.all_reduce, _FakeRank(r, shared)) for r, c in enumerate(calibrators)]
    return [f.result(timeout=30) for f in futures]


def _random_state(rng, units, momentum):
    exp = rng.integers(-40, 40, size=units)
    lo = (rng.standard_normal(units) * np.exp2(exp)).astype(np.float32)
    hi = (lo + np.abs(rng.standard_normal(units) * np.exp2(exp + rng.integers(-3, 4)))).astype(
        np.float32)
    hi = np.maximum(lo, hi)
    cfg = gq.QuantConfig(granularity="channel", axis=0, symmetric=False)
    return {"config": cfg.to_dict(), "momentum": momentum, "batches": int(rng.integers(1, 10**6)),
            "backend": "numpy", "unit_shape": [units], "lo": lo.tolist(), "hi": hi.tolist(),
            "histogram": None}


def test_merge_equals_the_all_reduce_combine_bit_for_bit(monkeypatch):
    """2,000 random pairs of moving-average states: merge and all_reduce give the same bits
    (they use one rule, gpuquant.calibration.averages)."""
    rng = np.random.default_rng(7)
    with ThreadPoolExecutor(2) as pool:
        for _ in range(2000):
            units, momentum = int(rng.integers(1, 6)), float(rng.uniform(0.01, 1.0))
            states = [_random_state(rng, units, momentum) for _ in range(2)]
            merged = gq.Calibrator.from_state_dict(states[0]).merge(
                gq.Calibrator.from_state_dict(states[1]))
            reduced = _all_reduce(pool, [gq.Calibrator.from_state_dict(s) for s in states],
                                  monkeypatch)
            want = merged.state_dict()
            for cal in reduced:
                got = cal.state_dict()
                assert got["batches"] == want["batches"]
                assert np.array_equal(np.float32(got["lo"]), np.float32(want["lo"]))
                assert np.array_equal(np.float32(got["hi"]), np.float32(want["hi"]))


def test_merge_is_the_batch_weighted_mean_rounded_once():
    cfg = gq.QuantConfig(symmetric=False)
    a = gq.Calibrator(cfg, momentum=0.5).update(np.array([0.0, 3.0], np.float32))
    b = gq.Calibrator(cfg, momentum=0.5)
    for batch in ([-3.0, 1.0], [-3.0, 1.0]):
        b.update(np.array(batch, np.float32))
    lo, hi = a.merge(b).range()
    assert (float(lo), float(hi), a.batches) == (-2.0, np.float32(5 / 3), 3)


def _minmax_state():
    cal = gq.Calibrator(gq.QuantConfig.int8_per_channel(axis=-1), momentum=0.5)
    cal.update(np.arange(12, dtype=np.float32).reshape(4, 3))
    return cal.state_dict()


@pytest.mark.parametrize("key,value", [
    ("momentum", 1.5), ("momentum", "fast"), ("batches", -1), ("backend", "tpu"),
    ("lo", [20.0, 20.0, 20.0]), ("hi", [1.0, float("nan"), 2.0]), ("lo", [0.0, 1.0]),
    ("hi", [11.0]),
])
@pytest.mark.parametrize("load", ["load_state_dict", "from_state_dict"])
def test_loading_a_bad_state_names_the_key(key, value, load):
    state = _minmax_state()
    gq.Calibrator.from_state_dict(copy.deepcopy(state))  # the untouched state loads
    state[key] = value
    if key == "lo" and len(value) == 3:  # lo > hi
        key = "lo <= hi"
    target = gq.Calibrator(gq.QuantConfig.int8_per_channel(axis=-1), momentum=0.5)
    before = target.state_dict()
    with pytest.raises(gq.InvalidCalibrationError, match=key):
        if load == "from_state_dict":
            gq.Calibrator.from_state_dict(state)
        else:
            target.load_state_dict(state)
    assert target.state_dict() == before  # nothing changed


def test_bad_arguments_raise_quantization_errors():
    with pytest.raises(gq.InvalidCalibrationError, match=r"missing \['backend', 'batches'"):
        gq.Calibrator.from_state_dict({})
    with pytest.raises(gq.InvalidCalibrationError, match="not a Calibrator state"):
        gq.Calibrator.from_state_dict(5)
    with pytest.raises(gq.QuantizationError, match="takes a gq.Calibrator, got int"):
        gq.Calibrator().merge(5)
    with pytest.raises(gq.InvalidCalibrationError, match="momentum"):
        gq.Calibrator(momentum="fast")
    with pytest.raises(gq.QuantizationError, match="momentum"):
        gq.Calibrator(momentum=0.5).merge(gq.Calibrator(momentum=0.25))


@pytest.mark.parametrize("method", ["minmax", "percentile"])
def test_update_from_four_threads_equals_a_sequential_run(method):
    rng = np.random.default_rng(3)
    cfg = gq.QuantConfig(granularity="channel", axis=-1, calibration=method)
    batches = [rng.standard_normal((64, 16)).astype(np.float32) * (1 + i % 7) for i in range(160)]
    sequential = gq.Calibrator(cfg)
    for b in batches:
        sequential.update(b)
    threaded = gq.Calibrator(cfg)
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(threaded.update, batches))
    want, got = sequential.state_dict(), threaded.state_dict()
    assert got["batches"] == want["batches"] == len(batches)
    if method == "percentile":
        for key in ("counts", "radius", "lo", "hi"):
            assert np.array_equal(got["histogram"][key], want["histogram"][key]), key
    for x, y in zip(threaded.qparams(), sequential.qparams()):
        assert np.array_equal(x, y)


def test_a_calibrator_copies_and_pickles():
    import pickle

    cal = gq.Calibrator(gq.QuantConfig(calibration="percentile")).update(np.arange(9.0))
    for other in (copy.deepcopy(cal), pickle.loads(pickle.dumps(cal))):
        assert np.array_equal(other.qparams().scale, cal.qparams().scale)
        other.update(np.arange(3.0))  # with its own lock
        assert other.batches == 2 and cal.batches == 1


def test_calibration_required():
    with pytest.raises(gq.CalibrationRequiredError, match="update"):
        gq.Calibrator(gq.QuantConfig()).qparams()


# --------------------- tampered states (gpuquant.calibration.histograms.check_calibrator_state)
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
