"""Foundations under every layer: where a unit's qparams apply (layout), the one qparams formula,
int4 packing, the cached launch plans, array frameworks (NumPy, torch, CuPy), cache-sized blocks,
devices and the NaN/Inf board."""
