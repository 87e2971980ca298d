"""The launch plans' structure, checked without a GPU (issue: GPU speed).

Launches are recorded instead of run (gpuquant.backends.triton.launch.recording),
so these count launches and watch what a repeated call does on the host:
one launch per fused quantize, dequantize and per-token call, no copy to the
host, no event and no synchronisation, and the plan built once. The values
themselves are checked bit for bit by test_triton_kernels.py.
"""

import numpy as np
import pytest
from conftest import CUDA, INTERPRET

import gpuquant as gq
from gpuquant.backends.triton.launch import recording

torch = pytest.importorskip("torch")
pytest.importorskip("triton")
if not INTERPRET or CUDA:
    pytest.skip("runs the launchers on CPU tensors under TRITON_INTERPRET=1",
                allow_module_level=True)

G128 = gq.QuantConfig(scheme="int4", granularity="group", group_size=128, symmetric=False)
UNITS, TILE = "dequantize_units_kernel", "dequantize_tile_kernel"
CASES = [  # (shape, config, launches of a min/max quantize, the dequantize kernel)
    ((64, 256), G128, 1, UNITS),  # units that are runs of the flat tensor: groups, rows
    ((64, 256), G128.replace(symmetric=True), 1, UNITS),
    ((64, 256), gq.QuantConfig.int8_per_channel(), 1, UNITS),
    ((16, 4096), gq.QuantConfig(granularity="token"), 1, UNITS),
    ((64, 250), gq.QuantConfig(scheme="int4", granularity="group", group_size=32), 1, TILE),  # ragged
    ((64, 256), gq.QuantConfig.int8_symmetric(), 3, TILE),  # per tensor: partials, qparams, codes
    ((64, 256), gq.QuantConfig.int8_per_channel(axis=-1), 3, TILE),
    ((4, 6, 8), gq.QuantConfig.int8_per_channel(axis=1), 3, TILE),  # rows share channels
]


def launches_of(fn):
    with recording() as launches:
        fn()
    return [launch.name for launch in launches]


@pytest.mark.parametrize("shape,cfg,count,dequantize", CASES,
                         ids=[f"{c.describe()}-{s}" for s, c, _, _ in CASES])
def test_launches_per_call(shape, cfg, count, dequantize):
    x = torch.randn(shape, dtype=torch.float16)
    quantize = launches_of(lambda: gq.quantize(x, cfg, backend="triton"))
    assert len(quantize) == count, quantize
    if count == 1:
        assert quantize == ["fused_units_kernel"]
    qt = gq.quantize(x, cfg, backend="triton")
    assert launches_of(qt.dequantize) == [dequantize]
    given = launches_of(lambda: gq.quantize(x, cfg, qparams=(qt.scale, qt.zero_point),
                                            backend="triton"))
    assert given == ["quantize_tile_kernel"]


def test_dynamic_per_token_is_one_launch():
    dq = gq.DynamicQuantizer("int8", per_token=True, backend="triton")
    x = torch.randn(16, 4096, dtype=torch.bfloat16)
    assert launches_of(lambda: dq(x)) == ["fused_units_kernel"]


def test_int4_fast_path_loads_pairs_and_has_no_masks():
    x = torch.randn(64, 256, dtype=torch.float16)
    with recording() as launches:
        gq.quantize(x, G128, backend="triton")
    flags = launches[0].constexprs
    assert flags["PAIRS"] and flags["EVEN"] and flags["FLAT"]
    assert launches[0].args[0].dtype == torch.int32  # two float16 a word
    odd = x[:, 1:]  # misaligned rows: the general path, still one launch
    with recording() as launches:
        gq.quantize(odd, G128, backend="triton")
    assert len(launches) == 1 and not launches[0].constexprs["EVEN"]
    shifted = torch.randn(64 * 256 + 1, dtype=torch.float16)[1:].view(64, 256)  # odd offset
    for _ in range(2):  # the unpaired fallback, built once, gives the reference's bits
        with recording() as launches:
            gq.quantize(shifted, G128, backend="triton")
        assert len(launches) == 1 and not launches[0].constexprs["PAIRS"]
    got, want = gq.quantize(shifted, G128, backend="triton"), gq.quantize(shifted, G128)
    assert torch.equal(got.data, want.data) and torch.equal(got.scale, want.scale)


