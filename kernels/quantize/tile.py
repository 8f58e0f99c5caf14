"""The cast of one tile, with the operations every kernel backend lowers: block abs-maxes, scales, element codes
and their packing, for the Pallas kernels (and the tests, which check it against ``lpnum.quantize_scaled``).

The arithmetic is lpnum's own: scales come from :func:`lpnum.scaled.scales.scales_from_range` and
:func:`~lpnum.scaled.scales.scales_from_value`, elements from :func:`lpnum.scaled.elements.round_elements` and the
element format's ``encode_values``, all with ``in_kernel=True`` (integer shifts, masks, selects, bitcasts and
leading-zero counts; no table gathers, no round-to-integral). Only two things are the tile's own: the block
abs-max, taken over the bit patterns (``|x|`` as int32 orders like the magnitudes, NaN above inf, exact for
subnormals where a float max may flush or drop them), and the packing of codes into bytes.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np

from lpnum.carrier import F32
from lpnum.rounding import Rounding
from lpnum.scaled import ScaledFormat
from lpnum.scaled.elements import round_elements
from lpnum.scaled.scales import scales_from_range, scales_from_value

__all__ = ["Cast", "cast_of", "encode_tile", "pack_bytes", "pack_planes", "PACKED_BITS"]

#: Element widths whose codes the kernels pack (a group of codes fills one 32-bit word).
PACKED_BITS = (1, 2, 4, 6, 8)


@dataclasses.dataclass(frozen=True)
class Cast:
  """One cast of a 2-D operand: ``fmt``'s blocks run along ``axis`` of the tile's ``x`` (0: down columns, 1: along
  rows), ``size`` elements long; ``axis=None``: one scale for the tensor, given (``ideal``, see
  :func:`encode_tile`)."""

  fmt: ScaledFormat
  axis: int | None
  size: int


def cast_of(fmt: ScaledFormat, shape: tuple[int, int], transposed: bool) -> Cast:
  """The Cast that quantizes ``x`` (``transposed``: ``x.T``) of 2-D ``shape`` with ``fmt``, in ``x``'s axes.

  Raises:
    ValueError: ``fmt``'s blocks span both axes without covering the tensor (2-D tiles).
  """
  op_shape = shape[::-1] if transposed else shape
  block = fmt.granularity.block_shape(op_shape)
  if tuple(block) == tuple(max(d, 1) for d in op_shape):
    return Cast(fmt, None, 0)
  if block[0] != 1 and block[1] != 1:
    raise ValueError(f"fmt={fmt.name} has 2-D blocks {block}; the cast kernels take blocks along one axis "
                     "(per-block, per-channel) or one scale per tensor")
  axis = 1 if block[0] == 1 else 0
  if transposed:
    axis = 1 - axis
  return Cast(fmt, axis, block[1 - axis] if transposed else block[axis])


def encode_tile(x: jax.Array, cast: Cast, *, ideal: jax.Array | None = None,
                tensor_amax: jax.Array | None = None) -> tuple[jax.Array, jax.Array | None]:
  """The element codes (int32, ``x``'s shape) and scale codes of a tile ``x`` holding whole blocks.

  Args:
    x: the tile (float32, bfloat16 or float16).
    cast: the Cast.
    ideal: for ``cast.axis=None``, the tensor's ideal scale (``(1, 1)`` float32: ``amax / element max``, or a
      given scale), rounded into the scale format here as :func:`lpnum.quantize_scaled` rounds it.
    tensor_amax: for formats with a per-tensor scale, the abs-max it is computed from (``(1, 1)`` float32).

  Returns:
    ``(codes, scale_codes)``: scale codes ``(rows / size, cols)`` for ``axis=0``, ``(rows, cols / size)`` for
    ``axis=1``, None for ``axis=None``.
  """
  fmt = cast.fmt
  x = x.astype(jnp.float32)
  rows, cols = x.shape
  if cast.axis is None:
    s, xv = scales_from_value(ideal, fmt, in_kernel=True), x
  else:
    b = cast.size
    xv = x.reshape(rows, cols // b, b) if cast.axis == 1 else x.reshape(rows // b, b, cols)
    reduce_axis = 2 if cast.axis == 1 else 1
    bits = jax.lax.bitcast_convert_type(xv, jnp.int32) & np.int32(0x7FFFFFFF)
    amax = jax.lax.bitcast_convert_type(jnp.max(bits, axis=reduce_axis, keepdims=True), jnp.float32)
    s = scales_from_range(amax, fmt, None, tensor_amax, in_kernel=True)
  s = s.with_factors(fmt)
  r = round_elements(xv, s, fmt, Rounding.NEAREST_EVEN, None, in_kernel=True)
  codes = fmt.element.encode_values(r, F32).astype(jnp.int32).reshape(rows, cols)
  if cast.axis is None:
    return codes, None
  scale_shape = (rows, cols // cast.size) if cast.axis == 1 else (rows // cast.size, cols)
  return codes, s.codes.astype(jnp.int32).reshape(scale_shape)


def group(bits: int) -> tuple[int, int]:
  """``(codes, bytes)`` of one packing group (:mod:`lpnum.packing`'s layout)."""
  g = math.gcd(8, bits)
  return 8 // g, bits // g


def pack_bytes(codes: jax.Array, bits: int) -> list[jax.Array]:
  """int32 ``codes`` ``(rows, cols)`` packed along the rows as :func:`lpnum.packing.pack` packs them: one uint8
  array ``(rows, cols * bits / 8)``, or for groups of several bytes (6 bits: four codes in three bytes) one array
  per byte of the group, ``(rows, cols / group)`` each, which interleaved give the packed rows."""
  n_codes, n_bytes = group(bits)
  rows, cols = codes.shape
  codes = codes & np.int32((1 << bits) - 1)
  if n_codes == 1:
    return [codes.astype(jnp.uint8)]
  shifts = jax.lax.broadcasted_iota(jnp.int32, (1, 1, n_codes), 2) * np.int32(bits)
  word = jnp.sum(codes.reshape(rows, cols // n_codes, n_codes) << shifts, axis=2)  # bits do not overlap: sum == or
  return [((word >> np.int32(8 * k)) & np.int32(0xFF)).astype(jnp.uint8) for k in range(n_bytes)]


def pack_planes(codes: jax.Array, plane_widths: tuple[int, ...], tile_k: int,
                dtype: np.dtype = np.dtype(np.uint8)) -> list[jax.Array]:
  """int32 ``codes`` ``(rows, cols)`` (rows a multiple of ``tile_k``) as the packed matmul's bit planes: per plane of
  ``w`` bits, ``(rows * w / 8, cols)`` bytes in which, within each K tile of ``tile_k`` rows, field ``j`` of byte
  row ``r`` holds the plane's bits of row ``j * tile_k / p + r`` (``p = 8 / w``); uint8, or int8 (the same bits)
  when ``dtype`` is int8."""
  rows, cols = codes.shape
  planes, low = [], 0
  for w in plane_widths:
    p = 8 // w
    field = (codes >> np.int32(low)) & np.int32((1 << w) - 1)
    shifts = jax.lax.broadcasted_iota(jnp.int32, (1, p, 1, 1), 1) * np.int32(w)
    fields = field.reshape(rows // tile_k, p, tile_k // p, cols) << shifts
    byte = jnp.sum(fields, axis=1).reshape(rows // p, cols)  # no overlap: sum == or
    if dtype == np.int8:
      byte = (byte << np.int32(24)) >> np.int32(24)  # the same 8 bits, sign-extended: an exact int8 conversion
    planes.append(byte.astype(dtype))
    low += w
  return planes
