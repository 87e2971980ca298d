"""The gpuquant command says what a user can act on, and its help, inspect and demo agree (issue 13)."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from test_cli import one_error as _one_error
from test_cli import run, tensors

import gpuquant as gq
from gpuquant.checkpoint.files import SafetensorsFile, write_safetensors


@pytest.fixture
def single(tmp_path):
    path = tmp_path / "model.safetensors"
    write_safetensors(path, tensors(), {"format": "pt"})
    return path


def test_errors_name_the_tensor(tmp_path):
    w = np.ones((8, 16), np.float32)
    nan = w.copy()
    nan[3, 5] = np.nan
    cases = {"layers.7.nan.weight": (nan, "--ignore-nonfinite"),
             "layers.7.empty.weight": (np.ones((0, 16), np.float32), "--exclude")}
    for name, (bad, advice) in cases.items():
        src = tmp_path / "in.safetensors"
        write_safetensors(src, [("ok.weight", "F32", w), (name, "F32", bad)])
        out = run("quantize", str(src), "-o", str(tmp_path / "q.safetensors"), "--device", "cpu")
        _one_error(out, repr(name), advice)
        assert "ignore_nonfinite=True" not in out.stderr
        assert not (tmp_path / "q.safetensors").exists()
    assert "--ignore-nonfinite" in run("quantize", str(src.with_name("x")), "--help").stdout
    out = run("quantize", str(tmp_path / "in.safetensors"), "-o", str(tmp_path / "q.safetensors"),
              "--axis", "2", "--device", "cpu")
    _one_error(out, "'ok.weight'", "axis=2")


def test_ignore_nonfinite(tmp_path):
    w = np.random.default_rng(1).standard_normal((8, 16)).astype(np.float32)
    w[3, 5] = np.inf
    src = tmp_path / "in.safetensors"
    write_safetensors(src, [("w", "F32", w)])
    q = tmp_path / "q.safetensors"
    out = run("quantize", str(src), "-o", str(q), "--device", "cpu")
    _one_error(out, "'w'", "--ignore-nonfinite")
    out = run("quantize", str(src), "-o", str(q), "--device", "cpu", "--ignore-nonfinite")
    assert out.returncode == 0, out.stderr
    ref = gq.quantize(w, gq.QuantConfig.int8_per_channel().replace(ignore_nonfinite=True))
    stored = gq.load(q)["w"]
    np.testing.assert_array_equal(stored.data, ref.data)
    np.testing.assert_array_equal(stored.scale, ref.scale)


def test_closed_stdout_is_a_quiet_end(single):
    proc = subprocess.Popen([sys.executable, "-m", "gpuquant", "inspect", str(single)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()  # like `| head` that has already quit: every write gets EPIPE
    err = proc.stderr.read()
    assert proc.wait(timeout=120) == 0, err
    assert err == b""


def test_tensors_that_would_grow_are_kept(tmp_path):
    w = np.random.default_rng(2).standard_normal((64, 96)).astype(np.float32)
    column = np.random.default_rng(3).standard_normal((1000, 1)).astype(np.float16)
    src = tmp_path / "in.safetensors"
    write_safetensors(src, [("w", "F32", w), ("column", "F16", column)])
    q = tmp_path / "q.safetensors"
    out = run("quantize", str(src), "-o", str(q), "--device", "cpu")
    assert out.returncode == 0, out.stderr
    assert "quantized 1 tensor(s), kept 1 (1 would grow)" in out.stdout
    with SafetensorsFile(q) as f:
        assert f.dtype_tag("column") == "F16"
        np.testing.assert_array_equal(f.get("column"), column)
        assert q.stat().st_size < src.stat().st_size


def _help(command):
    out = run(command, "--help")
    assert out.returncode == 0
    return " ".join(out.stdout.split())  # as one line, whatever the terminal width


def test_help_shows_defaults_and_the_default_story():
    q = _help("quantize")
    assert "(default: int8)" in q and "(default: channel)" in q and "(default: minmax)" in q
    assert "QuantConfig()" in q and "per channel along axis 0, symmetric" in q
    assert "(default: 0)" in q and "(default 128 there)" in q
    assert "(default: None)" not in q and "(default: True)" not in q
    assert "QuantConfig() is int8 per tensor, symmetric" in q
    assert "default: each tensor's original dtype" in _help("dequantize")
    assert "(default: gpuquant-demo.png)" in _help("demo") and "(default: auto)" in _help("demo")


def test_version():
    for argv in ([sys.executable, "-m", "gpuquant", "--version"],
                 [sys.executable, "-m", "gpuquant", "--version"]):
        out = subprocess.run(argv, capture_output=True, text=True, timeout=120)
        assert out.returncode == 0 and out.stdout.strip() == f"gpuquant {gq.__version__}"


def test_python_m_gpuquant_runs_the_command(tmp_path, single):
    out = subprocess.run([sys.executable, "-m", "gpuquant", "quantize", str(single), "-o",
                          str(tmp_path / "q.safetensors"), "--device", "cpu"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "quantized 3 tensor(s)" in out.stdout, out.stderr
    bad = subprocess.run([sys.executable, "-m", "gpuquant", "inspect", str(tmp_path / "none")],
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "no such file" in bad.stderr


def test_inspect_table_summary_and_json(tmp_path):
    rng = np.random.default_rng(4)
    long = "model.layers.0.self_attention.query_key_value.layer_norm"
    items = [(long + ".weight", "F32", rng.standard_normal((32, 48)).astype(np.float32)),
             (long + ".bias", "F32", rng.standard_normal((32, 48)).astype(np.float32) * 10)]
    src = tmp_path / "in.safetensors"
    write_safetensors(src, items)
    q = tmp_path / "q.safetensors"
    assert run("quantize", str(src), "-o", str(q), "--asymmetric", "--device", "cpu").returncode == 0
    table = run("inspect", str(q), "--reference", str(src))
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    assert any(line.startswith(long + ".weight ") for line in lines)
    assert any(line.startswith(long + ".bias ") for line in lines)
    assert "channel(axis=0) asym" in table.stdout
    doc = json.loads(run("inspect", str(q), "--reference", str(src), "--json").stdout,
                     parse_constant=lambda c: pytest.fail(f"not strict JSON: {c}"))
    other = tmp_path / "other.safetensors"
    write_safetensors(other, [(long + ".weight", "F32", np.ones((48, 32), np.float32)),
                              (long + ".bias", "F32", np.zeros((32, 48), np.float32))])
    _one_error(run("inspect", str(q), "--reference", str(other)), repr(long + ".weight"), "shape")
    write_safetensors(other, [items[0], (long + ".bias", "F32", np.zeros((32, 48), np.float32))])
    zero = run("inspect", str(q), "--reference", str(other))  # noise on a zero signal: -inf dB
    assert zero.returncode == 0 and "-inf" in zero.stdout, zero.stderr
    sqnr = sorted(r["sqnr_db"] for r in doc["tensors"])
    assert doc["sqnr_min_db"] == sqnr[0] and doc["sqnr_median_db"] == pytest.approx(sum(sqnr) / 2)
    summary = lines[-1]
    assert summary.startswith("total: 2 tensor(s), 2 quantized, 0 kept")
    assert f"SQNR min {sqnr[0]:.2f} dB, median {sum(sqnr) / 2:.2f} dB" in summary
    assert f"{doc['total_original_bytes']} bytes -> {doc['total_bytes']} bytes" in summary


_IMPORTS = """
import sys
from gpuquant.cli import main
code = main(sys.argv[1:])
print("torch imported" if "torch" in sys.modules else "no torch")
sys.exit(code)
"""


@pytest.mark.parametrize("hide", ["", "-1"])
def test_device_auto_without_a_visible_gpu_does_not_import_torch(tmp_path, single, hide):
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": hide}
    for argv in (["inspect", str(single)],
                 ["quantize", str(single), "-o", str(tmp_path / f"q{hide}.safetensors")]):
        out = subprocess.run([sys.executable, "-c", _IMPORTS, *argv], capture_output=True,
                             text=True, timeout=120, env=env)
        assert out.returncode == 0, out.stderr
        assert out.stdout.rstrip().endswith("no torch"), out.stdout
    cuda = subprocess.run([sys.executable, "-c", _IMPORTS, "quantize", str(single), "-o",
                           str(tmp_path / "c.safetensors"), "--device", "cuda"],
                          capture_output=True, text=True, timeout=120, env=env)
    _one_error(cuda, "--device cuda: no working GPU")


def test_the_no_gpu_message_lives_in_one_place():
    import pathlib

    sources = pathlib.Path(gq.__file__).parent.rglob("*.py")
    assert [p.name for p in sources if "no working GPU" in p.read_text()] == ["devices.py"]


def test_demo_plot_shows_the_table_configs_distinguishably(tmp_path, monkeypatch):
    import matplotlib.pyplot as plt

    from gpuquant.cli import demo
    from gpuquant.cli.demo import demo_configs, error_against_bits, family, plot_error_vs_bits, run_demo

    monkeypatch.setattr(demo, "_SHAPES", {"attn.q_proj": (48, 256), "mlp.down_proj": (256, 48)})
    curves = error_against_bits()
    integer = [cfg for _, cfg in demo_configs() if not cfg.is_float]  # a float format has one width
    assert set(curves) == {family(cfg) for cfg in integer}
    for row, (_, cfg) in zip(run_demo(backend="numpy"), demo_configs()):
        if not cfg.is_float:
            assert (cfg.bits, row["sqnr_db"]) in curves[family(cfg)]  # the table's numbers
    figures = []
    monkeypatch.setattr(plt, "close", figures.append)
    plot_error_vs_bits(str(tmp_path / "p.png"), curves=curves)
    lines = figures[0].axes[0].get_lines()
    assert sorted(line.get_label() for line in lines) == sorted(curves)
    styles = {(line.get_marker(), line.get_linestyle()) for line in lines}
    assert len(styles) == len(lines)
    assert len({line.get_marker() for line in lines}) == len(lines)


def _fake_cupy(count):
    import importlib.machinery
    import types

    class CUDARuntimeError(RuntimeError):
        pass

    def get_device_count():
        if count is None:
            raise CUDARuntimeError("cudaErrorNoDevice")
        return count

    runtime = types.SimpleNamespace(getDeviceCount=get_device_count,
                                    CUDARuntimeError=CUDARuntimeError)
    cupy = types.ModuleType("cupy")
    cupy.__spec__ = importlib.machinery.ModuleSpec("cupy", None)
    cupy.cuda = types.SimpleNamespace(runtime=runtime)
    cupy.asarray = lambda a: ("on the GPU", a)
    return cupy


@pytest.mark.parametrize("count", [None, 0, 2])
def test_device_auto_asks_cupy_before_torch(monkeypatch, count):
    from gpuquant.core import devices

    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.setattr(devices.os.path, "exists", lambda path: True)  # a driver is there
    monkeypatch.setitem(sys.modules, "cupy", _fake_cupy(count))
    monkeypatch.setitem(sys.modules, "torch", None)  # importing torch now raises ImportError
    convert = devices.converter_for("auto")
    if count:
        assert convert(1) == ("on the GPU", 1)
    else:
        assert convert is None
        with pytest.raises(gq.BackendUnavailableError, match="--device cuda: no working GPU"):
            devices.converter_for("cuda")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "-1")
    assert devices.converter_for("auto") is None
