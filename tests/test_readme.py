"""Every ```python block of README.md runs as written (issue 19 item 25).

Each block runs alone in a fresh interpreter, in a temporary folder, with the
environment torchrun gives a job of one process (a block may call
torch.distributed.init_process_group()). A block that imports torch needs it
installed; none is skipped otherwise.
"""

import os
import pathlib
import re
import socket
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
BLOCKS = re.findall(r"^```python\n(.*?)^```", (ROOT / "README.md").read_text(), re.M | re.S)


def test_the_readme_has_its_python_blocks():
    assert len(BLOCKS) >= 3
    assert all(block.strip() for block in BLOCKS)


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_readme_block_runs(index, tmp_path):
    block = BLOCKS[index]
    if re.search(r"^import torch|^from torch", block, re.M):
        pytest.importorskip("torch")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
           "RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "LOCAL_WORLD_SIZE": "1",
           "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(_free_port()),
           "GLOO_SOCKET_IFNAME": "lo"}
    out = subprocess.run([sys.executable, "-c", block], cwd=tmp_path, env=env, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, f"README block {index}:\n{block}\n{out.stderr[-3000:]}"
