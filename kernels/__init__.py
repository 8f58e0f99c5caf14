"""Pallas kernels for packed low-bit matmul, installed as ``lpnum.kernels``.

- :func:`pack_weights` rearranges a quantized ``(K, N)`` QArray into the kernel layout (:mod:`.layout`).
- :func:`matmul` multiplies with packed weights: Pallas on GPU/TPU, XLA on the CPU (:mod:`.matmul`).
- :mod:`.accumulate`: matmuls with emulated low-bit accumulators (integer, float, aligned, exact) and A2Q's bound.
"""

from lpnum.kernels import accumulate
from lpnum.kernels.layout import PackedWeights, pack_weights
from lpnum.kernels.matmul import BlockSizes, matmul, reference_matmul

__all__ = ["accumulate", "BlockSizes", "PackedWeights", "matmul", "pack_weights", "reference_matmul"]
