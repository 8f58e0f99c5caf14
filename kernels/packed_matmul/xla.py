"""The XLA face of the packed matmul: what runs on the CPU (and wherever Pallas is not asked for)."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from lpnum.kernels import dequant
from lpnum.kernels.planes import unpack
from lpnum.kernels.packed_matmul import layout
from lpnum.kernels.packed_matmul.layout import PackedWeights
from lpnum.kernels.packed_matmul.reference import HIGHEST

__all__ = ["xla_matmul", "WHOLE_DEQUANTIZE_ROWS", "TILE_BYTES"]


#: From this many rows on, the XLA path dequantizes W whole and runs one dot: the dequantization pass is then
#: small next to the matmul, and XLA's single large dot beats a scan of tile products.
WHOLE_DEQUANTIZE_ROWS = 128

#: At most this many bytes of decoded float32 weights per tile of the small-M path (``tile_k`` rows by as many
#: columns as fit), so that a tile stays in the CPU's cache between its decoding and its product. Measured on a 2-core
#: CPU with a 32 MiB L3 at K = N = 8192: 8 MiB tiles beat 4 and 16 MiB ones at M = 1 and 16.
TILE_BYTES = 8 << 20


def xla_matmul(x2: jax.Array, w: PackedWeights) -> jax.Array:
  """``x2 (M, K) @ W`` in XLA.

  For M < WHOLE_DEQUANTIZE_ROWS (decode-shaped matmuls, bound by the weight bytes), W is read once, tile by tile:
  each ``tile_k x tn`` tile of packed codes (at most TILE_BYTES once decoded) is decoded while it is in cache and
  multiplied at once, so the float32 weights are never written out whole. Scales are decoded once per scale row,
  not per weight. For larger M, W is dequantized whole and multiplied in one dot. ``python -m benchmarks.kernels``
  times both regimes.
  """
  k_pad, n_pad = w.padded_shape
  x2 = jnp.pad(x2, ((0, 0), (0, k_pad - x2.shape[1])))
  if x2.shape[0] >= WHOLE_DEQUANTIZE_ROWS:
    return jnp.dot(x2, layout.dequantize(w), precision=HIGHEST, preferred_element_type=jnp.float32)
  m, tk = x2.shape[0], w.tile_k
  tn = _tile_n(n_pad, TILE_BYTES // (4 * tk))
  group_rows = 1 if w.group == k_pad else tk // w.group  # scale rows per K tile
  # Decoded once, per scale row; the barrier keeps XLA from fusing the decoding into every weight's product.
  parts = jax.lax.optimization_barrier(_scale_rows(w))
  xt = x2.reshape(m, k_pad // tk, tk).transpose(1, 0, 2)

  def strip(j):  # output columns [j * tn, (j + 1) * tn)
    def step(acc, inputs):
      t, xk = inputs
      tile = _decode_tile(w, parts, t, j * tn, tn, t * group_rows if w.group < k_pad else 0, group_rows)
      return acc + jnp.dot(xk, tile, precision=HIGHEST, preferred_element_type=jnp.float32), None

    return jax.lax.scan(step, jnp.zeros((m, tn), jnp.float32), (jnp.arange(k_pad // tk), xt))[0]

  out = jax.lax.map(strip, jnp.arange(n_pad // tn))  # (strips, M, tn)
  return out.transpose(1, 0, 2).reshape(m, n_pad)


def _tile_n(n_pad: int, widest: int) -> int:
  """The widest multiple of 128 that divides ``n_pad`` and is at most ``widest`` (128 at least)."""
  blocks = n_pad // 128
  return 128 * max(d for d in range(1, max(1, min(blocks, widest // 128)) + 1) if blocks % d == 0)


def _scale_rows(w: PackedWeights) -> tuple:
  """The scales' decoded parts and the zero points, one row per scale row (absent parts are None)."""
  s = dequant.scale_parts(w.fmt, w.scales)
  zero = None if w.zero_point is None else w.zero_point.astype(jnp.float32)
  return (s.value, s.exponent, s.nan, zero)


def _decode_tile(w: PackedWeights, parts: tuple, t, col, tn: int, row, group_rows: int) -> jax.Array:
  """The float32 weights of K tile ``t``, columns ``[col, col + tn)``, as :func:`layout.dequantize` gives them."""
  tk = w.tile_k
  codes = unpack([jax.lax.dynamic_slice(plane, (t * (tk * width // 8), col), (tk * width // 8, tn))
                  for plane, width in zip(w.planes, w.plane_bits)], w.fmt.element.bits, tk)
  v = dequant.element_values(w.fmt.element, codes)

  def expand(a):  # this tile's scale rows -> one row per row of K (or one row for all of them)
    if a is None:
      return None
    a = jax.lax.dynamic_slice(a, (row, col), (group_rows, tn))
    if group_rows == 1:
      return a
    return jnp.broadcast_to(a[:, None, :], (group_rows, tk // group_rows, tn)).reshape(tk, tn)

  value, exponent, nan, zero = map(expand, parts)
  return dequant.apply_scale(v, w.fmt, dequant.ScaleParts(value, exponent, nan), zero, w.tensor_scale)
