"""Hostile output paths through every command that writes (issue 19): the input, a symlink to
it, a FIFO, a device node, a folder holding a symlink to an input shard, a read-only folder,
an empty name. Whatever happens, the command exits 0 or 2 with one line, no input file and no
non-gpuquant file changes, and only regular files appear. Every path lives in tmp_path."""

import json
import os
import shutil
import stat

import pytest
from export_models import save_llama
from test_cli import tensors

from gpuquant.checkpoint.files import write_safetensors
from gpuquant.cli import main


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    """One of each input: a file, a sharded folder, a quantized file, a Hugging Face folder."""
    root = tmp_path_factory.mktemp("sources")
    single = root / "model.safetensors"
    write_safetensors(single, tensors(), {"format": "pt"})
    sharded = root / "sharded"
    sharded.mkdir()
    items, weight_map = tensors(), {}
    for i, part in enumerate((items[:3], items[3:])):
        name = f"model-0000{i + 1}-of-00002.safetensors"
        write_safetensors(sharded / name, part, {"format": "pt"})
        weight_map.update({n: name for n, _, _ in part})
    (sharded / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    quantized = root / "q.safetensors"
    assert main(["quantize", str(single), "-o", str(quantized), "--device", "cpu", "--quiet"]) == 0
    hf = save_llama(root / "llama", layers=1)
    return {"file": single, "folder": sharded, "quantized": quantized, "hf": root / "llama",
            "_hf": hf}


# command -> (input kind, extra arguments, whether the output is a folder)
COMMANDS = {
    "quantize": ("file", [], False),
    "quantize-folder": ("folder", [], True),
    "quantize-shard-size": ("file", ["--shard-size", "4KB"], True),
    "dequantize": ("quantized", [], False),
    "gguf": ("file", ["--format", "gguf-q8_0"], False),
    "export": ("hf", ["--group-size", "32"], True),
}


def _argv(command, src, out):
    kind, extra, _ = COMMANDS[command]
    verb = {"dequantize": "dequantize", "export": "export"}.get(command, "quantize")
    device = [] if command == "dequantize" else ["--device", "cpu"]
    return [verb, str(src), "-o", str(out), "--force", "--quiet", *device, *extra]


def _snapshot(root):
    """Every path under ``root`` (links not followed): its kind, and the bytes of regular files."""
    seen = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            mode = os.lstat(path).st_mode
            data = open(path, "rb").read() if stat.S_ISREG(mode) else None
            seen[os.path.relpath(path, root)] = (stat.S_IFMT(mode), data)
    return seen


def _hostile(kind, tmp_path, src, folder_out):
    """Make the hostile output; returns its path."""
    out = tmp_path / ("out" if folder_out else "out.safetensors")
    if kind == "the input":
        return src
    if kind == "symlink to the input":
        out.symlink_to(src)
    elif kind == "fifo":
        os.mkfifo(out)
    elif kind == "device":
        try:
            os.mknod(out, 0o600 | stat.S_IFCHR, os.makedev(1, 3))
        except PermissionError:
            pytest.skip("making a device node needs root")
    elif kind == "folder with a symlink to an input shard":
        out.mkdir()
        shard = next(p for p in sorted(src.iterdir()) if p.suffix == ".safetensors") \
            if src.is_dir() else src
        for name in ("model.safetensors", "model-00001-of-00002.safetensors",
                     "model-00001-of-00001.safetensors"):
            (out / name).symlink_to(shard)
    elif kind == "read-only folder":
        ro = tmp_path / "ro"
        ro.mkdir()
        out = ro / out.name
        os.chmod(ro, 0o555)
    elif kind == "empty name":
        return ""
    return out


KINDS = ["the input", "symlink to the input", "fifo", "device",
         "folder with a symlink to an input shard", "read-only folder", "empty name"]


@pytest.mark.parametrize(("command", "kind"), [
    (c, k) for c in sorted(COMMANDS) for k in KINDS
    if COMMANDS[c][2] or k != "folder with a symlink to an input shard"])  # folder outputs only
def test_hostile_outputs_lose_nothing(tmp_path, sources, command, kind, capsys):
    src_kind, _, folder_out = COMMANDS[command]
    src = tmp_path / "src"
    copy = shutil.copytree if sources[src_kind].is_dir() else shutil.copy2
    copy(sources[src_kind], src)
    out = _hostile(kind, tmp_path, src, folder_out)
    before = _snapshot(tmp_path)
    try:
        code = main(_argv(command, src, out))
    except SystemExit as exc:  # argparse's own errors
        code = exc.code
    finally:
        os.chmod(tmp_path, 0o755)
        for ro in tmp_path.glob("ro"):
            os.chmod(ro, 0o755)
    err = capsys.readouterr().err
    assert code in (0, 2), err
    assert code == 0 or err.count("\n") == 1, err
    after = _snapshot(tmp_path)
    for path, (mode, data) in before.items():  # nothing that was there changed or went
        if kind != "read-only folder":
            assert after.get(path) == (mode, data), (path, err)
    new = set(after) - set(before)
    assert all(after[p][0] in (stat.S_IFREG, stat.S_IFDIR) for p in new), new
    assert not [p for p in new if os.path.basename(p).startswith(".gpuquant-")], new
    if kind in ("the input", "symlink to the input", "fifo", "device", "empty name",
                "folder with a symlink to an input shard"):
        assert code == 2, err