class _HostWatch(torch.overrides.TorchFunctionMode):
    """Records every torch function a call uses."""

    def __init__(self):
        super().__init__()
        self.seen = set()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        self.seen.add(getattr(func, "__name__", str(func)))
        return func(*args, **(kwargs or {}))


HOST_TRANSFERS = {"cpu", "item", "tolist", "numpy", "to", "copy_", "synchronize", "__array__"}


@pytest.mark.parametrize("make", [
    lambda x: (lambda: gq.quantize(x, G128, backend="triton")),
    lambda x: (lambda: gq.quantize(x, gq.QuantConfig.int8_per_channel(), backend="triton")),
    lambda x: (lambda: gq.DynamicQuantizer("int8", per_token=True, backend="triton")(x)),
    lambda x: gq.quantize(x, G128, backend="triton").dequantize,
])
def test_repeated_calls_do_no_host_transfer_or_sync(make, monkeypatch):
    x = torch.randn(64, 256, dtype=torch.float16)
    call = make(x)
    call()  # the plan is built here
    for name in ("synchronize", "Event"):
        monkeypatch.setattr(torch.cuda, name, _forbidden(name))
    watch = _HostWatch()
    with recording(), watch:
        call()
    assert not watch.seen & HOST_TRANSFERS, watch.seen


def _forbidden(name):
    def fail(*args, **kwargs):
        raise AssertionError(f"torch.cuda.{name} called on a hot path")
    return fail


def test_plan_is_built_once(monkeypatch):
    from gpuquant.core import plan

    built = []
    original = plan.QuantizePlan.__init__

    def counting(self, *args, **kwargs):
        built.append(1)
        original(self, *args, **kwargs)

    monkeypatch.setattr(plan.QuantizePlan, "__init__", counting)
    plan.clear()
    x = torch.randn(32, 256, dtype=torch.float16)
    for _ in range(3):
        gq.quantize(x + 1, G128, backend="triton")
    assert len(built) == 1
    gq.quantize(torch.randn(16, 256, dtype=torch.float16), G128, backend="triton")
    assert len(built) == 2  # a new shape is a new plan


def test_python_calls_of_a_repeated_call_stay_few():
    """The CPU proxy of the 25 us host-time target: at most 40 Python function calls."""
    import sys

    x = torch.randn(64, 256, dtype=torch.float16)
    dq = gq.DynamicQuantizer("int8", per_token=True, backend="triton")
    qt = gq.quantize(x, G128, backend="triton")
    calls = {"quantize": lambda: gq.quantize(x, G128, backend="triton"),
             "dequantize": qt.dequantize, "dynamic": lambda: dq(x)}
    count = [0]

    def profile(frame, event, arg):
        if event == "call":
            count[0] += 1

    for name, call in calls.items():
        call()
        count[0] = 0
        with recording():
            sys.setprofile(profile)
            try:
                call()
            finally:
                sys.setprofile(None)
        assert count[0] <= 40, (name, count[0])


PERCENTILE = gq.QuantConfig.int8_per_channel().replace(calibration=gq.Percentile(1, 99))


@pytest.mark.parametrize("cfg", [G128, gq.QuantConfig.int8_per_channel(),
                                 gq.QuantConfig.int8_symmetric(), PERCENTILE],
                         ids=lambda c: c.describe())
@pytest.mark.parametrize("backend", ["triton", "numpy"])
def test_out_buffers_get_the_same_bits(cfg, backend):
    x = torch.randn(8, 256, dtype=torch.float16)
    want = gq.quantize(x, cfg, backend=backend)
    out = tuple(torch.empty_like(a) for a in (want.data, want.scale, want.zero_point))
    got = gq.quantize(x, cfg, backend=backend, out=out)
    assert all(a is b for a, b in zip((got.data, got.scale, got.zero_point), out))
    for a, b in zip(out, (want.data, want.scale, want.zero_point)):
        assert torch.equal(a, b)
    y = torch.empty(x.shape, dtype=torch.float16)
    assert got.dequantize(out=y) is y and torch.equal(y, want.dequantize())
    codes = torch.empty_like(want.data)
    given = gq.quantize(x, cfg, qparams=(want.scale, want.zero_point), backend=backend, out=codes)
    assert given.data is codes and torch.equal(codes, want.data)


