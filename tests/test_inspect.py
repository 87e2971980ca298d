"""gpuquant inspect: full names and SQNR summaries for every format; crafted compressed-tensors
folders are one-line errors (issue 19 items 15 and 23)."""

import json

import numpy as np
import pytest

from gpuquant.checkpoint.files import write_safetensors
from gpuquant.cli import main
from gpuquant.core.pack_quantized import pack32

ROWS, COLS, GROUP = 8, 64, 32


def strict(text):
    return json.loads(text, parse_constant=lambda c: pytest.fail(f"not strict JSON: {c}"))


def ct_folder(tmp_path, weights=None, shape=(ROWS, COLS), groups=COLS // GROUP, groups_key=None):
    """A hand-made compressed-tensors folder: one symmetric int4 weight, and its reference."""
    rng = np.random.default_rng(0)
    w = rng.standard_normal((ROWS, COLS)).astype(np.float32)
    folder = tmp_path / "ct"
    folder.mkdir(exist_ok=True)
    weights = weights or {"num_bits": 4, "symmetric": True, "strategy": "group",
                          "group_size": GROUP, "type": "int"}
    config_groups = groups_key if groups_key is not None else {"group_0": {"weights": weights,
                                                                           "targets": ["Linear"]}}
    qc = {"quant_method": "compressed-tensors", "format": "pack-quantized",
          "config_groups": config_groups}
    (folder / "config.json").write_text(json.dumps({"quantization_config": qc}))
    scale = np.abs(w).reshape(ROWS, COLS // GROUP, GROUP).max(-1) / 7
    codes = np.clip(np.round(w / np.repeat(scale, GROUP, 1)), -8, 7).astype(np.int32) + 8
    write_safetensors(folder / "model.safetensors", [
        ("fc.weight_packed", "I32", pack32(codes.astype(np.uint8), 4)),
        ("fc.weight_scale", "F32", scale[:, :groups].astype(np.float32).copy()),
        ("fc.weight_shape", "I64", np.array(shape, np.int64)),
        ("a_rather_long_module_name.with.many.parts.and_a_norm.weight", "F32", w[0].copy())])
    ref = tmp_path / "ref.safetensors"
    write_safetensors(ref, [("fc.weight", "F32", w),
                            ("a_rather_long_module_name.with.many.parts.and_a_norm.weight", "F32",
                             w[0].copy())])
    return str(folder), str(ref)


def test_compressed_tensors_names_in_full_and_sqnr_summary(tmp_path, capsys):
    folder, ref = ct_folder(tmp_path)
    long = "a_rather_long_module_name.with.many.parts.and_a_norm.weight"
    assert main(["inspect", folder, "--reference", ref]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert any(line.startswith(long + " ") for line in lines), lines
    assert main(["inspect", folder, "--reference", ref, "--json"]) == 0
    doc = strict(capsys.readouterr().out)
    sqnr = {r["name"]: r["sqnr_db"] for r in doc["tensors"] if "sqnr_db" in r}
    assert list(sqnr) == ["fc.weight"] and 10 < sqnr["fc.weight"] < 30
    assert doc["sqnr_min_db"] == doc["sqnr_median_db"] == sqnr["fc.weight"]
    assert lines[-1].endswith(f"SQNR min {sqnr['fc.weight']:.2f} dB, median "
                              f"{sqnr['fc.weight']:.2f} dB"), lines[-1]


@pytest.mark.parametrize("case", ["shape3", "negative", "no_groups", "bits_text", "groups_list"])
def test_crafted_compressed_tensors_folder_is_one_line(tmp_path, capsys, case):
    weights = {"num_bits": "4", "symmetric": True, "strategy": "group", "group_size": GROUP}
    folder, ref = ct_folder(tmp_path, **{
        "shape3": {"shape": (ROWS, COLS, 1)}, "negative": {"shape": (ROWS, -COLS)},
        "no_groups": {"groups": 0}, "bits_text": {"weights": weights},
        "groups_list": {"groups_key": [{"weights": {"num_bits": 4}}]}}[case])
    assert main(["inspect", folder, "--reference", ref]) == 2
    err = capsys.readouterr().err
    assert err.startswith("gpuquant: error:") and err.count("\n") == 1, err
    assert folder in err and "internal" not in err


def test_dequantized_file_against_its_reference_has_sqnr(tmp_path, capsys):
    rng = np.random.default_rng(1)
    src = tmp_path / "in.safetensors"
    write_safetensors(src, [("w", "F32", rng.standard_normal((32, 64)).astype(np.float32)),
                            ("n", "F32", rng.standard_normal(64).astype(np.float32)),
                            ("i", "I64", np.arange(4, dtype=np.int64))])
    q, d = tmp_path / "q.safetensors", tmp_path / "d.safetensors"
    assert main(["quantize", str(src), "-o", str(q), "--scheme", "int4", "--quiet"]) == 0
    assert main(["dequantize", str(q), "-o", str(d), "--quiet"]) == 0
    assert main(["inspect", str(q), "--reference", str(src), "--json"]) == 0
    quantized = strict(capsys.readouterr().out)
    assert main(["inspect", str(d), "--reference", str(src), "--json"]) == 0
    doc = strict(capsys.readouterr().out)
    rows = {r["name"]: r for r in doc["tensors"]}
    want = {r["name"]: r for r in quantized["tensors"]}["w"]
    assert rows["w"]["identical"] is False
    assert rows["w"]["sqnr_db"] == want["sqnr_db"] and rows["w"]["max_abs_err"] == want["max_abs_err"]
    assert rows["n"]["identical"] and "sqnr_db" not in rows["n"] and rows["i"]["identical"]
    assert doc["sqnr_min_db"] == want["sqnr_db"]
    assert main(["inspect", str(d), "--reference", str(src)]) == 0
    table = capsys.readouterr().out
    assert "DIFFERENT" not in table and f"SQNR min {want['sqnr_db']:.2f} dB" in table


def test_inspect_of_an_empty_quantized_tensor_says_nothing_untrue(tmp_path, capsys):
    """A file holding an empty quantized tensor: no "infx" compression, null in the JSON."""
    import gpuquant as gq
    from gpuquant.core.layout import Layout

    config = gq.QuantConfig.int4_per_group(group_size=2)
    layout = Layout.of((0, 6), config)
    qt = gq.QuantizedTensor(np.zeros(layout.packed_shape(config.bits), config.storage_dtype),
                            np.ones(layout.unit_shape, np.float32),
                            np.zeros(layout.unit_shape, np.int32), (0, 6), "float16", config)
    path = tmp_path / "e.safetensors"
    gq.save(path, {"e": qt})
    assert main(["inspect", str(path)]) == 0
    text = capsys.readouterr().out
    assert "inf" not in text and "compression -" in text, text
    assert main(["inspect", str(path), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["compression_ratio"] is None
