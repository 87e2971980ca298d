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
    pick = [line for line in lines if line.startswith("pick (measured")]
    assert len(pick) == 1 and "~4 bits/w: nvfp4" in pick[0] and "~8 bits/w: fp8_per_channel" in pick[0]
    floats = {line.split()[0]: line.split() for line in lines if line.startswith(("fp8", "mx", "nv", "nf4"))}
    assert set(floats) == set(FLOATS)


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


FLOATS = ["fp8_per_tensor", "fp8_per_channel", "fp8_block", "mxfp8", "mxfp4", "nvfp4", "nf4"]


def test_demo_has_the_float_formats_next_to_the_integer_ones():
    labels = [label for label, _ in demo.demo_configs()]
    assert labels[-len(FLOATS):] == FLOATS and labels[0] == "int8_symmetric"
    assert all(cfg.is_float for _, cfg in demo.demo_configs()[-len(FLOATS):])
    # the bits-against-SQNR plot varies integer widths only: no float config in its curves
    curves = demo.error_against_bits()
    assert curves and not any(w in key for key in curves for w in ("float32", "e8m0", "e4m3"))


def test_float_rows_are_deterministic_and_the_pick_line_follows_the_numbers(monkeypatch):
    configs = [c for c in demo.demo_configs() if c[0] in ("int4_per_group", "nvfp4", "nf4", "mxfp4")]
    configs = list({c[1].describe(): c for c in configs}.values())  # int4_per_group twice
    monkeypatch.setattr(demo, "demo_configs", lambda: configs)
    first, second = demo.run_demo(backend="numpy"), demo.run_demo(backend="numpy")
    strip = [{k: v for k, v in r.items() if k != "time_ms"} for r in first]
    assert strip == [{k: v for k, v in r.items() if k != "time_ms"} for r in second]
    by = {r["preset"]: r for r in first}
    # sizes: 4-bit codes plus each format's scales (float32 per 64, e8m0 per 32, e4m3 per 16)
    assert 32 / by["nf4"]["compression"] == 4.5 and 32 / by["mxfp4"]["compression"] == 4.25
    best = max(first, key=lambda r: r["sqnr_db"])
    line = demo.pick_line(first)
    assert f"~4 bits/w: {best['preset']} {best['sqnr_db']:.1f} dB" in line and "measure yours" in line
    assert "~8 bits/w" not in line


@pytest.mark.parametrize("seed", [0, 1])
def test_the_scale_rule_note_holds(seed):
    """The mx note's claim, measured: FLOOR saturates block maxima, RCEIL and EVEN do better."""
    import gpuquant as gq

    weights = demo.synthetic_weights(seed)
    for preset in (gq.QuantConfig.mxfp8, gq.QuantConfig.mxfp4):
        floor = demo._measure(weights, preset(scale_rule="floor"))["sqnr_db"]
        assert demo._measure(weights, preset(scale_rule="rceil"))["sqnr_db"] > floor
        assert demo._measure(weights, preset(scale_rule="even"))["sqnr_db"] > floor
