"""The kernel layout of quantized weights: bit planes interleaved along K, tile by tile.

A QArray stores element codes as one little-endian bit stream along its last axis. A matmul kernel wants to turn
a tile of packed bytes into a tile of weights with shifts and masks only, and to feed the MXU/tensor cores whole
rows of K. :func:`pack_weights` rearranges a ``(K, N)`` QArray once, offline, into that layout; the bytes held
are the same (plus padding to whole tiles), so the weights still cross memory at their packed size.

Layout, for element codes of ``b`` bits and a K tile of ``tile_k`` rows:

- The codes are split into bit planes along K, tile by tile, as :mod:`lpnum.kernels.planes` describes: field ``j``
  of a tile's bytes is one contiguous K range, which a kernel multiplies with a contiguous slice of ``x``.
- Planes are uint8, except the one plane of two's complement 8-bit integers (int8, not narrow), which is int8:
  its bytes are the codes and also the values, so the integer (W8A8) path multiplies the stored plane as it is.
- K is padded to whole tiles and N to a multiple of 128 with the code 0 and with scales of 1; ``x`` is padded
  with zeros along K, so the padding adds exact zeros.
- Scales keep one row per K group (``group`` rows of K share a row; per-channel and per-tensor scales have one row
  for the whole K) and one column per output column (2-D tiles, such as NVFP4's 16x16, are expanded along N).

This is layout version :data:`LAYOUT_VERSION`; :meth:`PackedWeights.describe` records it with the format, so a
checkpoint cannot be restored into weights of another format or layout (:mod:`lpnum.description`).
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

from lpnum.formats import IntFormat
from lpnum.kernels import dequant
from lpnum.kernels.planes import DEFAULT_TILE_K, PlanedWeights, default_tile_k, split_planes, unpack
from lpnum.qarray import QArray
from lpnum.quantize import encode
from lpnum.scaled import ScaledFormat

__all__ = ["PackedWeights", "pack_weights", "plane_dtype", "DEFAULT_TILE_K", "LAYOUT_VERSION"]

#: The version of the kernel layout described in the module docstring; in every description.
LAYOUT_VERSION = 2

_N_ALIGN = 128


@jax.tree_util.register_pytree_with_keys_class
class PackedWeights(PlanedWeights):
  """Quantized ``(K, N)`` weights in the kernel layout (see the module docstring); make one with
  :func:`pack_weights`.

  Attributes:
    planes: bit planes (uint8; int8 for int8 elements, see :func:`plane_dtype`), each ``(K_pad * w / 8, N_pad)``
      for a plane of ``w`` bits.
    scales: scale codes, ``(K_pad / group, N_pad)``.
    zero_point: int32 zero points like ``scales``, or None.
    tensor_scale: the float32 per-tensor scale, or None.
    fmt: the ScaledFormat (static).
    shape: ``(K, N)`` (static).
    tile_k: K rows per layout tile (static).
    group: K rows sharing a scale row (static; ``K_pad`` for per-channel and per-tensor scales).
    checkpoint_tag: the empty pytree child whose key carries the description's fingerprint (as
      :class:`lpnum.QArray`'s).
  """

  LAYOUT_VERSION = LAYOUT_VERSION

  @property
  def padded_shape(self) -> tuple[int, int]:
    return (self.scales.shape[0] * self.group, self.scales.shape[1])


def plane_dtype(fmt: ScaledFormat) -> np.dtype:
  """The dtype of the planes of ``fmt``'s elements: int8 for two's complement 8-bit integers (the plane holds
  their values), uint8 otherwise."""
  el = fmt.element
  signed8 = isinstance(el, IntFormat) and el.bits == 8 and el.signed and not el.narrow
  return np.dtype(np.int8 if signed8 else np.uint8)


def pack_weights(q: QArray, *, tile_k: int | None = None) -> PackedWeights:
  """Rearranges a 2-D QArray ``(K, N)`` (K the reduction axis) into the kernel layout.

  Scales must be shared along K: per-tensor, per-channel (``per_channel(1)``), per-group along axis 0
  (``per_block(g, axis=0)``, ``mx.format(name, axis=0)``, ``nvfp4.format(axis=0)``) or 2-D tiles.

  Args:
    q: the quantized weights.
    tile_k: K rows per tile (default 512, or 8 groups if larger); a multiple of 128 times the codes per byte of
      the narrowest plane, and of the group size. TPU kernels need at least 8 scale rows per tile (tile_k >= 8 *
      group) unless one tile covers all of K.

  Returns:
    The PackedWeights.

  Example:
    >>> import jax.numpy as jnp, lpnum
    >>> from lpnum.kernels.packed_matmul import layout
    >>> q = lpnum.quantize_scaled(jnp.ones((64, 32)), lpnum.mx.format("mxfp4_e2m1", axis=0))
    >>> w = layout.pack_weights(q)
    >>> w.planes[0].shape, w.scales.shape
    ((256, 128), (16, 128))
  """
  if not isinstance(q, QArray):
    raise TypeError(f"q must be a QArray (lpnum.quantize_scaled), got {type(q).__name__}")
  if q.ndim != 2:
    raise ValueError(f"q must hold 2-D weights (K, N), got shape {q.shape}")
  fmt = q.fmt
  dequant.check_element(fmt.element)
  dequant.check_scale(fmt)
  k, n = q.shape
  bk, bn = q.block
  grouped = bk < k
  if grouped and bk < 8:
    raise ValueError(f"q's blocks are {bk} rows along K (axis 0); the kernels need scales shared by at least 8 "
                     "rows of K: quantize the weights with blocks along axis 0 (e.g. mx.format(name, axis=0))")
  tile_k = default_tile_k(tile_k, fmt.element.bits, bk if grouped else None)
  return _pack(q, tile_k, bk if grouped else None)


@functools.partial(jax.jit, static_argnums=(1, 2))
def _pack(q: QArray, tile_k: int, group: int | None) -> PackedWeights:
  fmt, (k, n), bn = q.fmt, q.shape, q.block[1]
  bits = fmt.element.bits
  k_pad = math.ceil(max(k, 1) / tile_k) * tile_k
  n_pad = math.ceil(max(n, 1) / _N_ALIGN) * _N_ALIGN
  codes = jnp.pad(q.element_codes.astype(jnp.int32), ((0, k_pad - k), (0, n_pad - n)))
  split = split_planes(codes, bits, tile_k)
  if plane_dtype(fmt) == np.int8:
    split = (jax.lax.bitcast_convert_type(split[0], jnp.int8),)
  group = group or k_pad
  one = encode(jnp.float32(1.0), fmt.scale_format)
  scales = _expand(q.scales, bn, n, k_pad // group, n_pad, one)
  zero = None if q.zero_point is None else _expand(q.zero_point, bn, n, k_pad // group, n_pad, 0)
  return PackedWeights(split, scales, zero, q.tensor_scale, fmt, (k, n), tile_k, group)


def _expand(a: jax.Array, bn: int, n: int, rows: int, n_pad: int, fill) -> jax.Array:
  """Block scales (or zero points) to one column per output column, padded to ``(rows, n_pad)``."""
  if bn > 1:
    a = jnp.repeat(a, bn, axis=1)[:, :n]
  return jnp.pad(a, ((0, rows - a.shape[0]), (0, n_pad - a.shape[1])), constant_values=fill)


def unpack_codes(w: PackedWeights) -> jax.Array:
  """The int32 element codes ``(K_pad, N_pad)`` of a PackedWeights (the inverse of the plane split)."""
  return unpack(w.planes, w.fmt.element.bits, w.tile_k)


def dequantize(w: PackedWeights) -> jax.Array:
  """The float32 weights ``(K_pad, N_pad)`` of a PackedWeights, computed as the kernels compute them."""
  k_pad, _ = w.padded_shape
  v = dequant.element_values(w.fmt.element, unpack_codes(w))
  def rows(a):  # one scale row per K group -> one per row of K
    if a is None or a.shape[0] == 1:
      return a
    return jnp.broadcast_to(a[:, None, :], (a.shape[0], w.group, a.shape[1])).reshape(k_pad, a.shape[1])
  s = dequant.scale_parts(w.fmt, rows(w.scales))
  return dequant.apply_scale(v, w.fmt, s, rows(w.zero_point), w.tensor_scale)
