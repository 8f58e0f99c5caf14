"""Packed low-bit matmul: ``x @ W`` with W quantized (int8/int4/int2/ternary, FP8, FP6, FP4, MX, NVFP4).

Semantics (what every face computes):

- **Weight-only** (x in float32/bfloat16/float16): ``y = x @ dequantize(W)`` with float32 products and float32
  accumulation, where ``dequantize`` is :func:`lpnum.dequantize` (weights that are normal float32 numbers are
  bit-identical; see :mod:`lpnum.kernels.dequant`). Only the order of the float32 additions differs between the
  faces, so results agree to float32 summation error.
- **Quantized x** (``x`` a QArray, or ``x_format`` given): ``y = dequantize(x) @ dequantize(W)`` as above (FP8 x
  FP8, MX x MX...), except for the integer path: integer x with one scale per row (or per tensor) and integer W
  with one scale per column (or per tensor) multiply their integer values with exact int32 accumulation, then
  ``y = (float32(acc) * sx) * sw`` (W8A8). The integer path is bit-exact across faces.
- The output has x's float dtype (float32 accumulation, rounded once).

Faces: :func:`~lpnum.kernels.packed_matmul.reference.reference_matmul` (the obvious jnp version on the QArray), the
XLA path (for few rows, a scan of tiles decoded in cache and multiplied at once; from 128 rows, dequantize once and
one ``jnp.dot``), the native CPU kernel (C++ through XLA's FFI, compiled on first use: it reads the packed bytes once
and decodes each weight in registers next to its multiply-add) and the Pallas kernels (TPU through Mosaic, GPU
through Triton), which read the packed weight tiles and dequantize them tile by tile in VMEM/registers.
:func:`matmul` dispatches: Pallas on GPU and TPU; on the CPU the native kernel for few rows of x
(:mod:`lpnum.kernels.cpu_matmul`, shared with the grouped matmul; ``NATIVE_ROWS`` by instruction set: with AVX-512
below 32 for 4-bit codes and 8-bit integers, 24 for FP8; where it builds), XLA otherwise; ``implementation=`` forces one,
``interpret=True`` runs the Pallas kernel on the CPU.

The VJP: ``dx = g @ dequantize(W)^T`` (through the dequantized weights; W gets no gradient). ``grad_format``
rounds the cotangent ``g`` first (:func:`lpnum.qdot.quantize_grad`).

Faces, one module each: :mod:`.reference`, :mod:`.xla`, :mod:`.pallas`, and
:mod:`.api` (the dispatcher and the VJP); :mod:`.layout` is the packed weight layout and
:mod:`lpnum.kernels.dequant` the in-kernel decoding (shared with the other kernel ops).
"""

from lpnum.kernels.packed_matmul.api import IMPLEMENTATIONS, matmul
from lpnum.kernels.packed_matmul.layout import PackedWeights, pack_weights
from lpnum.kernels.packed_matmul.pallas import BlockSizes
from lpnum.kernels.packed_matmul.reference import reference_matmul

__all__ = ["IMPLEMENTATIONS", "BlockSizes", "PackedWeights", "matmul", "pack_weights", "reference_matmul"]
