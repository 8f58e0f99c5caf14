"""The XLA face of the grouped matmul: what runs on the CPU (and wherever Pallas is not asked for)."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from lpnum.kernels.grouped_matmul import layout
from lpnum.kernels.grouped_matmul.layout import GroupedWeights
from lpnum.kernels.grouped_matmul.reference import HIGHEST

__all__ = ["xla_grouped_matmul"]


def xla_grouped_matmul(x: jax.Array, w: GroupedWeights, group_sizes: jax.Array) -> jax.Array:
  """``x (M, K)`` float32 times the experts: the weights dequantized once, then XLA's ``jax.lax.ragged_dot``
  (float32 products and accumulation); ``(M, N)`` float32."""
  _, k, n = w.shape
  wf = layout.dequantize(w)[:, :k, :n]
  return jax.lax.ragged_dot(x, wf, group_sizes, precision=HIGHEST, preferred_element_type=jnp.float32)
