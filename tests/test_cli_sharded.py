"""gpuquant quantize --shard-size, on one process and on two gloo processes on 127.0.0.1
(--workers, torchrun -m gpuquant, and two ranks started by hand), with a rank killed midway."""

import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest

import gpuquant as gq
from gpuquant.checkpoint.files import SafetensorsFile, write_safetensors
from gpuquant.checkpoint.index import assign_shards, parse_size, plan_shards
from gpuquant.checkpoint.reshard import quantize_sharded
from gpuquant.errors import QuantizationError

ENV = {"GLOO_SOCKET_IFNAME": "lo", "OMP_NUM_THREADS": "1"}
INDEX = "model.safetensors.index.json"
SUFFIXES = (".qdata", ".scale", ".zero_point")


def run(*args, env=None, module="gpuquant"):
    return subprocess.run([sys.executable, "-m", module, *map(str, args)], capture_output=True,
                          text=True, timeout=120, env={**os.environ, **ENV, **(env or {})})


def tensors(seed=0):
    rng = np.random.default_rng(seed)
    out = [(f"model.layers.{i}.mlp.weight", "F32",
            rng.standard_normal((32 + 16 * i, 64)).astype(np.float32)) for i in range(7)]
    out.insert(3, ("model.norm.weight", "F32", rng.standard_normal(64).astype(np.float32)))
    out.append(("model.embed.weight", "F16", rng.standard_normal((48, 64)).astype(np.float16)))
    return out


@pytest.fixture
def model(tmp_path):
    """A checkpoint in two input shards with an index."""
    folder = tmp_path / "in"
    folder.mkdir()
    t = tensors()
    write_safetensors(folder / "a.safetensors", t[:5], {"format": "pt"})
    write_safetensors(folder / "b.safetensors", t[5:], {"format": "pt"})
    index = {"metadata": {"total_size": 1}, "weight_map":
             {n: ("a" if i < 5 else "b") + ".safetensors" for i, (n, _, _) in enumerate(t)}}
    (folder / INDEX).write_text(json.dumps(index))
    return folder


def read_all(folder):
    """name -> array over every shard of an output folder."""
    out = {}
    for name in sorted(os.listdir(folder)):
        if name.endswith(".safetensors"):
            with SafetensorsFile(folder / name) as f:
                out.update({k: f.get(k) for k in f.keys()})
    return out


def files_of(folder):
    return {n: (folder / n).read_bytes() for n in sorted(os.listdir(folder))}


def test_parse_size():
    assert parse_size("5GB") == 5 * 10**9
    assert parse_size("500MB") == 500 * 10**6
    assert parse_size("100kb") == 100_000
    assert parse_size("2GiB") == 2 * 2**30
    assert parse_size("1.5MB") == 1_500_000
    assert parse_size("4096") == 4096
    for bad in ("", "GB", "5XB", "-1MB", "0", "1e3"):
        with pytest.raises(QuantizationError):
            parse_size(bad)


def test_plan_and_assignment():
    assert plan_shards([4, 4, 4, 9, 1, 1], 8) == [[0, 1], [2], [3], [4, 5]]
    assert plan_shards([], 8) == [[]]
    assert assign_shards([5, 9, 2, 7], 2) == [[1, 2], [0, 3]]  # 9, 7, 5 to 7, 2 to 9
    assert assign_shards([3, 3], 3) == [[0], [1], []]


def test_bad_options_exit_2(model, tmp_path):
    for bad in ("5XB", "0", "lots"):
        out = run("quantize", model, "-o", tmp_path / "o", "--shard-size", bad)
        assert out.returncode == 2 and "--shard-size" in out.stderr, out.stderr
    out = run("quantize", model, "-o", tmp_path / "o", "--workers", "2")
    assert out.returncode == 2 and "--shard-size" in out.stderr, out.stderr
    out = run("quantize", model, "-o", tmp_path / "o", "--workers", "0", "--shard-size", "1MB")
    assert out.returncode == 2 and "--workers" in out.stderr, out.stderr
    assert not (tmp_path / "o").exists()


def test_single_process_layout(model, tmp_path):
    plain, sharded = tmp_path / "plain", tmp_path / "sharded"
    assert run("quantize", model, "-o", plain, "--quiet").returncode == 0
    out = run("quantize", model, "-o", sharded, "--shard-size", "12KB")
    assert out.returncode == 0, out.stderr
    names = sorted(os.listdir(sharded))
    count = len(names) - 1
    assert count > 2 and names == sorted([INDEX] + [f"model-{i:05d}-of-{count:05d}.safetensors"
                                                    for i in range(1, count + 1)])
    index = json.loads((sharded / INDEX).read_text())
    sizes = [os.path.getsize(sharded / n) for n in names if n != INDEX]
    assert index["metadata"]["total_size"] == sum(sizes)
    got, want = read_all(sharded), read_all(plain)
    assert sorted(got) == sorted(want) == sorted(index["weight_map"])
    for name in want:
        assert got[name].dtype == want[name].dtype and np.array_equal(got[name], want[name])
    for shard in names[:-1]:
        with SafetensorsFile(sharded / shard) as f:
            keys = f.keys()
            assert all(index["weight_map"][k] == shard for k in keys)
            tensor_bytes = sum(f.nbytes(k) for k in keys)
        sources = {k.rsplit(".", 1)[0] if k.endswith(SUFFIXES) else k for k in keys}
        assert tensor_bytes <= 12_000 or len(sources) == 1  # only a lone large tensor passes
    # the stored tensors keep the input's order across shards
    order = [n for n, _, _ in tensors()]
    first = [min(k for k in index["weight_map"] if k.startswith(n)) for n in order]
    assert [index["weight_map"][k] for k in first] == sorted(index["weight_map"][k] for k in first)
    before = files_of(sharded)
    again = run("quantize", model, "-o", sharded, "--shard-size", "12KB", "--force", "--quiet")
    assert again.returncode == 0 and files_of(sharded) == before, again.stderr


