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
    assert lines and all(line.split()[0] in ("PASS", "FAIL", "MISS") for line in lines)
    small = [r for r in rows if r["op"] == "dynamic-per-token-small"]
    assert [(r["rows"], r["cols"]) for r in small] == [("16", "4096")]  # its own input, once


def test_bytes_are_counted_per_dtype():
    import numpy as np

    from bench.ops import build

    x16 = np.ones((64, 256), np.float16)
    case = build("quant-int4-g128-asym", x16, "numpy")
    n = 64 * 256
    assert case.bytes_moved == n * 2 + n // 2 + 64 * 2 * 8
    assert build("quant-int8-channel", x16.astype(np.float32), "numpy").bytes_moved == \
        n * 4 + n + 64 * 8


def _row(op, impl, ms, **kw):
    row = dict(op=op, impl=impl, ms=ms, bytes=1000, dtype="float16", rows=8192, cols=8192,
               copy_gbps=4000.0, gbps=3300.0, frac_of_copy=0.825, x_one_read=1.1, speedup=1.0)
    row.update(kw)
    return row


def test_summary_judges_every_target_against_its_baseline():
    from bench.harness import TARGETS, summary

    rows = [_row("quant-int4-g128-asym", "gpuquant", 0.060),
            _row("quant-int4-g128-asym", "torch.compile", 0.138),
            _row("quant-int4-g128-asym", "bitsandbytes quantize_4bit", 0.100),
            _row("minmax-group", "gpuquant", 0.05, x_one_read=1.3),
            _row("dynamic-per-token-small", "gpuquant", 0.0152, rows=16, cols=4096),
            _row("dynamic-per-token-small", "torch.compile", 0.0171, rows=16, cols=4096)]
    lines = summary(rows)
    assert len(lines) == len(TARGETS)  # unmeasured targets are printed too

    def by(op, what):
        (line,) = [line for line in lines if line.split()[1] == op and what in line]
        return line

    frac = by("quant-int4-g128-asym", "fraction of copy bandwidth")
    assert frac.startswith("PASS") and "0.82 of copy" in frac and "copy 4000 GB/s" in frac
    versus = by("quant-int4-g128-asym", "speedup vs torch.compile")
    assert versus.startswith("PASS") and "2.30x" in versus and "torch.compile 0.1380 ms" in versus
    bnb = by("quant-int4-g128-asym", "speedup vs bitsandbytes")
    assert bnb.startswith("FAIL") and "1.67x" in bnb  # 0.100 / 0.060 < 2
    assert by("minmax-group", "time / one read").startswith("FAIL")
    small = by("dynamic-per-token-small", "us per call")
    assert small.startswith("PASS") and "15.20 us" in small and "torch.compile 17.10 us" in small
    missing = by("dequant-int4-g128", "fraction of copy bandwidth")
    assert missing.startswith("MISS") and "not measured" in missing
    no_peer = by("quant-int4-g128-sym", "speedup vs torch.compile")
    assert no_peer.startswith("MISS")


def test_host_overhead_and_tuning_flags_are_wired(tmp_path):
    from bench.harness import parse

    args = parse(["--host-overhead", "--device", "cuda", "--tuning", str(tmp_path / "t.json")])
    assert args.host_overhead and args.device == "cuda" and args.tuning.endswith("t.json")


