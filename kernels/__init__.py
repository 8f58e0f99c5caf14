"""Pallas kernels for packed low-bit matmul, installed as ``lpnum.kernels``.

- :func:`pack_weights` rearranges a quantized ``(K, N)`` QArray into the kernel layout (:mod:`.layout`).
- :func:`matmul` multiplies with packed weights: Pallas on GPU/TPU, XLA on the CPU (:mod:`.matmul`).
"""

from lpnum.kernels.layout import PackedWeights, pack_weights
from lpnum.kernels.matmul import BlockSizes, matmul, reference_matmul

__all__ = ["BlockSizes", "PackedWeights", "matmul", "pack_weights", "reference_matmul"]