def test_progress_counts_the_job(model, tmp_path):
    planned, done = [], []
    config = gq.QuantConfig(scheme="int8", granularity="channel", axis=0)
    stats = quantize_sharded(str(model), str(tmp_path / "o"), config, 10_000,
                             on_plan=planned.append, step=lambda name, n: done.append(n))
    total = sum(a.nbytes for _, _, a in tensors())
    assert planned == [total] and stats["bytes_in"] == total and stats["quantized"] == 8
    assert done == sorted(done) and len(done) == 9 and done[-1] == total


@pytest.mark.slow
def test_two_workers_byte_identical(model, tmp_path):
    one, two, tr = tmp_path / "one", tmp_path / "two", tmp_path / "torchrun"
    assert run("quantize", model, "-o", one, "--shard-size", "10KB").returncode == 0
    out = run("quantize", model, "-o", two, "--shard-size", "10KB", "--workers", "2")
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.count("quantized 8 tensor(s), kept 1") == 1, out.stdout  # rank 0 only
    assert files_of(one) == files_of(two) and len(files_of(one)) > 3
    out = run("--nnodes=1", "--nproc-per-node=2", "--master-addr=127.0.0.1",
              f"--master-port={_free_port()}", "--max-restarts=0", "-m", "gpuquant", "quantize",
              model, "-o", tr, "--shard-size", "10KB", "--quiet", module="torch.distributed.run")
    assert out.returncode == 0, out.stderr[-3000:]
    assert files_of(one) == files_of(tr)
    # one shard for two processes: rank 1 writes nothing and still agrees
    one, two = tmp_path / "one1", tmp_path / "two1"
    assert run("quantize", model, "-o", one, "--shard-size", "1GB").returncode == 0
    out = run("quantize", model, "-o", two, "--shard-size", "1GB", "--workers", "2")
    assert out.returncode == 0 and files_of(one) == files_of(two), out.stderr[-3000:]
    assert sorted(files_of(two)) == sorted([INDEX, "model-00001-of-00001.safetensors"])


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _by_hand(args, env):
    """Two ranks started without an agent: nobody kills the survivor for us."""
    port = str(_free_port())
    procs = [subprocess.Popen([sys.executable, "-m", "gpuquant", *map(str, args)],
                              env={**os.environ, **ENV, **env, "RANK": str(r), "LOCAL_RANK": str(r),
                                   "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1",
                                   "MASTER_PORT": port},
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for r in range(2)]
    return [p.communicate(timeout=120) + (p.returncode,) for p in procs]


@pytest.mark.slow
@pytest.mark.parametrize("dead", ["0", "1"])
def test_killed_rank_leaves_nothing(model, tmp_path, dead):
    args = ["quantize", model, "-o", tmp_path / "out", "--shard-size", "10KB"]
    results = _by_hand(args, {"GPUQUANT_TEST_EXIT_RANK": dead})
    assert all(code != 0 for _, _, code in results), results
    survivor = results[1 - int(dead)][1]
    assert "gpuquant: error: lost another rank" in survivor and "Traceback" not in survivor
    assert sorted(os.listdir(tmp_path)) == ["in"]  # no output, no staging folder
    out = run(*args, "--workers", "2", env={"GPUQUANT_TEST_EXIT_RANK": dead})
    assert out.returncode != 0 and "worker(s) failed" in out.stderr, out.stderr[-3000:]
    assert sorted(os.listdir(tmp_path)) == ["in"]


@pytest.mark.slow
def test_failure_on_rank_0_fails_every_rank(model, tmp_path):
    (tmp_path / "out").mkdir()  # exists, no --force: rank 0 refuses, rank 1 must stop too
    results = _by_hand(["quantize", model, "-o", tmp_path / "out", "--shard-size", "10KB"], {})
    assert [code for _, _, code in results] == [2, 1], results
    assert "exists" in results[0][1] and "another rank failed" in results[1][1], results
    assert os.listdir(tmp_path / "out") == [] and sorted(os.listdir(tmp_path)) == ["in", "out"]


@pytest.mark.parametrize("shard_size", [None, "12KB"])
def test_tensor_in_two_shards_is_refused(model, tmp_path, capsys, shard_size):
    """Issue 19 item 4b: a tensor stored in two input shards is refused, naming both."""
    from gpuquant.cli import main

    t = tensors()
    write_safetensors(model / "b.safetensors", t[5:] + [(t[0][0], "F32", t[0][2] * 100)])
    extra = ["--shard-size", shard_size] if shard_size else []
    assert main(["quantize", str(model), "-o", str(tmp_path / "o"), *extra]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and t[0][0] in err, err
    assert "a.safetensors" in err and "b.safetensors" in err, err
    assert not (tmp_path / "o").exists()
    for reader in ("dequantize", "inspect"):
        argv = [reader, str(model)] + (["-o", str(tmp_path / "d")] if reader == "dequantize" else [])
        assert main(argv) == 2
        assert "b.safetensors" in capsys.readouterr().err


@pytest.mark.slow
def test_workers_leave_no_launcher_logs(model, tmp_path):
    """Issue 19 item 26: --workers keeps no torchelastic_* folder in the temporary folder."""
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    out = run("quantize", model, "-o", tmp_path / "o", "--shard-size", "10KB", "--workers", "2",
              "--quiet", env={"TMPDIR": str(tmp)})
    assert out.returncode == 0, out.stderr[-3000:]
    assert os.listdir(tmp) == []
