"""The reference face of the packed matmul: its semantics written the obvious way on the QArray (slow; for tests).

See :mod:`lpnum.kernels.packed_matmul` for the semantics every face computes.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from lpnum import packing
from lpnum.formats import IntFormat
from lpnum.qarray import QArray
from lpnum.quantize import decode, encode
from lpnum.scaled import ScaledFormat, dequantize, quantize_scaled

__all__ = ["reference_matmul", "integer_path", "HIGHEST"]

HIGHEST = jax.lax.Precision.HIGHEST


def reference_matmul(x, w: QArray, *, x_format: ScaledFormat | None = None) -> jax.Array:
  """The semantics of :func:`matmul`, written the obvious way on the QArray (slow; for tests).

  ``jnp.dot`` of ``lpnum.dequantize`` of both sides at HIGHEST precision with float32 accumulation; for the integer
  path, the exact int32 dot of the element values, then ``(acc * sx) * sw``.
  """
  if not isinstance(w, QArray):
    raise TypeError(f"w must be a QArray, got {type(w).__name__}")
  xq = quantize_scaled(x, x_format) if x_format is not None else x
  if isinstance(xq, QArray):
    if integer_path(xq, w.fmt, w.block[0] >= w.shape[0]):
      vx = int_values(xq)
      acc = jnp.einsum("...k,kn->...n", vx, int_values(w), preferred_element_type=jnp.int32)
      sx = dequantize(unit_scale(xq))[..., :1]
      sw = dequantize(unit_scale(w))[:1]
      return ((acc.astype(jnp.float32) * sx) * sw).astype(xq.dtype)
    xf, dtype = dequantize(xq, jnp.float32), xq.dtype
  else:
    xf, dtype = jnp.asarray(x).astype(jnp.float32), jnp.asarray(x).dtype
  return jnp.einsum("...k,kn->...n", xf, dequantize(w, jnp.float32), precision=HIGHEST,
                    preferred_element_type=jnp.float32).astype(dtype)


def int_values(q: QArray) -> jax.Array:
  return decode(q.element_codes, q.fmt.element).astype(jnp.int32)


def unit_scale(q: QArray) -> QArray:
  """q with every element code replaced by the code of 1 (so dequantize gives the scales)."""
  one = jnp.full(q.shape, encode(jnp.float32(1.0), q.fmt.element), q.element_codes.dtype)
  return dataclasses.replace(q, data=packing.pack(one, q.fmt.element.bits, axis=-1))


def integer_path(xq: QArray, wfmt: ScaledFormat, w_per_column: bool) -> bool:
  """Whether x and W multiply as integers: int8-valued elements, x scaled per row, W per column."""
  def int8_valued(f: ScaledFormat) -> bool:
    el = f.element
    return isinstance(el, IntFormat) and el.bits - int(el.signed) <= 7 and not f.asymmetric
  return int8_valued(xq.fmt) and int8_valued(wfmt) and xq.block[-1] >= xq.shape[-1] and w_per_column
