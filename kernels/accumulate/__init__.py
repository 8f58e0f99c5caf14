"""Matmuls whose accumulator is emulated bit-exactly: P-bit integers, narrow floats, FP8-tensor-core-style aligned
fixed point and an exact (Kulisch) accumulator; A2Q's overflow bound.

Faces, one module each: :mod:`.reference` (the definition, slow loops), :mod:`.xla`, :mod:`.pallas` (TPU and GPU
kernels) and :mod:`.api` (the accumulators and the dispatcher); :mod:`.tiled` holds the tiled algorithms the XLA
and Pallas faces share and :mod:`.ops` the integer arithmetic of each accumulator. The README ("Emulated
accumulators: the arithmetic") states what every face computes.
"""

from lpnum.kernels.accumulate.api import (AccumulatorStats, AlignedAccumulator, ExactAccumulator, FloatAccumulator,
                                          IntAccumulator, a2q_bound, matmul, reference_matmul)

__all__ = ["IntAccumulator", "FloatAccumulator", "AlignedAccumulator", "ExactAccumulator", "AccumulatorStats",
           "matmul", "reference_matmul", "a2q_bound"]
