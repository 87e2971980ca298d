"""The benchmark harness runs (``--quick`` on the CPU), so it cannot rot."""

import csv
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def bench_importable(monkeypatch):
    """bench/ is a folder of the repository, not of the installed package."""
    monkeypatch.syspath_prepend(str(ROOT))


def test_quick_cpu_run_writes_rows_and_plots(tmp_path):
    out = subprocess.run([sys.executable, "-m", "bench", "--quick", "--device", "cpu",
                          "--out", str(tmp_path), "--plots"], cwd=ROOT, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    from bench.ops import OPS

    rows = list(csv.DictReader(open(tmp_path / "bench.csv")))
    assert {r["op"] for r in rows} == set(OPS)
    for r in rows:
        assert float(r["ms"]) > 0 and float(r["gbps"]) > 0 and int(r["bytes"]) > 0
        assert r["machine"] and "numpy" in r["versions"]
    baselines = {r["impl"] for r in rows} - {"gpuquant"}
    assert "numpy composite" in baselines and "torch.quantize_per_channel" in baselines
    assert (tmp_path / "bandwidth.png").stat().st_size > 1000
    assert (tmp_path / "error_vs_bits.png").stat().st_size > 1000
    assert "copy" in out.stdout
    from bench.harness import load_rows, summary

    lines = summary(load_rows(str(tmp_path / "bench.csv")))  # what device_check.sh prints
    assert lines and all(line.split()[0] in ("PASS", "FAIL") for line in lines)


def test_bytes_are_counted_per_dtype():
    import numpy as np

    from bench.ops import build

    x16 = np.ones((64, 256), np.float16)
    case = build("quant-int4-g128-asym", x16, "numpy")
    n = 64 * 256
    assert case.bytes_moved == n * 2 + n // 2 + 64 * 2 * 8
    assert build("quant-int8-channel", x16.astype(np.float32), "numpy").bytes_moved == \
        n * 4 + n + 64 * 8
