"""Grouped (ragged) matmul with packed per-expert weights, for mixture-of-experts layers.

Semantics (what every face computes): ``jax.lax.ragged_dot`` with dequantized weights. ``lhs`` is ``(M, K)``,
tokens sorted by expert; ``group_sizes`` ``(E,)`` says how many rows each expert takes, in order (empty groups
allowed); ``rhs`` is ``(E, K, N)``, each expert quantized on its own along K (int8 per channel, int4 per group,
MXFP4, NVFP4 with a tensor scale per expert, FP8). Row ``i`` in expert ``e``'s group is ``lhs[i] @
dequantize(W_e)`` with float32 products and float32 accumulation, rounded once to lhs's dtype; rows past
``sum(group_sizes)`` are zero. Weights are decoded with :mod:`lpnum.kernels.dequant`, bit-identical to
:func:`lpnum.dequantize` wherever they are normal float32 numbers, so the faces differ only in the order of the
float32 additions.

Faces: :func:`reference_grouped_matmul` (a loop over experts on the stacked QArray), the XLA path (a scan over
experts that dequantizes each in the loop: what runs on the CPU from a few rows up), the native CPU face (the same
scan, each expert's product by the native kernel from its packed planes: the CPU's default for few rows) and the
Pallas kernels (TPU through Mosaic, GPU through Triton), which read each expert's packed tiles and dequantize them in
VMEM/registers. :func:`grouped_matmul` dispatches.

The VJP: ``dlhs = ragged_dot(g, dequantize(W)^T)`` (the XLA face); packed weights get no gradient. Training that
needs gradients of the float expert weights fake-quantizes them (straight-through) and multiplies them as floats:
that is what :class:`lpnum.nn.grouped.GroupedDense` does under a quantization rule before :func:`lpnum.nn.ptq` packs
it. :class:`GroupedWeights` are checkpoint-safe like :class:`lpnum.kernels.PackedWeights` (:mod:`lpnum.description`).

Modules: :mod:`.layout` (the stacked QArray and the packed layout), :mod:`.reference`, :mod:`.xla`, :mod:`.cpu`
(the native CPU face: :mod:`lpnum.kernels.cpu_matmul` per expert), :mod:`.pallas` and :mod:`.api` (the dispatcher
and the VJP).
"""

from lpnum.kernels.grouped_matmul.api import IMPLEMENTATIONS, grouped_matmul
from lpnum.kernels.grouped_matmul.layout import GroupedWeights, expert, pack_experts, quantize_experts
from lpnum.kernels.grouped_matmul.pallas import BlockSizes
from lpnum.kernels.grouped_matmul.reference import reference_grouped_matmul

__all__ = ["IMPLEMENTATIONS", "BlockSizes", "GroupedWeights", "expert", "grouped_matmul", "pack_experts",
           "quantize_experts", "reference_grouped_matmul"]
