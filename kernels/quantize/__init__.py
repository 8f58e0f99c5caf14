"""Fused quantize (cast) kernels: a 2-D tensor into lpnum's packed QArray in one read of the input and one packed
write of codes and scales, for ``x``, ``x.T`` or both at once.

Semantics (what every face computes): :func:`lpnum.quantize_scaled` of ``x`` (or ``x.T``) with the format, its
given ``scale`` and ``tensor_amax``: codes, scale codes and the per-tensor scale bit for bit. The kernels take
blocks along one axis (MX and NVFP4 along rows or columns, integer groups, per-channel scales) and one scale per
tensor, with absmax calibration, float or integer elements of 1, 2, 4, 6 or 8 bits.

Faces, one module each: :mod:`.reference` (the definition in NumPy, block by block), :mod:`.xla`
(``quantize_scaled``: two passes, the scales then the elements, once per operand), :mod:`.pallas` (one kernel body
for TPU through Mosaic and GPU through Triton) and :mod:`.api` (:func:`quantize`, the dispatcher: Pallas on GPU and
TPU, XLA on the CPU); :mod:`.tile` is the in-kernel arithmetic (lpnum's own, with ``in_kernel=True``).

A per-tensor scale needs the tensor's abs-max first: NVFP4 takes it as ``tensor_amax`` (delayed scaling: one read
of ``x``), else a first XLA reduction computes it (two reads); the same for one scale per tensor without a given
``scale``. A cast has no gradient (its output is codes).
"""

from lpnum.kernels.quantize.api import IMPLEMENTATIONS, pallas_supports, quantize
from lpnum.kernels.quantize.reference import reference_quantize

__all__ = ["IMPLEMENTATIONS", "quantize", "pallas_supports", "reference_quantize"]
