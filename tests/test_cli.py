import subprocess
import sys


def run(*args):
    return subprocess.run([sys.executable, "-m", "gpuquant.cli", *args], capture_output=True,
                          text=True, timeout=300)


def test_demo_prints_every_preset():
    out = run("demo", "--device", "cpu")
    assert out.returncode == 0, out.stderr
    for preset in ["int8_symmetric", "int8_asymmetric", "int8_per_channel", "int4_symmetric",
                   "int4_per_channel", "int4_per_group", "percentile(0.1,99.9)"]:
        assert preset in out.stdout
    rows = [line for line in out.stdout.splitlines() if line.startswith("int")]
    assert len(rows) == 10
    sqnr = {r.split()[1]: float(r.split()[2]) for r in rows}
    assert sqnr["int16/channel(axis=0)/sym/minmax"] > sqnr["int8/channel(axis=0)/sym/minmax"] > \
        sqnr["int4/channel(axis=0)/sym/minmax"]


def test_demo_is_deterministic():
    a, b = run("demo", "--device", "cpu"), run("demo", "--device", "cpu")
    strip = lambda s: [line.rsplit(None, 1)[0] for line in s.splitlines()]  # noqa: E731 - drop times
    assert strip(a.stdout) == strip(b.stdout)


def test_usage_errors_exit_2():
    out = run("demo", "--device", "tpu")
    assert out.returncode == 2 and "invalid choice" in out.stderr
