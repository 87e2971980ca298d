"""Cache-sized blocks of a 2-D view, processed on all cores.

The NumPy path never makes a full-size temporary: it cuts the 2-D view into
blocks of about ``BLOCK_ELEMENTS`` elements (1 MiB of float32), converts each
block to float32 once, and does every step of the computation while the
block is in cache. NumPy releases the GIL inside its ufuncs, so a thread
pool with one worker per core runs blocks in parallel; blocks write to
disjoint slices of preallocated outputs. Measured on 2 cores: blocks of
64K elements spent more on GIL hand-offs than they gained; 256K-element
blocks make each ufunc call long enough for two threads to overlap.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor

__all__ = ["BLOCK_ELEMENTS", "blocks", "run_blocks"]

BLOCK_ELEMENTS = 1 << 18
_PARALLEL_MIN = 1 << 18  # below this many elements threads cost more than they save
_pool: ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()


def blocks(rows: int, cols: int, align: int = 1,
           target: int = BLOCK_ELEMENTS) -> Iterator[tuple[int, int, int, int]]:
    """Yield ``(r0, r1, c0, c1)`` covering ``rows x cols``.

    Whole rows go into a block while a row fits; longer rows are cut into
    column ranges whose starts are multiples of ``align``.
    """
    if cols <= target:
        step_r, step_c = max(1, target // max(cols, 1)), cols
    else:
        step_r, step_c = 1, max(align, target // align * align)
    for r0 in range(0, rows, step_r):
        r1 = min(rows, r0 + step_r)
        for c0 in range(0, cols, step_c):
            yield r0, r1, c0, min(cols, c0 + step_c)


def _workers() -> int:
    from .environ import env_int

    return env_int("GPUQUANT_NUM_THREADS", 0, 0, "threads; 0 or unset: one per CPU") or \
        (os.cpu_count() or 1)


def run_blocks(fn: Callable[[tuple[int, int, int, int]], object], rows: int, cols: int,
               align: int = 1, target: int = BLOCK_ELEMENTS) -> list:
    """Call ``fn`` on every block; returns the results in block order.

    Each worker takes every n-th block in one task: one task per block would
    cost more in hand-offs between threads than small blocks take to compute.
    """
    spans = list(blocks(rows, cols, align, target))
    workers = min(_workers(), len(spans))
    if workers == 1 or rows * cols < _PARALLEL_MIN:
        return [fn(span) for span in spans]
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(max_workers=_workers(), thread_name_prefix="gpuquant")
    shares = list(_pool.map(lambda k: [fn(span) for span in spans[k::workers]], range(workers)))
    results: list = [None] * len(spans)
    for k, share in enumerate(shares):
        results[k::workers] = share
    return results
