"""The gpuquant command, through subprocesses: every command and error case."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

import gpuquant as gq
from gpuquant.checkpoint.files import SafetensorsFile, write_safetensors
from gpuquant.core.frameworks import bf16_bits_to_f32, f32_to_bf16_bits


def one_error(out, *words):
    """A CLI run that failed with exit 2 and one line on stderr naming ``words``."""
    assert out.returncode == 2, out.stderr
    assert out.stderr.count("\n") == 1 and "Traceback" not in out.stderr, out.stderr
    for word in words:
        assert word in out.stderr, out.stderr


def run(*args, cwd=None, env=None):
    full_env = {**os.environ, **(env or {})}
    return subprocess.run([sys.executable, "-m", "gpuquant", *args], capture_output=True,
                          text=True, timeout=300, cwd=cwd, env=full_env)


def tensors(seed=0):
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((64, 96)).astype(np.float32)
    return [
        ("model.layers.0.attn.q_proj.weight", "F32", w),
        ("model.layers.0.mlp.up_proj.weight", "F16", (w[:32] * 2).astype(np.float16)),
        ("model.layers.0.mlp.down_proj.weight", "BF16", f32_to_bf16_bits(w[:, :48].copy())),
        ("model.layers.0.input_layernorm.weight", "F32", rng.standard_normal(96).astype(np.float32)),
        ("model.embed_positions.position_ids", "I64", np.arange(128, dtype=np.int64)[None]),
        ("lm_head.bias", "F16", rng.standard_normal(96).astype(np.float16)),
    ]


@pytest.fixture
def single(tmp_path):
    path = tmp_path / "model.safetensors"
    write_safetensors(path, tensors(), {"format": "pt"})
    return path


@pytest.fixture
def sharded(tmp_path):
    folder = tmp_path / "sharded"
    folder.mkdir()
    items = tensors()
    weight_map = {}
    for i, part in enumerate((items[:3], items[3:])):
        name = f"model-0000{i + 1}-of-00002.safetensors"
        write_safetensors(folder / name, part, {"format": "pt"})
        weight_map.update({n: name for n, _, _ in part})
    (folder / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": 1}, "weight_map": weight_map}))
    return folder


def _float(f, key):
    raw = f.get(key)
    return bf16_bits_to_f32(raw) if f.dtype_tag(key) == "BF16" else raw.astype(np.float32)


def test_demo_prints_every_preset_and_plots(tmp_path):
    out = run("demo", "--device", "cpu", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    for preset in ["int8_symmetric", "int8_asymmetric", "int8_per_channel", "int4_symmetric",
                   "int4_per_channel", "int4_per_group", "percentile(0.1,99.9)"]:
        assert preset in out.stdout
    rows = [line for line in out.stdout.splitlines() if line.startswith("int")]
    assert len(rows) == 13
    sqnr = {r.split()[1]: float(r.split()[2]) for r in rows}
    assert sqnr["int16/channel(axis=0)/sym/minmax"] > sqnr["int8/channel(axis=0)/sym/minmax"] > \
        sqnr["int4/channel(axis=0)/sym/minmax"]
    assert (tmp_path / "gpuquant-demo.png").stat().st_size > 1000


def test_demo_is_deterministic(tmp_path):
    a, b = (run("demo", "--device", "cpu", "--plot", "", cwd=tmp_path) for _ in range(2))
    strip = lambda s: [line.rsplit(None, 1)[0] for line in s.splitlines()]  # noqa: E731 - drop times
    assert strip(a.stdout) == strip(b.stdout)


def test_quantize_inspect_dequantize_roundtrip(tmp_path, single):
    q = tmp_path / "q.safetensors"
    out = run("quantize", str(single), "-o", str(q), "--scheme", "int4", "--granularity", "group",
              "--group-size", "32", "--asymmetric", "--device", "cpu")
    assert out.returncode == 0, out.stderr
    assert "quantized 3 tensor(s), kept 3" in out.stdout and "read" in out.stdout
    stored = gq.load(q)
    original = SafetensorsFile(single)
    for key, tag, _ in tensors():
        if original.shape(key) and len(original.shape(key)) >= 2 and tag in ("F32", "F16", "BF16"):
            qt = stored[key]
            ref = gq.quantize(_float(original, key), gq.QuantConfig.int4_per_group(32, symmetric=False))
            np.testing.assert_array_equal(qt.data, ref.data)
            np.testing.assert_array_equal(qt.scale, ref.scale)
            assert qt.dtype == {"F32": "float32", "F16": "float16", "BF16": "bfloat16"}[tag]
        else:  # passed through bit for bit
            with SafetensorsFile(q) as f:
                assert f.dtype_tag(key) == tag
                np.testing.assert_array_equal(f.get(key), original.get(key))
    with SafetensorsFile(q) as f:
        assert f.metadata["format"] == "pt"

    out = run("inspect", str(q), "--reference", str(single), "--json")
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    rows = {r["name"]: r for r in report["tensors"]}
    assert rows["model.layers.0.attn.q_proj.weight"]["sqnr_db"] > 15
    assert rows["model.layers.0.attn.q_proj.weight"]["granularity"] == "group32"
    assert rows["lm_head.bias"]["identical"] is True
    assert report["compression_ratio"] > 2
    table = run("inspect", str(q), "--reference", str(single))
    assert "SQNR" in table.stdout and "compression" in table.stdout

    plain = tmp_path / "plain.safetensors"
    out = run("dequantize", str(q), "-o", str(plain))
    assert out.returncode == 0, out.stderr
    from safetensors.torch import load_file

    loaded = load_file(str(plain))  # any safetensors loader reads it (bfloat16 needs torch)
    with SafetensorsFile(plain) as f:
        assert f.dtype_tag("model.layers.0.mlp.down_proj.weight") == "BF16"
        y = _float(f, "model.layers.0.attn.q_proj.weight")
    np.testing.assert_array_equal(y, stored["model.layers.0.attn.q_proj.weight"].dequantize())
    assert str(loaded["model.embed_positions.position_ids"].dtype) == "torch.int64"
    assert str(loaded["model.layers.0.mlp.down_proj.weight"].dtype) == "torch.bfloat16"
    out = run("dequantize", str(q), "-o", str(tmp_path / "f32.safetensors"), "--dtype", "float32")
    assert out.returncode == 0
    with SafetensorsFile(tmp_path / "f32.safetensors") as f:
        assert f.dtype_tag("model.layers.0.mlp.up_proj.weight") == "F32"


def test_sharded_in_sharded_out(tmp_path, sharded):
    out_dir = tmp_path / "q"
    out = run("quantize", str(sharded), "-o", str(out_dir), "--device", "cpu", "--quiet")
    assert out.returncode == 0, out.stderr
    assert out.stdout == ""
    index = json.loads((out_dir / "model.safetensors.index.json").read_text())
    assert index["weight_map"]["model.layers.0.attn.q_proj.weight.qdata"] == \
        "model-00001-of-00002.safetensors"
    assert index["weight_map"]["lm_head.bias"] == "model-00002-of-00002.safetensors"
    assert index["metadata"]["total_size"] == sum(
        p.stat().st_size for p in out_dir.glob("*.safetensors"))
    out = run("inspect", str(out_dir / "model.safetensors.index.json"), "--reference",
              str(sharded), "--json")
    assert out.returncode == 0, out.stderr
    rows = json.loads(out.stdout)["tensors"]
    assert len(rows) == 6 and all(r.get("identical", True) for r in rows)
    back = tmp_path / "back"
    assert run("dequantize", str(out_dir), "-o", str(back)).returncode == 0
    assert sorted(p.name for p in back.iterdir()) == sorted(p.name for p in sharded.iterdir())


def test_filters_and_warnings(tmp_path, single):
    q = tmp_path / "q.safetensors"
    out = run("quantize", str(single), "-o", str(q), "--include", "*proj*", "--exclude",
              "*down_proj*", "*no_such_layer*", "--device", "cpu")
    assert out.returncode == 0, out.stderr
    assert "quantized 2 tensor(s), kept 4" in out.stdout
    assert "warning: '*no_such_layer*' matches no tensor" in out.stderr


def test_error_cases(tmp_path, single):
    q = tmp_path / "q.safetensors"
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(single.read_bytes()[:-100])
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"this is not a safetensors file at all, sorry")
    raw = single.read_bytes()
    n = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8:8 + n])
    header["lm_head.bias"]["shape"] = [97]
    lying = tmp_path / "lying.safetensors"
    blob = json.dumps(header).encode()
    lying.write_bytes(len(blob).to_bytes(8, "little") + blob + raw[8 + n:])
    header = json.loads(raw[8:8 + n])
    header["lm_head.bias"]["dtype"] = "F8_E4M3"
    odd = tmp_path / "odd.safetensors"
    blob = json.dumps(header).encode()
    odd.write_bytes(len(blob).to_bytes(8, "little") + blob + raw[8 + n:])
    cases = [
        (["quantize", str(tmp_path / "missing.safetensors"), "-o", str(q)], "no such file"),
        (["quantize", str(junk), "-o", str(q)], "not a safetensors file"),
        (["quantize", str(truncated), "-o", str(q)], "truncated"),
        (["quantize", str(lying), "-o", str(q)], "needs 194"),
        (["quantize", str(odd), "-o", str(q)], "unsupported dtype 'F8_E4M3'"),
        (["quantize", str(single), "-o", str(tmp_path / "nowhere" / "q.safetensors")],
         "does not exist"),
        (["quantize", str(single), "-o", str(q), "--device", "cuda"], "no working GPU"),
        (["quantize", str(single), "-o", str(q), "--axis", "5"], "axis=5"),
        (["dequantize", str(single), "-o", str(q), "--dtype", "float16"], "nothing to dequantize"),
    ]
    for argv, message in cases:
        out = run(*argv)
        assert out.returncode == 2, (argv, out.stderr)
        assert message in out.stderr, (argv, out.stderr)
        assert out.stderr.count("\n") == 1 and "Traceback" not in out.stderr
        assert not q.exists()
    q.write_bytes(b"keep me")
    out = run("quantize", str(single), "-o", str(q))
    assert out.returncode == 2 and "--force" in out.stderr and q.read_bytes() == b"keep me"
    assert run("quantize", str(single), "-o", str(q), "--force", "--quiet").returncode == 0
    debug = run("quantize", str(junk), "-o", str(tmp_path / "x.safetensors"),
                env={"GPUQUANT_DEBUG": "1"})
    assert "Traceback" in debug.stderr


def test_usage_errors_exit_2():
    out = run("demo", "--device", "tpu")
    assert out.returncode == 2 and "invalid choice" in out.stderr


def test_failure_halfway_leaves_no_output(tmp_path, single, sharded, monkeypatch):
    from gpuquant import cli
    from gpuquant.checkpoint import convert as checkpoint

    calls = {"n": 0}
    real = checkpoint.quantize

    def flaky(x, config):
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("device fell off the bus")
        return real(x, config)

    monkeypatch.setattr(checkpoint, "quantize", flaky)
    for src, out in ((single, tmp_path / "q.safetensors"), (sharded, tmp_path / "qdir")):
        calls["n"] = 0
        assert cli.main(["quantize", str(src), "-o", str(out), "--device", "cpu", "--quiet"]) == 1
        assert not out.exists()
        assert not [p for p in tmp_path.iterdir() if p.name.startswith(".gpuquant-")]


@pytest.mark.parametrize("flags,calibration", [
    (["--calibration", "percentile", "--percentile", "1", "99"], gq.Percentile(1, 99)),
    (["--calibration", "entropy"], gq.Entropy()),
    (["--calibration", "mse"], gq.MSE()),
])
def test_quantize_calibrations(tmp_path, single, flags, calibration):
    q = tmp_path / "q.safetensors"
    out = run("quantize", str(single), "-o", str(q), "--device", "cpu", "--quiet", *flags)
    assert out.returncode == 0, out.stderr
    key = "model.layers.0.attn.q_proj.weight"
    stored = gq.load(q)[key]
    assert stored.config.calibration == calibration
    with SafetensorsFile(single) as f:
        ref = gq.quantize(f.get(key), gq.QuantConfig.int8_per_channel().replace(
            calibration=calibration))
    np.testing.assert_array_equal(stored.data, ref.data)
    np.testing.assert_array_equal(stored.scale, ref.scale)


def test_percentile_flag_needs_percentile_calibration(tmp_path, single):
    out = run("quantize", str(single), "-o", str(tmp_path / "q.safetensors"), "--percentile",
              "1", "99")
    assert out.returncode == 2 and "--calibration percentile" in out.stderr


def test_quantized_names_that_collide_are_refused(tmp_path):
    src = tmp_path / "clash.safetensors"
    w = np.ones((4, 8), np.float32)
    write_safetensors(src, [("a", "F32", w), ("a.scale", "F32", np.ones(4, np.float32))])
    out = run("quantize", str(src), "-o", str(tmp_path / "q.safetensors"), "--device", "cpu")
    assert out.returncode == 2 and "collide" in out.stderr
    ok = run("quantize", str(src), "-o", str(tmp_path / "q.safetensors"), "--device", "cpu",
             "--exclude", "a")
    assert ok.returncode == 0, ok.stderr


def test_bad_environment_is_one_line_exit_2(tmp_path, single, capsys, monkeypatch):
    """Issue 19 item 15: bad WORLD_SIZE / GPUQUANT_NUM_THREADS and `demo --seed -1` are the
    user's to fix: one line naming the setting, exit 2 (not an internal error)."""
    from gpuquant.cli import main

    q = tmp_path / "q.safetensors"
    for name, value in [("WORLD_SIZE", "abc"), ("WORLD_SIZE", "0"), ("GPUQUANT_NUM_THREADS", "abc"),
                        ("GPUQUANT_NUM_THREADS", "-1")]:
        monkeypatch.setenv(name, value)
        assert main(["quantize", str(single), "-o", str(q)]) == 2, (name, value)
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and f"{name}={value!r}" in err and "integer" in err, err
        assert not q.exists()
        monkeypatch.delenv(name)
    assert main(["demo", "--seed", "-1", "--plot", ""]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--seed -1" in err, err


def test_port_in_use_is_one_line_exit_2(tmp_path, single, capsys, monkeypatch):
    """Issue 19 item 15: a rank whose MASTER_PORT is taken says so, exit 2."""
    import socket

    pytest.importorskip("torch")
    from gpuquant.cli import main

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        env = {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "2",
               "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(busy.getsockname()[1])}
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        code = main(["quantize", str(single), "-o", str(tmp_path / "o"), "--shard-size", "1MB",
                     "--device", "cpu"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "MASTER_PORT" in err, err
    assert "address already in use" in err.lower() and not (tmp_path / "o").exists()


def test_disk_full_names_the_file(tmp_path, single, capsys, monkeypatch):
    """Issue 19 item 15: an OSError without a file name (ENOSPC from a write) names the output."""
    import errno

    from gpuquant.checkpoint import convert
    from gpuquant.cli import main

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(convert, "write_safetensors_stream", full)
    q = tmp_path / "q.safetensors"
    assert main(["quantize", str(single), "-o", str(q)]) == 2
    err = capsys.readouterr().err
    assert err == f"gpuquant: error: {q}: No space left on device\n"
