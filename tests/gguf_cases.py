"""Blocks of 32 values where the GGUF rounding rules matter (no gguf import here)."""

import numpy as np


def edge_blocks() -> np.ndarray:
    """Blocks of 32 where the rounding rules matter, one per row."""
    f32 = np.float32
    ramp = np.arange(32, dtype=f32)
    rows = [
        np.zeros(32, f32),                                   # all zeros: d = 0, codes 0
        -np.zeros(32, f32),                                  # -0.0 first: Q4_0's d is +0.0
        np.where(ramp == 3, f32(-0.0), f32(0)),
        np.full(32, 127, f32),                               # +max everywhere
        np.full(32, -127, f32),                              # -max everywhere
        np.where(ramp % 2 == 0, f32(127), f32(-127)),        # +-max: Q4_0 picks the first
        np.where(ramp % 2 == 0, f32(-127), f32(127)),
        np.concatenate([[f32(127)], ramp[1:] - f32(15.5)]),  # d = 1: x.5 ties, away from 0
        np.concatenate([[f32(127)], np.full(31, f32(0.49999997))]),  # just below a tie
        np.concatenate([[f32(127)], np.full(31, f32(-0.5))]),
        np.concatenate([[f32(-8)], ramp[1:] * f32(0.5) - f32(8)]),  # Q4_0: d = 1, x + 8.5 ties
        np.concatenate([[f32(1e-30)], np.zeros(31, f32)]),    # tiny but normal
        np.full(32, f32(-8 * 65504)),                        # Q4_0: the largest float16 d
        ramp * f32(1e-3) - f32(0.01),
    ]
    return np.stack(rows)
