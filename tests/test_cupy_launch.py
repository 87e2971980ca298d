"""CuPy launches go to CuPy's current stream (backends/array_ops._CupyLaunch and
backends/triton/launch.stream_stack), checked with a fake cupy module and a fake Triton
driver: the driver's get_current_stream is wrapped once, answers CuPy's stream inside a CuPy
launch block of the same thread, and asks the original (torch's stream) everywhere else."""

import sys
import threading
import types

import pytest

from gpuquant.backends import array_ops
from gpuquant.backends.triton import launch as launch_module

TORCH_STREAM = 7000  # the original get_current_stream answers TORCH_STREAM + device
CUPY_STREAM = 5000  # a thread's CuPy stream on a device, unless set: CUPY_STREAM + device


class FakeDriver:
    """Triton's active driver as _CupyLaunch uses it; counts writes of get_current_stream."""

    def __init__(self):
        self.__dict__.update(writes=0, devices=[],
                             get_current_stream=lambda device: TORCH_STREAM + device)

    def __setattr__(self, name, value):
        if name == "get_current_stream":
            self.__dict__["writes"] += 1
        self.__dict__[name] = value

    def set_current_device(self, device):
        self.devices.append(device)


class FakeArray:
    def __init__(self, device_id):
        self.device = types.SimpleNamespace(id=device_id)


def _fake_cupy():
    """cupy.ndarray, cupy.cuda.Device (a per-thread device stack) and
    cupy.cuda.get_current_stream (per thread and device, as CuPy's)."""
    state = threading.local()

    def devices():
        if not hasattr(state, "devices"):
            state.devices, state.streams = [0], {}
        return state.devices

    class Device:
        def __init__(self, device_id):
            self.id = device_id

        def __enter__(self):
            devices().append(self.id)
            return self

        def __exit__(self, *exc):
            devices().pop()

    def get_current_stream():
        device = devices()[-1]
        return types.SimpleNamespace(ptr=state.streams.get(device, CUPY_STREAM + device))

    def use_stream(ptr):  # what `with cupy.cuda.Stream(): ...` does on the current device
        device = devices()[-1]
        state.streams[device] = ptr

    cupy = types.ModuleType("cupy")
    cupy.ndarray = FakeArray
    cupy.cuda = types.SimpleNamespace(Device=Device, get_current_stream=get_current_stream,
                                      use_stream=use_stream, devices=devices)
    return cupy


@pytest.fixture
def fakes(monkeypatch):
    """(CupyOps on the fake cupy, the fake driver, the fake cupy)."""
    try:
        import triton  # noqa: F401  (the real package first: it imports triton.runtime itself)
    except ImportError:
        monkeypatch.setitem(sys.modules, "triton", types.ModuleType("triton"))
    driver = FakeDriver()
    runtime = types.ModuleType("triton.runtime")
    runtime.driver = types.SimpleNamespace(active=driver)
    monkeypatch.setitem(sys.modules, "triton.runtime", runtime)
    cupy = _fake_cupy()
    monkeypatch.setitem(sys.modules, "cupy", cupy)
    monkeypatch.setattr(launch_module, "_wrappers", {})  # CupyOps registers its argument wrapper
    return array_ops.CupyOps(), driver, cupy


def test_the_driver_is_wrapped_once_across_many_launches(fakes):
    ops, driver, cupy = fakes
    assert driver.writes == 0
    for i in range(50):
        with ops.launching(FakeArray(i % 2)):
            assert driver.get_current_stream(i % 2) == CUPY_STREAM + i % 2
        assert driver.get_current_stream(i % 2) == TORCH_STREAM + i % 2
    with array_ops.CupyOps().launching(FakeArray(0)):  # a second adapter: no new wrapper
        pass
    assert driver.writes == 1
    assert driver.devices == [i % 2 for i in range(50)] + [0]  # the device switch: per launch
    assert cupy.cuda.devices() == [0]


def test_the_stream_is_cupys_current_one_on_the_arrays_device(fakes):
    ops, driver, cupy = fakes
    with cupy.cuda.Device(1):
        cupy.cuda.use_stream(123)
    with ops.launching(FakeArray(1)):  # the current device is 0: the stream is read on 1
        assert cupy.cuda.devices() == [0, 1]
        assert driver.get_current_stream(1) == 123
    assert cupy.cuda.devices() == [0]
    assert driver.get_current_stream(1) == TORCH_STREAM + 1


def test_nested_launch_blocks_restore_the_outer_stream(fakes):
    ops, driver, cupy = fakes
    cupy.cuda.use_stream(11)
    with ops.launching(FakeArray(0)):
        assert driver.get_current_stream(0) == 11
        with ops.launching(FakeArray(1)):
            assert driver.get_current_stream(1) == CUPY_STREAM + 1
        assert driver.get_current_stream(0) == 11
    assert driver.get_current_stream(0) == TORCH_STREAM
    assert cupy.cuda.devices() == [0]


def test_an_error_in_a_launch_block_leaves_nothing_behind(fakes):
    ops, driver, cupy = fakes
    with pytest.raises(RuntimeError, match="a failed launch"):
        with ops.launching(FakeArray(1)):
            raise RuntimeError("a failed launch")
    assert driver.get_current_stream(1) == TORCH_STREAM + 1
    assert cupy.cuda.devices() == [0]
    assert launch_module.stream_stack()[1] == []


def test_threads_see_their_own_stream_and_others_the_original(fakes):
    ops, driver, cupy = fakes
    inside, done = threading.Barrier(3), threading.Barrier(3)
    seen = {}

    def cupy_launch(name, device, ptr):
        cupy.cuda.use_stream(ptr)  # this thread's CuPy stream on device 0
        with ops.launching(FakeArray(device)):
            inside.wait(timeout=10)
            seen[name] = driver.get_current_stream(device)
            done.wait(timeout=10)

    def torch_launch():
        inside.wait(timeout=10)  # while both CuPy blocks are open
        seen["torch"] = driver.get_current_stream(0)
        done.wait(timeout=10)

    threads = [threading.Thread(target=cupy_launch, args=("a", 0, 41)),
               threading.Thread(target=cupy_launch, args=("b", 0, 42)),
               threading.Thread(target=torch_launch)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=20)
    assert seen == {"a": 41, "b": 42, "torch": TORCH_STREAM}
    assert driver.writes == 1


def test_first_launches_of_many_threads_wrap_the_driver_once(fakes):
    ops, driver, _ = fakes
    start = threading.Barrier(8)
    answers = []

    def first_launch():
        start.wait(timeout=10)
        with ops.launching(FakeArray(0)):
            answers.append(driver.get_current_stream(0))

    threads = [threading.Thread(target=first_launch) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=20)
    assert answers == [CUPY_STREAM] * 8
    assert driver.writes == 1
    assert driver.get_current_stream(0) == TORCH_STREAM
