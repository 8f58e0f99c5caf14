"""Pallas kernels, installed as ``lpnum.kernels``; one folder per op, each with its faces (reference, XLA, Pallas;
the packed matmul also a native CPU kernel) and a public API.

- :mod:`.packed_matmul`: ``x @ W`` with packed low-bit weights, dequantized inside the kernel tile by tile;
  :func:`pack_weights` rearranges a quantized ``(K, N)`` QArray into the kernel layout, :func:`matmul` multiplies
  (Pallas on GPU/TPU; on the CPU the native kernel for few rows of x, XLA otherwise).
- :mod:`.accumulate`: matmuls with emulated low-bit accumulators (integer, float, aligned, exact) and A2Q's bound.
- :mod:`.quantize`: fused casts of a 2-D tensor (and/or its transpose) into packed QArrays in one read
  (:func:`lpnum.kernels.quantize.quantize`; MX, NVFP4, FP8 with a given scale, int8 per row);
  :func:`quantize_weights` casts float weights straight into the packed matmul's layout (:mod:`.weights`).
- :mod:`.grouped_matmul`: ``jax.lax.ragged_dot`` with packed per-expert weights, for mixture-of-experts layers.
- :mod:`.dequant`: the in-kernel decoding of element and scale codes that the ops share; :mod:`.native` builds the
  C++ faces on first use and registers them with XLA's FFI.
"""

from lpnum.kernels import accumulate, grouped_matmul, packed_matmul, quantize
from lpnum.kernels.packed_matmul import BlockSizes, PackedWeights, matmul, pack_weights, reference_matmul
from lpnum.kernels.weights import quantize_weights

__all__ = ["accumulate", "grouped_matmul", "packed_matmul", "quantize", "BlockSizes", "PackedWeights", "matmul",
           "pack_weights", "reference_matmul", "quantize_weights"]
