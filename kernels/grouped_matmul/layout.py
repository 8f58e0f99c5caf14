"""The kernel layout of per-expert quantized weights: each expert's ``(K, N)`` codes in bit planes along K.

A mixture-of-experts weight is ``(E, K, N)``: one ``(K, N)`` matrix per expert, quantized per expert along K (int8
per channel, int4 per group, MXFP4, NVFP4 with a tensor scale per expert, FP8 per channel).
:func:`quantize_experts` quantizes it (``lpnum.quantize_scaled`` on each expert) into a *stacked* QArray: a QArray
of one expert's shape ``(K, N)`` whose arrays carry a leading expert axis. :func:`pack_experts` rearranges that,
once, into :class:`GroupedWeights`, the layout the kernels decode with shifts and masks only:

- Each expert's codes are split into bit planes along K, tile by tile, as :mod:`lpnum.kernels.planes` describes
  (the scheme of :mod:`lpnum.kernels.packed_matmul.layout`, per expert; all planes uint8).
- K is padded to whole tiles and N to a multiple of 128 with the code 0 and scales of 1 (activations are padded
  with zeros along K, so the padding adds exact zeros).
- Scales keep one row per K group and one column per output column (NVFP4's blocks are along K, one column each).

This is layout version :data:`LAYOUT_VERSION`; :meth:`GroupedWeights.describe` records it with the format, so a
checkpoint cannot be restored into expert weights of another format or layout (:mod:`lpnum.description`).
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp

from lpnum.kernels import dequant
from lpnum.kernels.planes import DEFAULT_TILE_K, PlanedWeights, default_tile_k, plane_bits, split_planes, unpack
from lpnum.qarray import QArray
from lpnum.quantize import encode
from lpnum.scaled import ScaledFormat, quantize_scaled
from lpnum.validate import as_array, check_flag, short

__all__ = ["GroupedWeights", "quantize_experts", "pack_experts", "expert", "is_stacked", "kernels_decode",
           "dequantize", "plane_bits", "DEFAULT_TILE_K", "LAYOUT_VERSION"]

#: The version of the layout described in the module docstring; in every description.
LAYOUT_VERSION = 1

_N_ALIGN = 128


@jax.tree_util.register_pytree_with_keys_class
class GroupedWeights(PlanedWeights):
  """Quantized ``(E, K, N)`` expert weights in the kernel layout (module docstring); make them with
  :func:`pack_experts`.

  Attributes:
    planes: uint8 bit planes, each ``(E, K_pad * w / 8, N_pad)`` for a plane of ``w`` bits.
    scales: scale codes, ``(E, K_pad / group, N_pad)``.
    zero_point: int32 zero points like ``scales``, or None.
    tensor_scale: float32 per-expert tensor scales ``(E,)`` (NVFP4), or None.
    fmt: the ScaledFormat of every expert (static).
    shape: ``(E, K, N)`` (static).
    tile_k: K rows per layout tile (static).
    group: K rows sharing a scale row (static; ``K_pad`` for per-channel scales).
    checkpoint_tag: the empty pytree child whose key carries the description's fingerprint (as
      :class:`lpnum.QArray`'s).
  """

  LAYOUT_VERSION = LAYOUT_VERSION

  @property
  def padded_shape(self) -> tuple[int, int]:
    """``(K_pad, N_pad)``."""
    return (self.scales.shape[1] * self.group, self.scales.shape[2])


def quantize_experts(w, fmt: ScaledFormat, *, pad: bool = False, scale: float | None = None) -> QArray:
  """Quantizes ``(E, K, N)`` expert weights, each expert on its own, into a stacked QArray.

  Each expert's ``(K, N)`` matrix is ``lpnum.quantize_scaled(w[e], fmt)``: scales along K as ``fmt`` says
  (``per_channel(1)``, ``per_block(g, axis=0)``, ``mx.format(name, axis=0)``, ``nvfp4.format(axis=0)``, whose tensor
  scale is then per expert). The result is a QArray of shape ``(K, N)`` whose arrays have a leading expert axis.

  Args:
    w: float ``(E, K, N)`` weights.
    fmt: the weight format.
    pad: pad a last partial block along K with zeros (as ``quantize_scaled``'s ``pad``).
    scale: a static scale for every block of every expert (as ``quantize_scaled``'s ``scale``; e.g. 1 for a
      direct cast), or None for the format's scaling.

  Returns:
    The stacked QArray (``expert(q, e)`` is expert ``e``'s QArray).

  Example:
    >>> import jax.numpy as jnp, lpnum
    >>> from lpnum.kernels.grouped_matmul import layout
    >>> q = layout.quantize_experts(jnp.ones((3, 64, 32)), lpnum.mx.format("mxfp4_e2m1", axis=0))
    >>> q.shape, q.scales.shape
    ((64, 32), (3, 2, 32))
  """
  w = as_array(w)
  if w.ndim != 3 or not jnp.issubdtype(w.dtype, jnp.floating):
    raise ValueError(f"w must be float (E, K, N) expert weights, got shape {w.shape}, dtype {w.dtype}")
  if not isinstance(fmt, ScaledFormat):
    raise TypeError(f"fmt={short(fmt)} must be a ScaledFormat")
  check_flag("pad", pad)
  return jax.vmap(lambda a: quantize_scaled(a, fmt, pad=pad, scale=scale))(w)


def is_stacked(q) -> bool:
  """Whether ``q`` is a stacked QArray of experts (:func:`quantize_experts`)."""
  return isinstance(q, QArray) and len(q.shape) == 2 and q.data.ndim == 3


def expert(q: QArray, e: int) -> QArray:
  """Expert ``e``'s ``(K, N)`` QArray of a stacked QArray (:func:`quantize_experts`)."""
  return jax.tree.map(lambda a: a[e], q)


def kernels_decode(q: QArray) -> bool:
  """Whether :func:`pack_experts` takes the stacked QArray ``q`` (its formats and blocks)."""
  try:
    _check(q)
  except ValueError:
    return False
  return True


def _check(q: QArray) -> None:
  if not is_stacked(q):
    raise ValueError(f"q must be a stacked QArray of (K, N) experts (data (E, K, ...)), got shape {q.shape} with "
                     f"data of shape {q.data.shape}: quantize (E, K, N) weights with layout.quantize_experts")
  dequant.check_element(q.fmt.element)
  dequant.check_scale(q.fmt)
  k, bk = q.shape[0], q.block[0]
  if bk < k and bk < 8:
    raise ValueError(f"q's blocks are {bk} rows along K (axis 0); the kernels need scales shared by at least 8 "
                     "rows of K: quantize with blocks along axis 0 (e.g. mx.format(name, axis=0))")
  if q.block[1] != 1 and bk != k:
    raise ValueError(f"q's blocks are {q.block}; the kernels take blocks along K (axis 0) or per-channel scales")


def pack_experts(q: QArray, *, tile_k: int | None = None) -> GroupedWeights:
  """Rearranges a stacked QArray (:func:`quantize_experts`) into the kernel layout.

  Args:
    q: the stacked quantized expert weights; scales shared along K (per channel, per group of at least 8 rows
      along axis 0, or per tensor).
    tile_k: K rows per tile (default 512, or 8 groups if larger): a multiple of 128 times the codes per byte of the
      narrowest plane, and of the group size.

  Returns:
    The GroupedWeights.

  Example:
    >>> import jax.numpy as jnp, lpnum
    >>> from lpnum.kernels.grouped_matmul import layout
    >>> q = layout.quantize_experts(jnp.ones((3, 64, 32)), lpnum.mx.format("mxfp4_e2m1", axis=0))
    >>> gw = layout.pack_experts(q)
    >>> gw.shape, gw.planes[0].shape, gw.scales.shape
    ((3, 64, 32), (3, 256, 128), (3, 16, 128))
  """
  if not isinstance(q, QArray):
    raise TypeError(f"q must be a stacked QArray (layout.quantize_experts), got {type(q).__name__}")
  _check(q)
  fmt, k, bk = q.fmt, q.shape[0], q.block[0]
  grouped = bk < k
  tile_k = default_tile_k(tile_k, fmt.element.bits, bk if grouped else None)
  return _pack(q, tile_k, bk if grouped else None)


@functools.partial(jax.jit, static_argnums=(1, 2))
def _pack(q: QArray, tile_k: int, group: int | None) -> GroupedWeights:
  fmt, (k, n) = q.fmt, q.shape
  e = q.data.shape[0]
  k_pad = math.ceil(max(k, 1) / tile_k) * tile_k
  n_pad = math.ceil(max(n, 1) / _N_ALIGN) * _N_ALIGN
  codes = jax.vmap(lambda one: one.element_codes)(q).astype(jnp.int32)
  codes = jnp.pad(codes, ((0, 0), (0, k_pad - k), (0, n_pad - n)))
  planes = split_planes(codes, fmt.element.bits, tile_k)
  group = group or k_pad
  rows = k_pad // group
  one = encode(jnp.float32(1.0), fmt.scale_format)
  pad = lambda a, fill: jnp.pad(a, ((0, 0), (0, rows - a.shape[1]), (0, n_pad - n)), constant_values=fill)
  scales = pad(q.scales, one)
  zero = None if q.zero_point is None else pad(q.zero_point, 0)
  tensor = None if q.tensor_scale is None else q.tensor_scale.astype(jnp.float32).reshape(e)
  return GroupedWeights(planes, scales, zero, tensor, fmt, (e, k, n), tile_k, group)


def unpack_codes(w: GroupedWeights) -> jax.Array:
  """The int32 element codes ``(E, K_pad, N_pad)`` (the inverse of the plane split)."""
  return unpack(w.planes, w.fmt.element.bits, w.tile_k)


def dequantize(w: GroupedWeights) -> jax.Array:
  """The float32 weights ``(E, K_pad, N_pad)``, computed with the kernels' arithmetic."""
  e = w.shape[0]
  k_pad, n_pad = w.padded_shape
  v = dequant.element_values(w.fmt.element, unpack_codes(w))

  def rows(a):  # one row per K group -> one per row of K
    if a is None or a.shape[1] == 1:
      return a
    return jnp.broadcast_to(a[:, :, None, :], (e, a.shape[1], w.group, n_pad)).reshape(e, k_pad, n_pad)

  tensor = None if w.tensor_scale is None else w.tensor_scale[:, None, None]
  return dequant.apply_scale(v, w.fmt, dequant.scale_parts(w.fmt, rows(w.scales)), rows(w.zero_point), tensor)
