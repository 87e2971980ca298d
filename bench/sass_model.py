"""The static SASS model's prediction (../shared/sass/predict.py) for bench/sass_calls.py's calls.

    python bench/sass_model.py [--sass-dir ../shared/sass] [predict.py's options]

predict.py records its calls with the model folder's record.py; this runs the same
predict.py with bench/sass_calls.py as the recorder instead (more calls: asymmetric int4,
the int8 dequantizes, the min/max passes), and with two additions the model folder lacks:
- a loop's trips per launch (sass_calls.trips), so that a min/max kernel's loop body is
  counted once per chunk it reads, not once;
- the address function of dequantize_units_kernel (l1model.py has none: it would count
  the kernel as perfectly coalesced).
The model folder: --sass-dir, else $GPUQUANT_SASS_DIR, else ../shared/sass beside the checkout.
Output: as predict.py's (OUT/summary.json, with a data_row per kernel for measurements.json).
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SHIM = """import runpy, sys
sys.argv[0] = {path!r}
runpy.run_path({path!r}, run_name="__main__")
"""


def sass_dir(argv: list[str]) -> tuple[Path, list[str]]:
    """The model folder and the remaining arguments."""
    if "--sass-dir" in argv:
        i = argv.index("--sass-dir")
        return Path(argv[i + 1]).resolve(), argv[:i] + argv[i + 2:]
    env = os.environ.get("GPUQUANT_SASS_DIR")
    return Path(env or REPO.parent / "shared" / "sass").resolve(), argv


def units_addresses(l1model):
    """l1model.address_functions, knowing dequantize_units_kernel: program 0, units i,
    columns j (TTGIR order: scale, zero point, codes, output)."""
    base = l1model.address_functions

    def address_functions(row):
        if row["kernel_key"].split(":")[1] != "dequantize_units_kernel":
            return base(row)
        v = l1model.launch_values(row)
        seg = v["seg_len"]
        size = l1model.DTYPE_SIZE
        sq, sy = size[v["q_ptr"]], size[v["y_ptr"]]
        if v["PACKED"]:
            q = lambda i, j: i * (seg // 2) + j  # noqa: E731 (j runs over bytes)
        else:
            q = lambda i, j: (i * seg + j) * sq  # noqa: E731
        return [lambda i, j: i * 4, lambda i, j: i * 4, q, lambda i, j: (i * seg + j) * sy]
    return address_functions


def main() -> None:
    where, rest = sass_dir(sys.argv[1:])
    if not (where / "predict.py").is_file():
        raise SystemExit(f"no predict.py in {where}: pass --sass-dir or set GPUQUANT_SASS_DIR")
    sys.dont_write_bytecode = True
    sys.path.insert(0, str(where))
    import l1model
    import predict

    l1model.address_functions = units_addresses(l1model)
    shim = Path(tempfile.mkdtemp(prefix="gpuquant-sass-calls-"))
    (shim / "record.py").write_text(SHIM.format(path=str(REPO / "bench" / "sass_calls.py")))
    predict.HERE = shim  # predict.py runs HERE / record.py: ours
    spec_of = predict.spec_of

    def with_trips(call, launch, index):
        return dict(spec_of(call, launch, index), trips=launch.get("trips", 1))

    predict.spec_of = with_trips
    if "--fit" not in rest:
        rest = ["--fit", str(where / "fit.json"), *rest]
    sys.argv = [str(where / "predict.py"), *rest]
    predict.main()


if __name__ == "__main__":
    main()
