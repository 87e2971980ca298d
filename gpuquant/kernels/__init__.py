"""Triton kernels of gpuquant.

Device code only: nothing here imports host code. Every module but
``modes`` (the layout modes, plain ints the host shares) imports Triton.
Launchers live in ``gpuquant.backends``.
"""
