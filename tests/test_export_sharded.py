"""gpuquant export on two gloo processes (--workers 2, CPU): byte-identical to one process,
a rank that dies leaves nothing; GGUF output refuses --shard-size and --workers."""

import os
import subprocess
import sys

import pytest

from gpuquant.cli import main

pytest.importorskip("torch")
pytest.importorskip("transformers")

from export_models import save_llama  # noqa: E402

ENV = {"GLOO_SOCKET_IFNAME": "lo", "OMP_NUM_THREADS": "1"}
OPTIONS = ["--group-size", "32", "--device", "cpu", "--quiet"]


def run(*args, env=None, module="gpuquant"):
    return subprocess.run([sys.executable, "-m", module, *map(str, args)],
                          capture_output=True, text=True, timeout=120,
                          env={**os.environ, **ENV, **(env or {})})


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    return save_llama(tmp_path_factory.mktemp("sharded") / "llama", shard="40KB", layers=2)


def files_of(folder):
    return {n: (folder / n).read_bytes() for n in sorted(os.listdir(folder))}


def test_two_workers_byte_identical(llama, tmp_path):
    one, two, tr = tmp_path / "one", tmp_path / "two", tmp_path / "torchrun"
    assert main(["export", llama, "-o", str(one), *OPTIONS]) == 0
    out = run("export", llama, "-o", two, *OPTIONS[:-1], "--workers", "2")
    assert out.returncode == 0, out.stderr
    assert out.stdout.count("exported ") == 1  # rank 0 reports the whole job, once
    want = files_of(one)
    assert len([n for n in want if n.endswith(".safetensors")]) > 2
    assert files_of(two) == want
    out = run("--standalone", "--nproc-per-node=2", "--max-restarts=0", "-m", "gpuquant",
              "export", llama, "-o", tr, *OPTIONS, module="torch.distributed.run")
    assert out.returncode == 0, out.stderr[-3000:]
    assert files_of(tr) == want
    assert sorted(os.listdir(tmp_path)) == ["one", "torchrun", "two"]  # no staging folder


def test_dead_rank_leaves_nothing(llama, tmp_path):
    out = run("export", llama, "-o", tmp_path / "o", *OPTIONS, "--workers", "2",
              env={"GPUQUANT_TEST_EXIT_RANK": "1"})
    assert out.returncode != 0
    assert "worker(s) failed" in out.stderr, out.stderr
    assert os.listdir(tmp_path) == []


def test_bad_workers_exit_2(llama, tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:  # argparse
        main(["export", llama, "-o", str(tmp_path / "o"), "--workers", "0"])
    assert exc.value.code == 2 and "--workers" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("option", [["--shard-size", "1MB"], ["--workers", "2"]])
def test_gguf_refuses_shards(llama, tmp_path, capsys, option):
    out = tmp_path / "m.gguf"
    shard = os.path.join(llama, sorted(os.listdir(llama))[-3])  # the last shard
    code = main(["quantize", shard, "-o", str(out), "--format", "gguf-q8_0", *option])
    err = capsys.readouterr().err
    assert code == 2 and "GGUF output is one file" in err and err.count("\n") == 1, err
    assert not out.exists()
