"""Granularity: which elements of a tensor share one scale.

Every granularity is, after resolving against a shape, a *block shape*: for each axis, the length of the blocks
along it. Per-tensor scaling has blocks as large as the tensor, per-channel scaling blocks of one element along
the channel axes and of the whole extent along the others, per-group scaling blocks of ``size`` along one axis,
and 2-D tiles blocks along two. A tensor of shape ``(d0, d1, ...)`` with block shape ``(b0, b1, ...)`` has scales
of shape ``(ceil(d0 / b0), ceil(d1 / b1), ...)``: the scale array keeps every axis, so it broadcasts against the
blocked tensor.

A block size must divide its axis unless padding is asked for; then the last block is padded with zeros (which
never change an absolute maximum) and the padding is dropped again on dequantization.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp

from lpnum.validate import check_int, short

__all__ = ["Granularity", "per_tensor", "per_channel", "per_block", "per_tile"]


@dataclasses.dataclass(frozen=True)
class Granularity:
  """Which elements share a scale; build one with :func:`per_tensor`, :func:`per_channel`, :func:`per_block` or
  :func:`per_tile`.

  Attributes:
    kind: ``"tensor"``, ``"channel"``, ``"block"`` or ``"tile"``.
    axes: the axes the kind refers to (channel axes, or the blocked axes).
    sizes: block lengths along ``axes`` (``"block"`` and ``"tile"`` only).
  """

  kind: str
  axes: tuple[int, ...] = ()
  sizes: tuple[int, ...] = ()

  @property
  def axes_given(self) -> bool:
    """Whether the axes were given (``per_channel()`` and ``per_block(size)`` leave them to the context: the last
    axis of a tensor, or the free axis and K of a matmul operand, see :class:`lpnum.qdot.OperandQuant`)."""
    return self.kind in ("tensor", "tile") or bool(self.axes)

  def with_axes(self, axes: tuple[int, ...]) -> "Granularity":
    """This granularity along ``axes`` where it was built without them, else itself."""
    return self if self.axes_given else dataclasses.replace(self, axes=tuple(axes))

  def block_shape(self, shape: Sequence[int]) -> tuple[int, ...]:
    """The block length along every axis of ``shape`` (sizes larger than an axis are not clipped)."""
    ndim = len(shape)
    axes = tuple(_axis(a, ndim, "axis") for a in (self.axes if self.axes_given else (-1,)))
    if len(set(axes)) != len(axes):
      raise ValueError(f"axes={self.axes} name the same axis twice for a {ndim}-d array")
    if self.kind == "tensor":
      return tuple(max(d, 1) for d in shape)
    if self.kind == "channel":
      return tuple(1 if i in axes else max(d, 1) for i, d in enumerate(shape))
    sizes = dict(zip(axes, self.sizes))
    return tuple(sizes.get(i, 1) for i in range(ndim))

  def __str__(self) -> str:
    if self.kind == "tensor":
      return "per_tensor"
    axes = self.axes if self.axes_given else (-1,)
    if self.kind == "channel":
      return f"per_channel{axes}"
    return f"per_{self.kind}({self.sizes}, axes={axes})"


def per_tensor() -> Granularity:
  """One scale for the whole tensor."""
  return Granularity("tensor")


def per_channel(axis: int | Sequence[int] | None = None) -> Granularity:
  """One scale per index along ``axis`` (or each combination of indices along several axes).

  For a Dense kernel of shape ``(in, out)``, ``per_channel(-1)`` gives one scale per output channel. Without
  ``axis``: the last axis of a tensor; in a matmul operand's config, its free axis (per token for activations, per
  output channel for weights).
  """
  if axis is None:
    return Granularity("channel")
  return Granularity("channel", _ints(axis, "axis"))


def per_block(size: int, axis: int | None = None) -> Granularity:
  """Blocks of ``size`` consecutive elements along ``axis``, one scale each (per-group / microscaling).

  Without ``axis``: the last axis of a tensor; in a matmul operand's config, the contracting axis K.
  """
  size = check_int("size", size, 1)
  if axis is None:
    return Granularity("block", (), (size,))
  return Granularity("block", (check_int("axis", axis),), (size,))


def per_tile(shape: Sequence[int], axes: Sequence[int] = (-2, -1)) -> Granularity:
  """2-D (or n-D) tiles: blocks of ``shape`` over ``axes``, one scale each (e.g. 128x128 weight tiles)."""
  shape, axes = _ints(shape, "shape", sequence=True), _ints(axes, "axes", sequence=True)
  if any(v < 1 for v in shape):
    raise ValueError(f"shape={shape} must be positive tile lengths")
  if len(shape) != len(axes):
    raise ValueError(f"shape={shape} and axes={axes} must have the same length")
  if len(set(axes)) != len(axes):
    raise ValueError(f"axes={axes} name the same axis twice")
  return Granularity("tile", axes, shape)


def _ints(value, name: str, sequence: bool = False) -> tuple[int, ...]:
  """One integer or a non-empty sequence of them (only a sequence if ``sequence``), as a tuple."""
  if isinstance(value, Sequence) and not isinstance(value, str | bytes):
    if not value:
      raise ValueError(f"{name}=() must name at least one")
    return tuple(check_int(name, v) for v in value)
  if sequence:
    raise TypeError(f"{name}={short(value)} must be a sequence of integers, e.g. (128, 128)")
  return (check_int(name, value),)


def _axis(axis: int, ndim: int, name: str) -> int:
  if not -ndim <= axis < ndim:
    raise ValueError(f"{name}={axis} is out of range for an array with {ndim} dimensions")
  return axis % ndim


def check_fit(shape: Sequence[int], block: Sequence[int], pad: bool) -> tuple[int, ...]:
  """The padded shape; raises if a block does not divide its axis and ``pad`` is false."""
  padded = []
  for i, (d, b) in enumerate(zip(shape, block)):
    if d % b and not pad:
      raise ValueError(
          f"block_size={b} does not divide dimension {i} of x (size {d}): use a block size that divides {d}, "
          f"or pad=True to pad the last block with zeros to {math.ceil(d / b) * b}")
    padded.append(math.ceil(d / b) * b if d else 0)
  return tuple(padded)


def to_blocks(x: jax.Array, block: Sequence[int], padded: Sequence[int]) -> jax.Array:
  """Pads ``x`` with zeros to ``padded`` and reshapes it to ``(n0, b0, n1, b1, ...)``."""
  if tuple(padded) != x.shape:
    x = jnp.pad(x, [(0, p - d) for d, p in zip(x.shape, padded)])
  split = []
  for p, b in zip(padded, block):
    split += [p // b, b]
  return x.reshape(split)


def from_blocks(xb: jax.Array, shape: Sequence[int]) -> jax.Array:
  """Inverse of :func:`to_blocks`: merges the block axes and drops the padding."""
  padded = tuple(xb.shape[2 * i] * xb.shape[2 * i + 1] for i in range(len(shape)))
  x = xb.reshape(padded)
  if padded != tuple(shape):
    x = x[tuple(slice(0, d) for d in shape)]
  return x


def block_axes(ndim: int) -> tuple[int, ...]:
  """The within-block axes of a blocked array of an ``ndim``-d tensor (reduce over these)."""
  return tuple(2 * i + 1 for i in range(ndim))
