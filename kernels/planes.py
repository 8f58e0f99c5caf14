"""Bit planes along K: the packed byte layout shared by the kernel ops' weights (``PackedWeights``,
``GroupedWeights``).

Element codes of ``b`` bits are split into planes of 4, 2 and 1 bits (``b = 6``: a 4-bit plane holding bits 0-3
and a 2-bit plane holding bits 4-5; ``b = 8``: one 8-bit plane). A plane of ``w`` bits holds ``p = 8 / w`` codes
per byte: within each K tile of ``tile_k`` rows, byte row ``r`` holds in bit field ``j`` (bits ``w*j`` to
``w*j + w - 1``) the plane's bits of the code at row ``j * tile_k / p + r``. So field ``j`` of a tile is the
contiguous K range ``[j * tile_k / p, (j + 1) * tile_k / p)``, which a kernel multiplies with a contiguous slice of
the activations: no interleaving, no lane shuffles.

:class:`PlanedWeights` holds the pytree, description and size logic of weights stored this way; each layout
subclasses it with its own shapes.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

from lpnum import description

__all__ = ["plane_bits", "default_tile_k", "split_planes", "unpack", "PlanedWeights", "DEFAULT_TILE_K"]

#: K rows per layout tile unless given; a multiple of 128 * (codes per byte) keeps every field a whole number of
#: lane tiles.
DEFAULT_TILE_K = 512


def plane_bits(bits: int) -> tuple[int, ...]:
  """The plane widths a ``bits``-bit code is split into, lowest bits first (6 -> (4, 2))."""
  if bits == 8:
    return (8,)
  return tuple(w for w in (4, 2, 1) if bits & w)


def default_tile_k(tile_k, bits: int, group: int | None) -> int:
  """``tile_k`` checked, or its default (512, or 8 groups if larger) when None.

  Raises:
    ValueError: ``tile_k`` is not a positive multiple of 128 times the codes per byte of the narrowest plane, or
      not a multiple of ``group`` (the K rows sharing a scale row, None for per-channel scales).
  """
  unit = 128 * (8 // min(plane_bits(bits)))
  if tile_k is None:
    tile_k = max(DEFAULT_TILE_K, unit, 8 * group if group else 0)
  if isinstance(tile_k, bool) or not isinstance(tile_k, int) or tile_k <= 0 or tile_k % unit:
    raise ValueError(f"tile_k={tile_k!r} must be a positive multiple of {unit} for {bits}-bit elements")
  if group and tile_k % group:
    raise ValueError(f"tile_k={tile_k} must be a multiple of the group size {group} (q's blocks along K)")
  return tile_k


def split_planes(codes: jax.Array, bits: int, tile_k: int) -> tuple[jax.Array, ...]:
  """int32 ``codes`` ``(..., K_pad, N)`` (``K_pad`` a multiple of ``tile_k``) as uint8 planes
  ``(..., K_pad * w / 8, N)``, one per width of :func:`plane_bits`."""
  *lead, k_pad, n = codes.shape
  planes, low = [], 0
  for w in plane_bits(bits):
    p = 8 // w
    field = ((codes >> low) & ((1 << w) - 1)).reshape(*lead, k_pad // tile_k, p, tile_k // p, n)
    byte = sum(field[..., j, :, :] << (w * j) for j in range(p))
    planes.append(byte.reshape(*lead, k_pad // p, n).astype(jnp.uint8))
    low += w
  return tuple(planes)


def unpack(planes, bits: int, tile_k: int) -> jax.Array:
  """The int32 codes ``(..., K_pad, N)`` of ``planes`` (the inverse of :func:`split_planes`; int8 planes hold the
  same bits). Planes holding one K tile give that tile's codes."""
  codes, low = None, 0
  for plane, width in zip(planes, plane_bits(bits)):
    p = 8 // width
    *lead, rows, n = plane.shape
    b = plane.astype(jnp.int32).reshape(*lead, rows * p // tile_k, 1, tile_k // p, n)
    fields = (b >> (width * jnp.arange(p, dtype=jnp.int32)[:, None, None])) & ((1 << width) - 1)
    fields = fields.reshape(*lead, rows * p, n) << low
    codes = fields if codes is None else codes | fields
    low += width
  return codes


@dataclasses.dataclass(frozen=True)
class PlanedWeights:
  """Quantized weights in bit planes (the module docstring), with their scales; base of the layouts' classes.

  A subclass adds its ``padded_shape`` and its class attribute ``LAYOUT_VERSION``, is registered with
  ``jax.tree_util.register_pytree_with_keys_class``, and describes itself under its class name.

  Attributes:
    planes: the bit planes (uint8; int8 where the layout stores int8 values).
    scales: scale codes, one row per K group.
    zero_point: int32 zero points like ``scales``, or None.
    tensor_scale: float32 per-tensor scale(s), or None.
    fmt: the ScaledFormat (static).
    shape: the weights' logical shape (static).
    tile_k: K rows per layout tile (static).
    group: K rows sharing a scale row (static; ``K_pad`` for per-channel and per-tensor scales).
    checkpoint_tag: the empty pytree child whose key carries the description's fingerprint (as
      :class:`lpnum.QArray`'s).
  """

  planes: tuple[jax.Array, ...]
  scales: jax.Array
  zero_point: jax.Array | None
  tensor_scale: jax.Array | None
  fmt: object
  shape: tuple[int, ...]
  tile_k: int
  group: int
  checkpoint_tag: object = dataclasses.field(default=None, repr=False, compare=False)

  LAYOUT_VERSION = 0

  def tree_flatten(self):
    return (self.planes, self.scales, self.zero_point, self.tensor_scale, self.checkpoint_tag), (
        self.fmt, self.shape, self.tile_k, self.group)

  def tree_flatten_with_keys(self):
    children, aux = self.tree_flatten()
    keys = (*map(jax.tree_util.GetAttrKey, ("planes", "scales", "zero_point", "tensor_scale")),
            _tag(type(self), *aux))
    return list(zip(keys, children)), aux

  @classmethod
  def tree_unflatten(cls, aux, leaves):
    *arrays, slot = leaves
    return cls(*arrays, *aux, slot)

  def describe(self) -> dict:
    """What the codes mean, as JSON-able data: type, layout version, format, shape, ``tile_k`` and ``group``
    (see :mod:`lpnum.description`)."""
    return {"type": type(self).__name__, "layout_version": self.LAYOUT_VERSION, "format": self.fmt.describe(),
            "shape": list(self.shape), "tile_k": self.tile_k, "group": self.group}

  @property
  def plane_bits(self) -> tuple[int, ...]:
    return plane_bits(self.fmt.element.bits)

  @property
  def nbytes(self) -> int:
    """Bytes held: planes, scales, zero points and tensor scales."""
    leaves = [*self.planes, self.scales, self.zero_point, self.tensor_scale]
    return sum(int(np.prod(a.shape)) * np.dtype(a.dtype).itemsize for a in leaves if a is not None)


@functools.lru_cache(maxsize=1024)
def _tag(cls: type, fmt, shape: tuple[int, ...], tile_k: int, group: int):
  return description.tag(cls((), None, None, None, fmt, shape, tile_k, group).describe())
