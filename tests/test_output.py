"""The one output writer (gpuquant/checkpoint/output.py): what it never replaces, exclusive
creation, modes, stale temporaries and stale shards. Every path lives in tmp_path."""

import json
import os
import stat
import subprocess
import sys
import threading

import numpy as np
import pytest

import gpuquant as gq
from gpuquant.checkpoint import output
from gpuquant.errors import OutputPathError


def _fifo(path):
    os.mkfifo(path)
    return path


def _device(path):
    """A character device like /dev/null, made inside the temporary folder (root only)."""
    try:
        os.mknod(path, 0o600 | stat.S_IFCHR, os.makedev(1, 3))
    except PermissionError:
        pytest.skip("making a device node needs root")
    return path


def _symlink(path):
    target = path.parent / "target.bin"
    target.write_bytes(b"the user's")
    path.symlink_to(target)
    return path


SPECIAL = {"fifo": _fifo, "device": _device, "symlink": _symlink}


@pytest.mark.parametrize("kind", sorted(SPECIAL))
@pytest.mark.parametrize("force", [False, True])
def test_a_special_file_is_never_replaced(tmp_path, kind, force):
    node = SPECIAL[kind](tmp_path / "out.safetensors")
    before = os.lstat(node)
    with pytest.raises(OutputPathError, match="out.safetensors"):
        with output.staged_file(str(node), force=force) as tmp:
            open(tmp, "wb").close()
    after = os.lstat(node)
    assert (after.st_mode, after.st_ino) == (before.st_mode, before.st_ino)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".gpuquant-")] == []


@pytest.mark.parametrize("kind", sorted(SPECIAL))
def test_gq_save_replaces_only_regular_files(tmp_path, kind):
    node = SPECIAL[kind](tmp_path / "w.safetensors")
    mode = os.lstat(node).st_mode
    with pytest.raises(OutputPathError):
        gq.save(str(node), {"w": np.ones(4, np.float32)})
    assert os.lstat(node).st_mode == mode
    regular = tmp_path / "r.safetensors"
    regular.write_bytes(b"old")
    gq.save(str(regular), {"w": np.ones(4, np.float32)})  # an API save replaces a regular file
    assert np.array_equal(gq.load(str(regular))["w"], np.ones(4, np.float32))


def test_save_to_a_missing_folder_names_it(tmp_path):
    target = tmp_path / "nope" / "w.safetensors"
    with pytest.raises(gq.OutputPathError, match=r"output folder '.*nope' does not exist"):
        gq.save(target, {"a": np.ones(2)})
    assert issubclass(gq.OutputPathError, gq.QuantizationError)
    with pytest.raises(gq.OutputPathError, match="is a folder"):
        gq.save(tmp_path, {"a": np.ones(2)})
    assert os.listdir(tmp_path) == []


def test_the_input_is_never_an_output(tmp_path):
    src = tmp_path / "in.safetensors"
    src.write_bytes(b"input")
    link = tmp_path / "link.safetensors"
    link.symlink_to(src)
    hard = tmp_path / "hard.safetensors"
    os.link(src, hard)
    for out in (src, link, hard):
        with pytest.raises(OutputPathError, match="input"):
            output.check_output(str(out), [str(src)], force=True, folder=False)
    folder = tmp_path / "model"
    folder.mkdir()
    shard = folder / "model.safetensors"
    shard.write_bytes(b"shard")
    with pytest.raises(OutputPathError, match="input"):  # the output folder holds an input
        output.check_output(str(folder), [str(shard)], force=True, folder=True,
                            names=["model-00001-of-00001.safetensors"])
    other = tmp_path / "other"
    other.mkdir()
    (other / "model.safetensors").symlink_to(shard)  # a symlink to an input in the output
    with pytest.raises(OutputPathError):
        output.check_output(str(other), [str(shard)], force=True, folder=True,
                            names=["model.safetensors"])
    assert shard.read_bytes() == b"shard" and os.path.islink(other / "model.safetensors")


def test_empty_output_is_refused_before_any_work(tmp_path):
    with pytest.raises(OutputPathError, match="output=''"):
        output.check_output("", [], force=True, folder=False)


def test_a_new_file_is_created_exclusively(tmp_path):
    out = tmp_path / "new.safetensors"
    with pytest.raises(OutputPathError, match="another process"):
        with output.staged_file(str(out)) as tmp:
            with open(tmp, "wb") as f:
                f.write(b"mine")
            out.write_bytes(b"theirs")  # another run creates the same name meanwhile
    assert out.read_bytes() == b"theirs"
    assert [p.name for p in tmp_path.iterdir()] == ["new.safetensors"]


