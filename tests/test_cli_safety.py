"""The gpuquant command never loses a file and never passes damage through silently (issue 13)."""

import json
import os
import signal
import subprocess
import sys

import numpy as np
import pytest
from test_cli import one_error as _one_error
from test_cli import run, tensors

from gpuquant.checkpoint.files import SafetensorsFile, write_safetensors
from gpuquant.io import TENSORS_KEY


@pytest.fixture
def single(tmp_path):
    path = tmp_path / "model.safetensors"
    write_safetensors(path, tensors(), {"format": "pt"})
    return path


def _sharded(folder, names=("model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors")):
    folder.mkdir(exist_ok=True)
    items = tensors()
    weight_map = {}
    for name, part in zip(names, (items[:3], items[3:])):
        os.makedirs(os.path.dirname(folder / name), exist_ok=True)
        write_safetensors(folder / name, part, {"format": "pt"})
        weight_map.update({n: name for n, _, _ in part})
    (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    (folder / "config.json").write_text("{}")
    return folder


def _rewrite(src, dst, drop=(), metadata=None):
    with SafetensorsFile(src) as f:
        items = [(k, f.dtype_tag(k), f.get(k)) for k in f.keys() if k not in drop]
        meta = {**f.metadata, **(metadata or {})}
    write_safetensors(dst, items, meta)


def test_quantized_input_is_refused(tmp_path, single):
    q = tmp_path / "q.safetensors"
    assert run("quantize", str(single), "-o", str(q), "--scheme", "int4", "--granularity", "group",
               "--group-size", "32", "--asymmetric", "--device", "cpu").returncode == 0
    again = tmp_path / "again.safetensors"
    out = run("quantize", str(q), "-o", str(again), "--device", "cpu")
    _one_error(out, "already quantized by gpuquant", "int4/group32/asym/minmax")
    assert not again.exists()


@pytest.mark.parametrize("command", ["quantize", "dequantize"])
def test_output_that_is_the_input_is_refused_even_with_force(tmp_path, single, command):
    before = single.read_bytes()
    link = tmp_path / "link.safetensors"
    link.symlink_to(single)
    hard = tmp_path / "hard.safetensors"
    os.link(single, hard)
    for target in (single, link, hard):
        out = run(command, str(single), "-o", str(target), "--force")
        _one_error(out, "input")
    assert single.read_bytes() == before


def test_output_folder_that_is_the_input_folder_is_refused(tmp_path):
    src = _sharded(tmp_path / "m")
    before = {p.name: p.read_bytes() for p in src.iterdir()}
    for target in (src, src / "model.safetensors.index.json"):
        out = run("quantize", str(target), "-o", str(src), "--force", "--device", "cpu")
        _one_error(out, "input folder")
    elsewhere = tmp_path / "out"
    elsewhere.mkdir()
    (elsewhere / "model-00002-of-00002.safetensors").symlink_to(src / "model-00002-of-00002.safetensors")
    out = run("dequantize", str(src), "-o", str(elsewhere), "--force")
    _one_error(out, "would overwrite the input")
    assert {p.name: p.read_bytes() for p in src.iterdir()} == before


def test_metadata_that_disagrees_with_the_tensors_is_an_error(tmp_path, single):
    q = tmp_path / "q.safetensors"
    assert run("quantize", str(single), "-o", str(q), "--device", "cpu").returncode == 0
    key = "model.layers.0.attn.q_proj.weight"
    emptied, no_scale, bad = (tmp_path / f"{n}.safetensors" for n in ("emptied", "noscale", "bad"))
    _rewrite(q, emptied, metadata={TENSORS_KEY: "{}"})
    _rewrite(q, no_scale, drop=(key + ".scale",))
    _rewrite(q, bad, metadata={TENSORS_KEY: json.dumps({key: 5})})
    for damaged, words in ((emptied, ("does not describe", key)), (no_scale, ("lacks", ".scale")),
                           (bad, ("bad", key))):
        for argv in (["dequantize", str(damaged), "-o", str(tmp_path / "plain.safetensors")],
                     ["inspect", str(damaged)], ["inspect", str(damaged), "--json"]):
            _one_error(run(*argv), *words)
        assert not (tmp_path / "plain.safetensors").exists()


def test_group_size_needs_group_granularity(tmp_path, single):
    out = run("quantize", str(single), "-o", str(tmp_path / "q.safetensors"), "--group-size", "32")
    _one_error(out, "--group-size needs --granularity group")
    assert not (tmp_path / "q.safetensors").exists()
    out = run("quantize", str(single), "-o", str(tmp_path / "q.safetensors"), "--granularity",
              "group", "--group-size", "0")
    _one_error(out, "group_size")
    assert not (tmp_path / "q.safetensors").exists()


_SLOW_CHILD = """
import sys, time
from gpuquant import cli
from gpuquant.checkpoint import convert as checkpoint
real = checkpoint.quantize
def slow(x, config):
    print("quantizing", flush=True)
    time.sleep(60)
    return real(x, config)
checkpoint.quantize = slow
sys.exit(cli.main(sys.argv[1:]))
"""


@pytest.mark.parametrize("layout", ["single", "sharded", "sharded over an existing output"])
def test_sigterm_removes_the_partial_output(tmp_path, single, layout):
    src = single if layout == "single" else _sharded(tmp_path / "m")
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    target = out_dir / ("q.safetensors" if layout == "single" else "q")
    staged_in = out_dir  # the staging file or folder is beside the output
    if layout.endswith("existing output"):
        target.mkdir()
        (target / "model.safetensors.index.json").write_text("old")
    before = sorted(p.relative_to(out_dir) for p in out_dir.rglob("*"))
    proc = subprocess.Popen([sys.executable, "-c", _SLOW_CHILD, "quantize", str(src), "-o",
                             str(target), "--device", "cpu", "--force"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline() == "quantizing\n"  # mid-write, deterministically
        assert [p for p in staged_in.iterdir() if p.name.startswith(".gpuquant-")]
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 143
    finally:
        proc.kill()
        proc.wait()
    assert "gpuquant: interrupted" in proc.stderr.read()
    assert sorted(p.relative_to(out_dir) for p in out_dir.rglob("*")) == before
    if layout.endswith("existing output"):
        assert (target / "model.safetensors.index.json").read_text() == "old"


def test_shards_with_the_same_file_name_are_refused(tmp_path):
    src = _sharded(tmp_path / "m", names=("a/x.safetensors", "b/x.safetensors"))
    for command in ("quantize", "dequantize"):
        out = run(command, str(src), "-o", str(tmp_path / "out"), "--quiet")
        _one_error(out, "same file name", "a/x.safetensors", "b/x.safetensors")
        assert not (tmp_path / "out").exists()
    ok = _sharded(tmp_path / "n", names=("a/x.safetensors", "b/y.safetensors"))
    out = run("quantize", str(ok), "-o", str(tmp_path / "out"), "--device", "cpu")
    assert out.returncode == 0 and "quantized 3 tensor(s), kept 3" in out.stdout, out.stderr
    index = json.loads((tmp_path / "out" / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"].values()) == {"x.safetensors", "y.safetensors"}


def test_force_replaces_only_what_gpuquant_writes(tmp_path):
    src = _sharded(tmp_path / "m")
    out = tmp_path / "out"
    (out / "sub").mkdir(parents=True)
    (out / "sub" / "keep.bin").write_bytes(b"keep")
    (out / "tokenizer.json").write_text("tok")
    (out / "model-00001-of-00002.safetensors").write_bytes(b"old")
    result = run("quantize", str(src), "-o", str(out), "--force", "--device", "cpu", "--quiet")
    assert result.returncode == 0, result.stderr
    assert (out / "sub" / "keep.bin").read_bytes() == b"keep"
    assert (out / "tokenizer.json").read_text() == "tok"
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["sub", "tokenizer.json", "model.safetensors.index.json",
         "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"])
    with SafetensorsFile(out / "model-00001-of-00002.safetensors") as f:
        assert "model.layers.0.attn.q_proj.weight.qdata" in f
    (out / "model-00002-of-00002.safetensors").unlink()
    (out / "model-00002-of-00002.safetensors").mkdir()
    refused = run("quantize", str(src), "-o", str(out), "--force", "--device", "cpu")
    _one_error(refused, "is a folder")


@pytest.mark.parametrize("escape", ["../outside.safetensors", "ABSOLUTE"])
def test_index_paths_outside_the_folder_are_refused(tmp_path, escape):
    folder = tmp_path / "m"
    folder.mkdir()
    outside = tmp_path / "outside.safetensors"
    write_safetensors(outside, [("w", "F32", np.ones((4, 4), np.float32))])
    name = str(outside) if escape == "ABSOLUTE" else escape
    (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"w": name}}))
    for argv in (["quantize", str(folder), "-o", str(tmp_path / "out"), "--device", "cpu"],
                 ["inspect", str(folder)]):
        _one_error(run(*argv), "leaves the index's folder")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("index", [
    '{"weight_map": {"w": 5}}', '{"weight_map": ["x.safetensors"]}', '{"weight_map": {}}',
    '[1, 2]', '{"weight_map": {"w": "x.safetensors"}, "metadata": [1]}',
    '{"weight_map": ' * 100_000 + '{}' + '}' * 100_000, '{"weight_map": {"w": "x\\u0000y"}}',
])
def test_malformed_index_is_an_error(tmp_path, index):
    folder = tmp_path / "m"
    folder.mkdir()
    write_safetensors(folder / "x.safetensors", [("w", "F32", np.ones((4, 4), np.float32))])
    (folder / "model.safetensors.index.json").write_text(index)
    for argv in (["quantize", str(folder), "-o", str(tmp_path / "out"), "--device", "cpu"],
                 ["inspect", str(folder)], ["dequantize", str(folder), "-o", str(tmp_path / "o")]):
        _one_error(run(*argv), "model.safetensors.index.json")


def test_a_new_output_folder_has_the_umask_permissions(tmp_path):
    src = _sharded(tmp_path / "m")
    out = tmp_path / "out"
    assert run("quantize", str(src), "-o", str(out), "--device", "cpu", "--quiet").returncode == 0
    (tmp_path / "probe").mkdir()  # made with the same umask
    assert out.stat().st_mode & 0o777 == (tmp_path / "probe").stat().st_mode & 0o777
