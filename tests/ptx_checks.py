"""PTX patterns that would break bit-exactness with the NumPy reference (docs/ARCHITECTURE.md, 3)."""

import re


def problems_in(name, ptx):
    found = []
    if re.search(r"\bdiv\.(full|approx)\.f32", ptx):
        found.append(f"{name}: approximate float division")
    if re.search(r"\b(fma|mad)\.rn(\.ftz)?\.f32", ptx):
        found.append(f"{name}: contracted multiply-add")
    if re.search(r"\b(mul|add|sub)\.f32", ptx):  # without .rn, ptxas may contract into FMA
        found.append(f"{name}: float arithmetic that ptxas may contract")
    if re.search(r"\b(mul|add|sub)(\.rn)?\.ftz\.f32", ptx):
        found.append(f"{name}: arithmetic that flushes subnormals")
    return found


def narrow_code_stores(name, ptx):
    """Byte-wide global stores: the packed int4 codes of a fast path must go out 32 bits or
    more at a time (``st.global.b32``, ``.v2``, ``.v4``), never one byte at a time."""
    if re.search(r"\bst\.global(\.v\d)?\.(b8|u8|s8)\b", ptx):
        return [f"{name}: byte-wide stores of packed codes"]
    return []


def compile_report(script: str) -> dict:
    """Run a compile script of tests/ (without TRITON_INTERPRET) and return its JSON report."""
    import json
    import os
    import pathlib
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    path = pathlib.Path(__file__).with_name(script)
    out = subprocess.run([sys.executable, str(path)], capture_output=True, text=True, env=env,
                         timeout=900)
    assert out.returncode in (0, 1), out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])