def test_a_new_folder_is_created_exclusively(tmp_path):
    out = tmp_path / "new"
    with pytest.raises(OutputPathError, match="another process"):
        with output.staged_folder(str(out), names=["a.bin"]) as staging:
            (open(os.path.join(staging, "a.bin"), "wb")).close()
            out.mkdir()  # another run creates it meanwhile (empty: a plain rename would win)
            (out / "theirs.txt").write_text("theirs")
    assert sorted(p.name for p in out.iterdir()) == ["theirs.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["new"]


def test_of_two_runs_creating_one_folder_one_fails(tmp_path):
    out, results = tmp_path / "same", []
    barrier = threading.Barrier(2)

    def run(tag):
        try:
            with output.staged_folder(str(out), names=["who"]) as staging:
                with open(os.path.join(staging, "who"), "w") as f:
                    f.write(tag)
                barrier.wait()
            results.append(tag)
        except OutputPathError:
            results.append("refused")

    threads = [threading.Thread(target=run, args=(t,)) for t in ("a", "b")]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert sorted(results)[1] == "refused" and (out / "who").read_text() == sorted(results)[0]


def test_modes_follow_the_umask_and_a_replaced_file_keeps_its_own(tmp_path):
    old = os.umask(0o027)
    try:
        new = tmp_path / "new.safetensors"
        gq.save(str(new), {"w": np.ones(2, np.float32)})
        assert stat.S_IMODE(os.stat(new).st_mode) == 0o640
        kept = tmp_path / "kept.safetensors"
        kept.write_bytes(b"x")
        os.chmod(kept, 0o604)
        gq.save(str(kept), {"w": np.ones(2, np.float32)})
        assert stat.S_IMODE(os.stat(kept).st_mode) == 0o604
        with output.staged_folder(str(tmp_path / "folder")) as staging:
            open(os.path.join(staging, "f"), "w").close()
        assert stat.S_IMODE(os.stat(tmp_path / "folder").st_mode) == 0o750
    finally:
        os.umask(old)


def _dead_pid():
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_temporaries_of_a_killed_run_are_removed_by_the_next(tmp_path):
    dead = output._temp_name(str(tmp_path), (output.HOST, _dead_pid(), 7), ".tmp")
    open(dead, "wb").write(b"x" * 100)
    dead_folder = output._temp_name(str(tmp_path), (output.HOST, _dead_pid(), 8))
    os.mkdir(dead_folder)
    alive = output._temp_name(str(tmp_path), (output.HOST, os.getpid(), 9), ".tmp")
    open(alive, "wb").close()
    elsewhere = output._temp_name(str(tmp_path), (output.HOST ^ 1, _dead_pid(), 10), ".tmp")
    open(elsewhere, "wb").close()
    user = tmp_path / ".gpuquant-notes.txt"  # not a name gpuquant makes
    user.write_text("mine")
    gq.save(str(tmp_path / "w.safetensors"), {"w": np.ones(2, np.float32)})
    left = sorted(p.name for p in tmp_path.iterdir())
    assert os.path.basename(dead) not in left and os.path.basename(dead_folder) not in left
    assert {os.path.basename(alive), os.path.basename(elsewhere), user.name} <= set(left)


def test_force_into_a_folder_removes_stale_shards_and_keeps_other_files(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    for i in range(1, 6):
        (out / f"model-0000{i}-of-00005.safetensors").write_bytes(b"old")
    (out / "model.safetensors.index.json").write_text(json.dumps(
        {"weight_map": {"a": "model-00001-of-00005.safetensors", "b": "custom.safetensors"}}))
    (out / "custom.safetensors").write_bytes(b"listed in the old index")
    (out / "README.md").write_text("notes")
    (out / "mine.safetensors").write_bytes(b"not a shard name, not in the index")
    with output.staged_folder(str(out), force=True,
                              names=["model-00001-of-00001.safetensors"]) as staging:
        for name in ("model-00001-of-00001.safetensors", output.INDEX_NAME):
            open(os.path.join(staging, name), "w").close()
    assert sorted(p.name for p in out.iterdir()) == [
        "README.md", "mine.safetensors", "model-00001-of-00001.safetensors",
        "model.safetensors.index.json"]
