"""PTX patterns that would break bit-exactness with the NumPy reference (DESIGN.md 2)."""

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
