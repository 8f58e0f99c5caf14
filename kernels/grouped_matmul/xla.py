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

__all__ = ["xla_grouped_matmul", "scan_experts"]


def xla_grouped_matmul(x: jax.Array, w: GroupedWeights, group_sizes: jax.Array, *, transpose: bool = False
                       ) -> jax.Array:
  """``x (M, K)`` float32 times the experts (``(M, N)`` float32); with ``transpose``, ``x (M, N)`` times the
  transposed experts (the VJP's ``dlhs``, ``(M, K)``)."""
  _, k, n = w.shape

  def product(e):
    one = jax.tree.map(lambda a: jax.lax.dynamic_slice_in_dim(a, e, 1), w)
    we = layout.dequantize(dataclasses.replace(one, shape=(1, k, n)))[0, :k, :n]
    return jnp.dot(x, we.T if transpose else we, precision=HIGHEST, preferred_element_type=jnp.float32)

  return scan_experts(w.shape[0], group_sizes, x.shape[0], k if transpose else n, product)


def scan_experts(experts: int, group_sizes: jax.Array, m: int, width: int, product) -> jax.Array:
  """The ``(m, width)`` float32 rows of every group from its expert: a scan over the experts that calls
  ``product(e)`` (expert ``e``'s float32 product with all ``m`` rows; ``e`` is traced) only for experts with rows,
  inside the taken branch of a conditional, so the weights of an expert without rows are neither read nor copied
  when ``product`` slices them there. Rows past the groups are zero."""
  sizes = group_sizes.astype(jnp.int32)
  ends = jnp.cumsum(sizes)
  rows = jnp.arange(m, dtype=jnp.int32)[:, None]

  def step(y, inputs):
    e, lo, hi = inputs
    keep = lambda y: jnp.where((rows >= lo) & (rows < hi), product(e), y)
    return jax.lax.cond(hi > lo, keep, lambda y: y, y), None

  y0 = jnp.zeros((m, width), jnp.float32)
  return jax.lax.scan(step, y0, (jnp.arange(experts), ends - sizes, ends))[0]
