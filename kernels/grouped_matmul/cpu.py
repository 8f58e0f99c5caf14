"""The native CPU face of the grouped matmul: the XLA face's scan over experts (``xla.scan_experts``), each expert's
product computed by the native kernel of :mod:`lpnum.kernels.cpu_matmul` straight from its packed planes, read in
place in the stacked weights (no copy of them, sliced or float32), for few rows of lhs (decode).

Each expert with rows multiplies every row of lhs (few, by the dispatch) and keeps its own; an expert without rows
is skipped, so its weights are not read. The weights the kernel multiplies are those of
:func:`lpnum.kernels.grouped_matmul.layout.dequantize`; only the order of the float32 sums differs from the XLA
face.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from lpnum.kernels import cpu_matmul
from lpnum.kernels.grouped_matmul.layout import GroupedWeights
from lpnum.kernels.grouped_matmul.xla import scan_experts

__all__ = ["cpu_grouped_matmul"]


def cpu_grouped_matmul(x: jax.Array, w: GroupedWeights, group_sizes: jax.Array) -> jax.Array:
  """``x (M, K)`` float32 times the experts: ``(M, N)`` float32. Raises as
  :func:`lpnum.kernels.cpu_matmul.check` does."""
  cpu_matmul.check(w)
  _, k, n = w.shape
  x2 = jnp.pad(x.astype(jnp.float32), ((0, 0), (0, w.padded_shape[0] - k)))
  return scan_experts(w.shape[0], group_sizes, x.shape[0], n, lambda e: cpu_matmul.matmul(x2, w, e)[:, :n])
