"""Pallas kernels (packed low-bit matmul, low-bit accumulators), installed as ``lpnum.kernels``.

Populated by the kernels work; importing it today gives an empty namespace.
"""
