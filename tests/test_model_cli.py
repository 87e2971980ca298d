"""`gpuquant export --method hqq|gptq` and `python -m bench.quality` on a tiny BERT folder
(built from a config, with a character tokenizer: no downloads)."""

import json
import os
import pathlib
import subprocess
import sys

import pytest
from export_models import read_tensors
from model_fixtures import save_tiny_bert

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
pytest.importorskip("compressed_tensors")

import gpuquant as gq  # noqa: E402
from gpuquant.cli.main import main  # noqa: E402
from gpuquant.model.text import load_tokenizer, tokenize_samples  # noqa: E402
from gpuquant.nn import QuantizedLinear  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.filterwarnings("ignore:You passed `quantization_config`:UserWarning")
LINES = ["the quick brown fox jumps over the lazy dog", "", "pack my box with five dozen jugs",
         "how vexingly quick daft zebras jump", "sphinx of black quartz, judge my vow",
         "a line past --samples"]


@pytest.fixture(scope="module")
def bert(tmp_path_factory):
    return save_tiny_bert(tmp_path_factory.mktemp("tiny") / "bert")


def loaded_weights(folder):
    from transformers import AutoModel, CompressedTensorsConfig

    transformers.logging.set_verbosity_error()
    model = AutoModel.from_pretrained(folder, quantization_config=CompressedTensorsConfig(
        dequantize=True))
    return {n: m.weight.data for n, m in model.named_modules() if type(m) is torch.nn.Linear}


def in_memory(folder, method, config, calibration=None):
    from transformers import BertModel

    model = BertModel.from_pretrained(folder).eval()
    gq.quantize_model(model, config, method=method, calibration=calibration)
    return {n: m.dequantized_weight() for n, m in model.named_modules()
            if isinstance(m, QuantizedLinear)}


def test_gptq_export_equals_quantize_model_with_the_same_samples(bert, tmp_path, capsys):
    data = tmp_path / "calib.txt"
    data.write_text("\n".join(LINES) + "\n")
    out = str(tmp_path / "out")
    assert main(["export", bert, "-o", out, "--method", "gptq", "--calibration-data", str(data),
                 "--samples", "4", "--seq-len", "16", "--device", "cpu"]) == 0
    assert "(gptq)" in capsys.readouterr().out
    assert {"tokenizer.json", "config.json", "model.safetensors"} <= set(os.listdir(out))
    items = tokenize_samples(load_tokenizer(bert), [x for x in LINES if x][:4], 16)
    assert all(item["input_ids"].shape[1] <= 16 for item in items)
    want = in_memory(bert, "gptq", gq.QuantConfig.int4_per_group(128), items)
    got = loaded_weights(out)
    assert set(want) <= set(got) and len(want) == 13
    for name, weight in want.items():
        assert torch.equal(got[name], weight), name


def test_hqq_export_asymmetric(bert, tmp_path):
    out = str(tmp_path / "out")
    assert main(["export", bert, "-o", out, "--method", "hqq", "--asymmetric", "--group-size",
                 "64", "--quiet"]) == 0
    cfg = gq.QuantConfig.int4_per_group(64, symmetric=False)
    want, got = in_memory(bert, "hqq", cfg), loaded_weights(out)
    for name, weight in want.items():
        assert torch.equal(got[name], weight), name
    qc = json.load(open(os.path.join(out, "config.json")))["quantization_config"]
    assert qc["config_groups"]["group_0"]["weights"]["symmetric"] is False


def test_export_model_writes_what_gpuquant_export_writes(bert, tmp_path):
    """Round-to-nearest in memory, then gq.export_model, gives the streaming exporter's tensors."""
    assert main(["export", bert, "-o", str(tmp_path / "streamed"), "--quiet"]) == 0
    from transformers import BertModel

    model = BertModel.from_pretrained(bert)
    gq.quantize_model(model, gq.QuantConfig.int4_per_group(128))
    gq.export_model(model, str(tmp_path / "memory"))
    a, b = read_tensors(tmp_path / "streamed"), read_tensors(tmp_path / "memory")
    assert set(a) == set(b)
    for key in a:
        assert a[key].dtype == b[key].dtype and (a[key] == b[key]).all(), key


@pytest.mark.parametrize("argv,words", [
    (["--method", "gptq"], "--calibration-data"),
    (["--method", "hqq", "--calibration-data", "x.txt"], "is for --method gptq"),
    (["--method", "hqq", "--workers", "2"], "one process"),
    (["--method", "gptq", "--calibration-data", "x.txt", "--samples", "0"], "positive"),
])
def test_refusals(bert, tmp_path, capsys, argv, words):
    assert main(["export", bert, "-o", str(tmp_path / "out"), *argv]) == 2
    assert words in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_bench_quality_on_a_tiny_saved_model(bert, tmp_path):
    out = tmp_path / "quality.json"
    proc = subprocess.run([sys.executable, "-m", "bench.quality", bert, "--samples", "4",
                           "--seq-len", "24", "--per-layer", "--json", str(out)], cwd=ROOT,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    rows = result["rows"]
    assert [(r["scheme"].split("/")[0], r["method"]) for r in rows] == [
        (s, m) for s in ("int4", "int8") for m in ("rtn", "mse", "hqq", "gptq")]
    for r in rows:
        assert 0.9 < r["cos_min"] <= r["cos_mean"] <= 1.0 + 1e-12 and r["seconds"] > 0
        assert len(r["layers"]) == 13 and r["sqnr_min"] <= r["sqnr_mean"]
    by = {(r["scheme"].split("/")[0], r["method"]): r for r in rows}
    assert by["int4", "mse"]["sqnr_mean"] > by["int4", "rtn"]["sqnr_mean"]
    assert by["int4", "hqq"]["sqnr_mean"] >= by["int4", "rtn"]["sqnr_mean"]
    assert by["int8", "rtn"]["sqnr_mean"] > by["int4", "rtn"]["sqnr_mean"] + 20
    assert "SQNR dB per layer" in proc.stdout and "gptq" in proc.stdout
