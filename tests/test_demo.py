"""gpuquant demo: rows as they are measured, where the plot goes, and why two rows look odd
(issue 19 item 24)."""

import os

import pytest

from gpuquant.cli import demo, main


def test_run_demo_hands_each_row_over_as_measured(monkeypatch):
    configs = demo.demo_configs()[:2]
    monkeypatch.setattr(demo, "demo_configs", lambda: configs)
    seen = []
    rows = demo.run_demo(backend="numpy", on_row=lambda row: seen.append(dict(row)))
    assert seen == rows and [r["config"] for r in rows] == [c.describe() for _, c in configs]


def test_demo_prints_progress_notes_and_the_plot_path(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    written = []

    def plot(path, seed=0):
        written.append(path)
        with open(path, "wb") as f:
            f.write(b"png")
        return path

    monkeypatch.setattr(demo, "plot_error_vs_bits", plot)
    assert main(["demo", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    path = os.path.join(str(tmp_path), "gpuquant-demo.png")
    assert written == [path] and f"plotting SQNR against bits to {path}" in out
    assert lines[-1] == f"wrote {path}"
    assert "as it is measured" in lines[0] and lines[1].startswith("preset")
    rows = {line.split()[1]: float(line.split()[2]) for line in lines if line.startswith("int")}
    assert len(rows) == 13
    # the two rows the notes explain: clipping the outlier channels costs SQNR
    assert rows["int8/tensor/sym/entropy"] < rows["int8/tensor/sym/minmax"]
    assert rows["int4/channel(axis=0)/sym/percentile(0.1,99.9)"] < \
        rows["int4/channel(axis=0)/sym/minmax"]
    for note in demo.NOTES:
        assert note in lines


@pytest.mark.parametrize("seed", [0, 1])
def test_the_notes_hold_outlier_energy(seed):
    """The notes' claim, measured: the values entropy calibration clips are ~0.2 % of all,
    and carry most of the signal energy."""
    import numpy as np

    import gpuquant as gq

    cfg = gq.QuantConfig.int8_symmetric().replace(calibration="entropy")
    for w in demo.synthetic_weights(seed).values():
        clip = float(np.asarray(gq.quantize(w, cfg).scale).ravel()[0]) * 127
        over = np.abs(w) > clip
        assert over.mean() < 0.005 and (w[over] ** 2).sum() / (w ** 2).sum() > 0.5