def test_tuning_candidates_fit_and_start_at_the_current_configuration():
    from bench.tune import candidates

    grid = candidates({"TILE": 1024, "EPT": 32})
    assert grid[0] == {"TILE": 1024, "EPT": 32}
    assert len(grid) == len({(c["TILE"], c["EPT"]) for c in grid}) == 17
    assert all(1 <= c["TILE"] // (32 * c["EPT"]) <= 16 for c in grid)
    assert {c["TILE"] for c in grid} == {256, 512, 1024, 2048, 4096, 8192}


def test_table_is_written_atomically(tmp_path):
    import json

    from bench.tune import write_table

    path = tmp_path / "tuning.json"
    path.write_text("old")
    write_table({"kernels": {}}, str(path))
    assert json.loads(path.read_text()) == {"kernels": {}}
    assert [p.name for p in tmp_path.iterdir()] == ["tuning.json"]


@pytest.mark.slow
def test_tune_dry_run_writes_a_table_of_the_package_schema(tmp_path):
    """The sweep's code on the CPU (interpreter, tiny inputs); the package's table untouched."""
    import json

    from gpuquant.backends.triton import tuning

    before = pathlib.Path(tuning.TABLE_PATH).read_bytes()
    out = tmp_path / "tuning.json"
    run = subprocess.run([sys.executable, "-m", "bench.tune", "--dry-run", "--out", str(out)],
                         cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    assert pathlib.Path(tuning.TABLE_PATH).read_bytes() == before
    old, new = json.loads(before), json.loads(out.read_text())
    assert set(new) == set(old) and new["about"] == old["about"]
    assert "dry run" in new["measured_on"] and "no figure here is a GPU measurement" in \
        new["measured_on"]
    assert set(new["kernels"]) == set(old["kernels"])
    classes = {name for name, _ in tuning.SIZE_CLASSES}
    for kernel, entry in new["kernels"].items():
        assert entry["default"] == old["kernels"][kernel]["default"]
        assert classes <= set(entry), kernel
        for name in classes:
            cfg = entry[name]
            assert set(cfg) == {"TILE", "EPT", "source"}, (kernel, name)
            assert cfg["TILE"] in (256, 512, 1024, 2048, 4096, 8192) and cfg["EPT"] in (8, 16, 32, 64)
            assert "dry run" in cfg["source"] and "candidates tried" in cfg["source"]


def test_device_check_script_parses():
    """bench/device_check.sh is proven by its --dry-run (about a minute, not in CI); CI
    checks that it still parses."""
    run = subprocess.run(["bash", "-n", str(ROOT / "bench" / "device_check.sh")],
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stderr


def test_tuning_flag_makes_the_launchers_read_that_table(tmp_path, monkeypatch):
    import json

    from bench.harness import use_tuning_table
    from gpuquant.backends.triton import tuning

    table = tuning.load_table()
    kernel = next(iter(table["kernels"]))
    table["kernels"][kernel]["large"] = {"TILE": 256, "EPT": 8, "source": "test"}
    path = tmp_path / "tuning.json"
    path.write_text(json.dumps(table))
    monkeypatch.setattr(tuning, "_table", None)  # restored after the test
    use_tuning_table(str(path))
    assert tuning.config_for(kernel, 1 << 30) == {"TILE": 256, "EPT": 8}


FLOAT_OPS = [f"{kind}-{fmt}" for kind in ("quant", "dequant")
             for fmt in ("fp8-tensor", "fp8-channel", "fp8-block", "mxfp8", "mxfp4", "nvfp4", "nf4")]


def test_float_ops_are_listed_and_count_what_they_store():
    """Each float op runs on the CPU (NumPy reference); its byte count is the input plus the
    QuantizedTensor's own size, scales included."""
    import numpy as np

    import gpuquant as gq
    from bench.float_ops import _CONFIGS, stored_bytes
    from bench.ops import OPS, build

    assert [op for op in OPS if op in FLOAT_OPS] == FLOAT_OPS
    x = np.random.default_rng(0).standard_normal((64, 256)).astype(np.float32)
    for op in FLOAT_OPS:
        fmt = op.split("-", 1)[1]
        qt = gq.quantize(x, _CONFIGS[fmt]())
        assert stored_bytes(fmt, 64, 256) == qt.size_bytes, op
        case = build(op, x, "numpy")
        assert case.op == op and case.bytes_moved == x.nbytes + qt.size_bytes
        out = case.ours()
        if op.startswith("quant-"):
            assert np.array_equal(np.asarray(out.data), np.asarray(qt.data)), op
        else:
            assert np.array_equal(np.asarray(out), np.asarray(qt.dequantize())), op


def test_float_ops_run_under_the_interpreter():
    """The GPU path's call (backend="triton") on a torch CPU tensor under TRITON_INTERPRET=1."""
    torch = pytest.importorskip("torch")
    from bench.ops import build

    x = torch.from_numpy(__import__("numpy").random.default_rng(1).standard_normal((8, 128))
                         .astype("float32"))
    for op in ("quant-nvfp4", "dequant-mxfp4", "dequant-nf4", "quant-fp8-block"):
        out = build(op, x, "torch", backend="triton").ours()
        assert tuple((out if op.startswith("dequant") else out.dequantize()).shape) == (8, 128), op


def test_float_composites_do_the_same_work_as_gpuquant():
    """The torch.compile peers' eager composites quantize to about gpuquant's SQNR (within
    0.5 dB: a speed peer, not claimed bit-exact) and round-trip the input's shape."""
    torch = pytest.importorskip("torch")
    import numpy as np

    import gpuquant as gq
    from bench import float_peers as FP
    from bench.float_ops import _CONFIGS

    x = np.random.default_rng(2).standard_normal((128, 256)).astype(np.float32)
    xt = torch.from_numpy(x)

    def sqnr(restored):
        return 10 * np.log10((x ** 2).sum() / ((x - restored) ** 2).sum())

    for fmt, quant in FP.COMPOSITES.items():
        theirs = FP.DEQUANT[fmt](*quant(xt), torch.float32).numpy()
        ours = np.asarray(gq.quantize(x, _CONFIGS[fmt]()).dequantize())
        assert theirs.shape == x.shape and abs(sqnr(theirs) - sqnr(ours)) < 0.5, fmt
