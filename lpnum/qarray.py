"""QArray: the one representation of a quantized tensor that kernels and layers consume.

A QArray is a pytree whose leaves are arrays (packed element codes, scale codes, zero points, the per-tensor
scale) and whose static part is the format and the original shape, dtype and block shape. It passes through
``jax.jit``, ``device_put`` and sharding like any pytree, and serializes with flax (``flax.serialization``, once
:mod:`lpnum.nn` is imported) or orbax as its leaves.

Layout: ``data`` holds the element codes of the original tensor packed along its last axis
(:mod:`lpnum.packing`); ``scales`` has one code per block, of shape ``ceil(shape / block)`` per axis.
"""

from __future__ import annotations

import dataclasses
import math
from typing import TYPE_CHECKING, Any

import jax
import numpy as np

from lpnum import packing

if TYPE_CHECKING:
  from lpnum.scaled.format import ScaledFormat

__all__ = ["QArray"]


@dataclasses.dataclass(frozen=True)
class QArray:
  """A block-scaled quantized array (see :func:`lpnum.quantize_scaled`).

  Attributes:
    data: packed element codes (uint8), the original tensor's codes packed along its last axis.
    scales: scale codes (the scale format's code dtype), one per block.
    zero_point: int32 zero points per block (asymmetric integer formats), else None.
    tensor_scale: float32 per-tensor scale (NVFP4's second level), else None.
    fmt: the ScaledFormat (static).
    shape: the original shape (static).
    dtype: the original dtype (static).
    block: the block shape (static).
  """

  data: jax.Array
  scales: jax.Array
  zero_point: jax.Array | None
  tensor_scale: jax.Array | None
  fmt: ScaledFormat
  shape: tuple[int, ...]
  dtype: np.dtype
  block: tuple[int, ...]

  @property
  def element_codes(self) -> jax.Array:
    """The element codes, unpacked, with the original shape (uint8, or uint16 for wider formats)."""
    n = self.shape[-1] if self.shape else 1
    codes = packing.unpack(self.data, self.fmt.element.bits, n, axis=-1)
    return codes.reshape(self.shape)

  @property
  def scale_codes(self) -> jax.Array:
    """The scale codes, one per block (e.g. E8M0 bytes for MX), shape ``ceil(shape / block)``."""
    return self.scales

  @property
  def nbytes(self) -> int:
    """Bytes held: packed elements plus scales, zero points and the per-tensor scale."""
    leaves = [self.data, self.scales, self.zero_point, self.tensor_scale]
    return sum(int(np.prod(a.shape)) * np.dtype(a.dtype).itemsize for a in leaves if a is not None)

  @property
  def ndim(self) -> int:
    return len(self.shape)

  def check(self) -> None:
    """Raises ValueError if the leaves do not match the static metadata (e.g. after a bad restore)."""
    n = self.shape[-1] if self.shape else 1
    want_data = (*self.shape[:-1], packing.packed_length(n, self.fmt.element.bits))
    if tuple(self.data.shape) != want_data:
      raise ValueError(f"q.data has shape {tuple(self.data.shape)}; a {self.fmt.name} array of shape "
                       f"{self.shape} needs {want_data}")
    want_scales = tuple(math.ceil(d / b) if d else 0 for d, b in zip(self.shape, self.block))
    if tuple(self.scales.shape) != want_scales:
      raise ValueError(f"q.scales has shape {tuple(self.scales.shape)}; blocks {self.block} of shape "
                       f"{self.shape} need {want_scales}")
    if np.dtype(self.scales.dtype) != np.dtype(self.fmt.scale_format.code_dtype):
      raise ValueError(f"q.scales has dtype {self.scales.dtype}, expected {self.fmt.scale_format.code_dtype}")
    if (self.zero_point is None) == self.fmt.asymmetric:
      raise ValueError(f"q.zero_point does not match fmt.asymmetric={self.fmt.asymmetric}")
    if (self.tensor_scale is None) == self.fmt.tensor_scale:
      raise ValueError(f"q.tensor_scale does not match fmt.tensor_scale={self.fmt.tensor_scale}")

  def tree_flatten(self):
    return (self.data, self.scales, self.zero_point, self.tensor_scale), (self.fmt, self.shape, self.dtype,
                                                                          self.block)

  @classmethod
  def tree_unflatten(cls, aux: Any, leaves: Any) -> "QArray":
    return cls(*leaves, *aux)


jax.tree_util.register_pytree_node_class(QArray)