@pytest.mark.parametrize("backend", ["triton", "numpy"])
def test_bad_out_buffers_name_the_buffer(backend):
    x = torch.randn(8, 256, dtype=torch.float16)
    qt = gq.quantize(x, G128, backend=backend)
    codes, scale, zp = (torch.empty_like(a) for a in (qt.data, qt.scale, qt.zero_point))
    with pytest.raises(gq.InvalidShapeError, match="out"):
        gq.quantize(x, G128, backend=backend, out=(codes[:4], scale, zp))
    with pytest.raises(gq.InvalidDtypeError, match="out"):
        gq.quantize(x, G128, backend=backend, out=(codes, scale.double(), zp))
    with pytest.raises(gq.InvalidDtypeError, match="out"):
        qt.dequantize(out=torch.empty(x.shape, dtype=torch.float32))
    pq = gq.quantize(x, PERCENTILE, backend=backend)  # the percentile path's own check
    with pytest.raises(gq.InvalidShapeError, match="out"):
        gq.quantize(x, PERCENTILE, backend=backend, out=(
            torch.empty_like(pq.data), torch.empty_like(pq.scale)[:2], torch.empty_like(pq.zero_point)))


def test_bfloat16_output_rounds_to_nearest_even():
    """float32 -> bfloat16 in the kernel rounds to nearest even (the interpreter's own cast
    truncates): 257 is a tie between 256 and 258, 32767 rounds up to 32768."""
    x = torch.tensor([[257.0, 32767.0, -257.0, 1.0]])
    cfg = gq.QuantConfig(scheme="int16", granularity="tensor")
    qt = gq.quantize(x, cfg, qparams=(torch.tensor(1.0), torch.tensor(0, dtype=torch.int32)),
                     backend="triton")
    got = qt.dequantize(dtype="bfloat16", backend="triton")
    assert got.float().tolist() == [[256.0, 32768.0, -256.0, 1.0]]
    want = x.to(torch.bfloat16)  # torch rounds to nearest even
    assert torch.equal(got, want)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float32", "float64"])
def test_dequantize_every_output_dtype_matches_the_reference(dtype):
    x = torch.randn(8, 96) * 100
    cfg = gq.QuantConfig(scheme="int8", granularity="group", group_size=32, symmetric=False)
    got = gq.quantize(x, cfg, backend="triton").dequantize(dtype=dtype, backend="triton")
    want = gq.quantize(x, cfg, backend="numpy").dequantize(dtype=dtype, backend="numpy")
    assert got.dtype == want.dtype and torch.equal(got, want)


def test_a_nan_seen_by_a_kernel_is_raised_by_the_next_call():
    from gpuquant.core import nonfinite

    x = torch.randn(4, 256)
    gq.quantize(x, G128, backend="triton")  # the board exists
    board = nonfinite.board_for(x)
    slot = nonfinite.new_slot((4, 256), 8)
    board.host[0] = 3  # what a kernel on a GPU leaves for a later call to see
    board.host[1 + 2 * slot] = 3
    board.host[2 + 2 * slot] = 5
    with pytest.raises(gq.NonFiniteError, match=r"\(4, 256\) has 3 non-finite.*unit 5 "):
        gq.quantize(x, G128, backend="triton")
    assert board.host[0] == 0  # reported once
    gq.quantize(x, G128, backend="triton")
    assert np.all(board.host[2::2] == np.iinfo(np.int32).max)


def test_quantize_warns_once_when_storage_would_grow():
    import warnings

    x = np.arange(1, 9, dtype=np.float32)  # per channel on a 1-D tensor: a scale a value
    cfg = gq.QuantConfig.int8_per_channel()
    with pytest.warns(UserWarning, match="more than its 32"):
        gq.quantize(x, cfg)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the plan is cached: no second warning
        gq.quantize(x + 1, cfg)
        gq.quantize(np.ones((64, 64), np.float32), cfg)  # 4096 + 512 bytes < 16384: quiet
