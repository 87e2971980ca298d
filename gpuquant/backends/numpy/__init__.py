"""The NumPy backend: the bit-exact reference and the CPU fallback."""
