"""Issue 9's CPU proxy of host time: a repeated call makes at most 40 Python function
calls and one launch (``python -m bench --host-overhead``, launches recorded)."""

import json
import pathlib
import subprocess
import sys

import pytest

pytest.importorskip("torch")
pytest.importorskip("triton")

ROOT = pathlib.Path(__file__).resolve().parents[1]
OPS = ("quantize-int4-g128", "quantize-int8-channel", "dequantize-int4-g128", "dynamic-per-token")
MAX_PYTHON_CALLS = 40


@pytest.fixture(scope="module")
def overhead():
    """The JSON object the command prints (run in a subprocess: it sets TRITON_INTERPRET)."""
    out = subprocess.run([sys.executable, "-m", "bench", "--host-overhead", "--seconds", "0.2"],
                         cwd=ROOT, capture_output=True, text=True, timeout=600)
    lines = [line for line in out.stdout.splitlines() if line.startswith("{")]
    assert lines, f"no JSON printed (rc {out.returncode}): {out.stderr[-3000:]}"
    return json.loads(lines[-1])


@pytest.mark.parametrize("op", OPS)
def test_repeated_call_is_one_launch_and_few_python_calls(overhead, op):
    figures = overhead[op]
    assert "error" not in figures, figures.get("error")
    assert figures["launches"] == 1, figures
    assert figures["python_calls"] <= MAX_PYTHON_CALLS, figures
    assert figures["host_us"] > 0 and figures["c_calls"] >= 0


def test_the_count_sees_every_python_call():
    """count_calls counts one event per Python call below the counted function, no more."""
    sys.path.insert(0, str(ROOT))
    from bench.host_overhead import count_calls, time_calls

    def leaf(i):
        return i + 1

    def work():
        return sum(leaf(i) for i in range(10))  # 10 leaf calls + the generator's 11 resumptions

    calls, c_calls = count_calls(work)
    assert calls == 10 + 11
    assert c_calls == 1  # sum()
    assert time_calls(work, seconds=0.0, least=3) > 0
