"""The native CPU face of the grouped matmul: the XLA face's scan over experts (``xla.scan_experts``), each expert's
product computed by the native kernel of :mod:`lpnum.kernels.cpu_matmul` straight from its packed planes (no
float32 copy of its weights), for few rows of lhs (decode).

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
from lpnum.kernels.planes import PlanedWeights

__all__ = ["cpu_grouped_matmul", "expert_view", "native_rows", "supported", "check"]


def expert_view(w: GroupedWeights, leaves=None) -> PlanedWeights:
  """One expert's weights as a ``(K_pad, N_pad)`` matrix for :mod:`lpnum.kernels.cpu_matmul`: ``leaves`` are its
  planes, scales, zero points and tensor scale (one expert's slices, as a scan gives them); without ``leaves``,
  expert 0's (for the format checks)."""
  if leaves is None:
    leaves = jax.tree.map(lambda a: a[0], (w.planes, w.scales, w.zero_point, w.tensor_scale))
  planes, scales, zero, tensor = leaves
  return PlanedWeights(tuple(planes), scales, zero, tensor, w.fmt, w.shape[1:], w.tile_k, w.group)


def supported(w: GroupedWeights) -> bool:
  """True when the native kernel takes ``w``'s format (:func:`lpnum.kernels.cpu_matmul.supported`)."""
  return cpu_matmul.supported(expert_view(w))


def check(w: GroupedWeights) -> None:
  """Raises ValueError naming ``implementation='native'`` unless the native kernel takes ``w`` and is built."""
  cpu_matmul.check(expert_view(w))


def native_rows(w: GroupedWeights) -> int:
  """Rows of lhs below which ``"auto"`` runs this face (:func:`lpnum.kernels.cpu_matmul.native_rows`: every expert
  with rows multiplies all of them, as one packed matmul of that many rows)."""
  return cpu_matmul.native_rows(expert_view(w))


def cpu_grouped_matmul(x: jax.Array, w: GroupedWeights, group_sizes: jax.Array) -> jax.Array:
  """``x (M, K)`` float32 times the experts: ``(M, N)`` float32. Raises as :func:`check` does."""
  check(w)
  _, k, n = w.shape
  x2 = jnp.pad(x.astype(jnp.float32), ((0, 0), (0, w.padded_shape[0] - k)))
  experts = (w.planes, w.scales, w.zero_point, w.tensor_scale)

  def product(e):
    leaves = jax.tree.map(lambda a: jax.lax.dynamic_index_in_dim(a, e, keepdims=False), experts)
    return cpu_matmul.matmul(x2, expert_view(w, leaves))[:, :n]

  return scan_experts(w.shape[0], group_sizes, x.shape[0], n, product)
