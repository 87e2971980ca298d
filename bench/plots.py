"""PNG plots drawn from bench.csv, and the error-against-bits plot of the calibrations."""

from __future__ import annotations

import csv
import os

from gpuquant.cli.demo import plot_error_vs_bits


def _rows(csv_path: str) -> list[dict]:
    with open(csv_path, newline="") as f:
        return list(csv.DictReader(f))


def plot_bandwidth(csv_path: str, png: str) -> str:
    """GB/s against input size for each gpuquant op, with the copy bandwidth as roofline."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = _rows(csv_path)
    machine = rows[-1]["machine"]
    rows = [r for r in rows if r["machine"] == machine and r["impl"] == "gpuquant"]
    fig, ax = plt.subplots(figsize=(8, 5))
    for op in sorted({r["op"] for r in rows}):
        mine = sorted((int(r["bytes"]), float(r["gbps"])) for r in rows if r["op"] == op)
        ax.plot([b / 2**20 for b, _ in mine], [g for _, g in mine], marker="o", label=op)
    copy = max(float(r["copy_gbps"]) for r in rows)
    ax.axhline(copy, color="black", linestyle="--", label=f"copy {copy:.0f} GB/s")
    ax.set_xscale("log")
    ax.set_xlabel("bytes moved (MiB)")
    ax.set_ylabel("GB/s")
    ax.set_title(f"gpuquant on {machine}")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)
    return png


def draw_all(csv_path: str, out_dir: str) -> list[str]:
    return [plot_bandwidth(csv_path, os.path.join(out_dir, "bandwidth.png")),
            plot_error_vs_bits(os.path.join(out_dir, "error_vs_bits.png"))]
