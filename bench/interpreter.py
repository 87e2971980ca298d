"""Run a bench module with the Triton interpreter on (TRITON_INTERPRET=1).

Triton reads the variable when a kernel is defined, and gpuquant's launch
module when it is imported: it must be set before either is imported. A
module that needs it calls :func:`rerun_under_interpreter` first.
"""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
_READ_AT_IMPORT = ("triton", "gpuquant.kernels", "gpuquant.backends.", "gpuquant.core.plan")


def rerun_under_interpreter(module: str, argv: list[str]) -> int | None:
    """None when this process may go on with the interpreter on (the variable was set, or
    nothing that reads it is imported yet: it is set now); else the exit status of
    ``python -m module argv`` run in a subprocess with the variable set."""
    if os.environ.get("TRITON_INTERPRET") == "1":
        return None
    if not any(name == prefix or name.startswith(prefix if prefix.endswith(".") else prefix + ".")
               for name in sys.modules for prefix in _READ_AT_IMPORT):
        os.environ["TRITON_INTERPRET"] = "1"
        return None
    env = dict(os.environ, TRITON_INTERPRET="1")
    return subprocess.run([sys.executable, "-m", module, *argv], cwd=ROOT, env=env).returncode
