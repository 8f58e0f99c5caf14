"""The XLA face of the packed matmul: what runs on the CPU (and wherever Pallas is not asked for)."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from lpnum.kernels.packed_matmul import layout
from lpnum.kernels.packed_matmul.layout import PackedWeights
from lpnum.kernels.packed_matmul.reference import HIGHEST

__all__ = ["xla_matmul", "WHOLE_DEQUANTIZE_ROWS"]


#: From this many rows on, the XLA path dequantizes W whole and runs one dot: the dequantization pass is then
#: small next to the matmul, and XLA's single large dot beats a scan of tile products.
WHOLE_DEQUANTIZE_ROWS = 128


def xla_matmul(x2: jax.Array, w: PackedWeights) -> jax.Array:
  """``x2 (M, K) @ W`` in XLA. For M < WHOLE_DEQUANTIZE_ROWS, one layout tile of K at a time: each tile is
  dequantized while it is in cache and multiplied at once, so the float32 weights are never written out whole
  (faster for small M on the CPU: ``python -m benchmarks.kernels`` times decode-shaped matmuls); for larger M, W is
  dequantized whole and multiplied in one dot."""
  k_pad, n_pad = w.padded_shape
  if x2.shape[0] >= WHOLE_DEQUANTIZE_ROWS:
    x2 = jnp.pad(x2, ((0, 0), (0, k_pad - x2.shape[1])))
    return jnp.dot(x2, layout.dequantize(w), precision=HIGHEST, preferred_element_type=jnp.float32)
  tiles = k_pad // w.tile_k
  x3 = jnp.pad(x2, ((0, 0), (0, k_pad - x2.shape[1]))).reshape(-1, tiles, w.tile_k).transpose(1, 0, 2)
  per_column = w.group == k_pad
  by_tile = lambda a: None if a is None or per_column else a.reshape(tiles, -1, n_pad)
  group = w.tile_k if per_column else w.group

  def step(acc, inputs):
    xt, planes, scales, zero = inputs
    tile = dataclasses.replace(w, planes=planes, scales=w.scales if per_column else scales,
                               zero_point=w.zero_point if per_column else zero, group=group)
    return acc + jnp.dot(xt, layout.dequantize(tile), precision=HIGHEST, preferred_element_type=jnp.float32), None

  planes = tuple(p.reshape(tiles, -1, n_pad) for p in w.planes)
  acc0 = jnp.zeros((x2.shape[0], n_pad), jnp.float32)
  return jax.lax.scan(step, acc0, (x3, planes, by_tile(w.scales), by_tile(w.zero_point)))[0]
