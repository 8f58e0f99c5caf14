"""The reference face of the grouped matmul: its semantics as a loop over experts on the stacked QArray (slow; for
tests). See :mod:`lpnum.kernels.grouped_matmul` for the semantics every face computes."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from lpnum.kernels.grouped_matmul.layout import expert
from lpnum.qarray import QArray
from lpnum.scaled import dequantize

__all__ = ["reference_grouped_matmul", "HIGHEST"]

HIGHEST = jax.lax.Precision.HIGHEST


def reference_grouped_matmul(lhs, rhs: QArray, group_sizes) -> jax.Array:
  """``jax.lax.ragged_dot(lhs, dequantize(rhs), group_sizes)`` as a loop over experts (slow; for tests).

  Rows ``[start_e, start_e + group_sizes[e])`` of ``lhs`` (``start_e`` the sum of the earlier sizes) multiply expert
  ``e``'s weights, ``lpnum.dequantize`` of its QArray, in one float32 ``jnp.dot`` at HIGHEST precision; rows past
  the last group are zero.

  Args:
    lhs: ``(M, K)`` float activations, sorted by expert.
    rhs: a stacked QArray of ``E`` experts of shape ``(K, N)`` (:func:`~.layout.quantize_experts`).
    group_sizes: ``(E,)`` integer rows per expert.

  Returns:
    ``(M, N)`` in lhs's dtype.
  """
  lhs = jnp.asarray(lhs)
  x = lhs.astype(jnp.float32)
  sizes = jnp.asarray(group_sizes).astype(jnp.int32)
  ends = jnp.cumsum(sizes)
  rows = jnp.arange(x.shape[0])[:, None]
  y = jnp.zeros((x.shape[0], rhs.shape[1]), jnp.float32)
  for e in range(sizes.shape[0]):
    ye = jnp.dot(x, dequantize(expert(rhs, e), jnp.float32), precision=HIGHEST, preferred_element_type=jnp.float32)
    y = jnp.where((rows >= ends[e] - sizes[e]) & (rows < ends[e]), ye, y)
  return y.astype(lhs.dtype)
