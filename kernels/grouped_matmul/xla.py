"""The XLA face of the grouped matmul: what runs on the CPU (and wherever Pallas is not asked for).

A scan over the experts: each expert's packed weights are dequantized in the loop body (the float32 weights of all
experts are never written out at once), multiplied with the rows and kept for that expert's rows only; an expert
without rows is skipped. ``jax.lax.ragged_dot`` is not used: on the CPU it multiplies every row with every expert
and masks by multiplying with zero, so a NaN or inf weight of one expert reaches every row (``0 * inf``).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from lpnum.kernels.grouped_matmul import layout
from lpnum.kernels.grouped_matmul.layout import GroupedWeights
from lpnum.kernels.grouped_matmul.reference import HIGHEST

__all__ = ["xla_grouped_matmul"]


def xla_grouped_matmul(x: jax.Array, w: GroupedWeights, group_sizes: jax.Array, *, transpose: bool = False
                       ) -> jax.Array:
  """``x (M, K)`` float32 times the experts (``(M, N)`` float32); with ``transpose``, ``x (M, N)`` times the
  transposed experts (the VJP's ``dlhs``, ``(M, K)``)."""
  _, k, n = w.shape
  sizes = group_sizes.astype(jnp.int32)
  ends = jnp.cumsum(sizes)
  rows = jnp.arange(x.shape[0], dtype=jnp.int32)[:, None]
  def step(y, inputs):
    e, lo, hi = inputs

    def product(y):  # the expert's slices are taken here, so an expert without rows is not read (nor copied)
      one = jax.tree.map(lambda a: jax.lax.dynamic_slice_in_dim(a, e, 1), w)
      we = layout.dequantize(dataclasses.replace(one, shape=(1, k, n)))[0, :k, :n]
      ye = jnp.dot(x, we.T if transpose else we, precision=HIGHEST, preferred_element_type=jnp.float32)
      return jnp.where((rows >= lo) & (rows < hi), ye, y)

    return jax.lax.cond(hi > lo, product, lambda y: y, y), None

  y0 = jnp.zeros((x.shape[0], k if transpose else n), jnp.float32)
  return jax.lax.scan(step, y0, (jnp.arange(w.shape[0]), ends - sizes, ends))[0]
