"""The XLA face of the cast: :func:`lpnum.quantize_scaled` itself (what runs on the CPU), once per operand."""

from __future__ import annotations

import jax

from lpnum.qarray import QArray
from lpnum.scaled import ScaledFormat, quantize_scaled

__all__ = ["xla_quantize"]


def xla_quantize(x: jax.Array, fmt: ScaledFormat, *, transpose: bool, scale=None, tensor_amax=None) -> QArray:
  """``quantize_scaled(x.T if transpose else x, fmt, ...)``: the scales in one pass over the operand, the elements
  in a second (see ``benchmarks/kernels.py`` for the bytes this moves)."""
  return quantize_scaled(x.T if transpose else x, fmt, scale=scale, tensor_amax=tensor_amax)
