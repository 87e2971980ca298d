"""`gpuquant export`: bad input gives one line on stderr, exit 2, and no output folder."""

import json
import os
import shutil
import sys

import numpy as np
import pytest
from export_models import read_tensors, save_llama

from gpuquant.checkpoint.files import write_safetensors
from gpuquant.cli import main

pytest.importorskip("torch")
pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    return {"single": save_llama(root / "llama", layers=1),
            "sharded": save_llama(root / "llama_sh", shard="40KB", layers=1)}


def copy(src, dst):
    shutil.copytree(src, dst)
    return str(dst)


def fails(capsys, argv, *words):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("gpuquant: error:") and "\n" not in err, err
    for word in words:
        assert word in err, err
    return err


def left_behind(folder):
    return [n for n in os.listdir(folder) if n.startswith(".gpuquant")]


def test_folder_without_config(tmp_path, llama, capsys):
    src = copy(llama["single"], tmp_path / "m")
    os.unlink(os.path.join(src, "config.json"))
    out = tmp_path / "out"
    fails(capsys, ["export", src, "-o", str(out)], "no config.json")
    assert not out.exists() and not left_behind(tmp_path)


def test_unknown_architecture_names_targets(tmp_path, llama, capsys):
    src = copy(llama["single"], tmp_path / "m")
    path = os.path.join(src, "config.json")
    with open(path) as f:
        config = json.load(f)
    config.update(model_type="notamodel", architectures=["NotAModel"])
    with open(path, "w") as f:
        json.dump(config, f)
    out = tmp_path / "out"
    fails(capsys, ["export", src, "-o", str(out)], "--targets REGEX")
    assert not out.exists() and not left_behind(tmp_path)
    # the fallback: module names by regular expression
    assert main(["export", src, "-o", str(out), "--group-size", "32", "--quiet",
                 "--targets", r"model\.layers\.\d+\.(self_attn|mlp)\."]) == 0
    tensors = read_tensors(out)
    assert sum(k.endswith("_packed") for k in tensors) == 7
    assert "model.embed_tokens.weight" in tensors and "lm_head.weight" in tensors
    with open(out / "config.json") as f:
        qc = json.load(f)["quantization_config"]
    assert qc["config_groups"]["group_0"]["targets"] == [r"re:model\.layers\.\d+\.(self_attn|mlp)\."]


def test_group_size_must_divide_in_features(tmp_path, llama, capsys):
    out = tmp_path / "out"
    fails(capsys, ["export", llama["single"], "-o", str(out), "--group-size", "48"],
          "--group-size 48", "input features")
    assert not out.exists() and not left_behind(tmp_path)


def test_existing_output_needs_force(tmp_path, llama, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    (out / "model-00001-of-00009.safetensors").write_bytes(b"stale")
    fails(capsys, ["export", llama["single"], "-o", str(out)], "--force")
    assert sorted(os.listdir(out)) == ["model-00001-of-00009.safetensors", "notes.txt"]
    assert main(["export", llama["single"], "-o", str(out), "--force", "--group-size", "32",
                 "--quiet"]) == 0
    names = set(os.listdir(out))
    assert (out / "notes.txt").read_text() == "mine"  # --force replaces only what it writes
    assert "model-00001-of-00009.safetensors" not in names  # a stale shard would be loaded
    assert {"model.safetensors", "config.json", "tokenizer.json"} <= names
    assert not left_behind(tmp_path)


def test_truncated_shard(tmp_path, llama, capsys):
    src = copy(llama["sharded"], tmp_path / "m")
    shards = sorted(n for n in os.listdir(src) if n.endswith(".safetensors"))
    victim = os.path.join(src, shards[-1])
    with open(victim, "r+b") as f:
        f.truncate(os.path.getsize(victim) - 100)
    out = tmp_path / "out"
    fails(capsys, ["export", src, "-o", str(out), "--group-size", "32"], "truncated", shards[-1])
    assert not out.exists() and not left_behind(tmp_path)


def test_nonfinite_weight(tmp_path, llama, capsys):
    src = copy(llama["single"], tmp_path / "m")
    tensors = read_tensors(src)
    tensors["model.layers.0.mlp.up_proj.weight"][3, 5] = np.nan
    write_safetensors(os.path.join(src, "model.safetensors"),
                      [(k, "F32", v) for k, v in tensors.items()], {"format": "pt"})
    out = tmp_path / "out"
    fails(capsys, ["export", src, "-o", str(out), "--group-size", "32"], "non-finite")
    assert not out.exists() and not left_behind(tmp_path)
    assert main(["export", src, "-o", str(out), "--group-size", "32", "--ignore-nonfinite",
                 "--quiet", "--calibration", "percentile", "--percentile", "0.1", "99.9"]) == 0
    assert "model.layers.0.mlp.up_proj.weight_packed" in read_tensors(out)


def test_inspect_compressed_tensors_folder(tmp_path, llama, capsys):
    out = tmp_path / "out"
    assert main(["export", llama["single"], "-o", str(out), "--group-size", "32", "--asymmetric",
                 "--quiet"]) == 0
    capsys.readouterr()
    assert main(["inspect", str(out), "--reference", llama["single"], "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["format"] == "compressed-tensors pack-quantized"
    assert report["scheme"] == "int4 asym group32"
    rows = {r["name"]: r for r in report["tensors"]}
    up = rows["model.layers.0.mlp.up_proj.weight"]
    assert up["shape"] == [128, 64] and 15 < up["sqnr_db"] < 30
    assert up["bytes"] == 128 * 8 * 4 + 128 * 2 * 4 + 16 + 16 * 2 * 4  # words, scales, shape, zp
    assert rows["lm_head.weight"]["scheme"] == "-"
    assert main(["inspect", str(out)]) == 0
    assert "int4 asym group32" in capsys.readouterr().out


def test_group_size_needs_group_granularity_and_help_shows_defaults(tmp_path, llama, capsys):
    """Issue 19 item 19: as quantize, export refuses --group-size without group; its help
    shows the defaults."""
    out = tmp_path / "out"
    fails(capsys, ["export", llama["single"], "-o", str(out), "--granularity", "channel",
                   "--group-size", "64"], "--group-size needs --granularity group")
    assert not out.exists()
    with pytest.raises(SystemExit):
        main(["export", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for default in ("(default: int4)", "(default: group)", "(default: minmax)",
                    "(default: ['lm_head'])", "(default: model)", "(default: auto)",
                    "(default 128 there)"):
        assert default in text, text


def test_exported_folder_is_already_quantized(tmp_path, llama, capsys):
    """Issue 19 item 20: re-exporting an export says it is already quantized."""
    first = tmp_path / "first"
    assert main(["export", llama["single"], "-o", str(first), "--group-size", "32", "--quiet"]) == 0
    out = tmp_path / "again"
    fails(capsys, ["export", str(first), "-o", str(out)], "already quantized",
          "compressed-tensors")
    assert not out.exists() and not left_behind(tmp_path)


def test_workers_without_torch_give_the_pip_command(tmp_path, llama, capsys, monkeypatch):
    """Issue 19 item 21: --workers 2 without torch names the pip command, exit 2."""
    monkeypatch.setitem(sys.modules, "torch", None)
    out = tmp_path / "out"
    fails(capsys, ["export", llama["single"], "-o", str(out), "--workers", "2"],
          "--workers 2", "pip install torch")
    single = os.path.join(llama["single"], "model.safetensors")
    fails(capsys, ["quantize", single, "-o", str(out), "--shard-size", "1MB", "--workers", "2"],
          "--workers 2", "pip install torch")
    assert not out.exists()
