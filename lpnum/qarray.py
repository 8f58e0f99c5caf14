"""QArray: the one representation of a quantized tensor that kernels and layers consume.

A QArray is a pytree whose leaves are arrays (packed element codes, scale codes, zero points, the per-tensor
scale) and whose static part is the format and the original shape, dtype and block shape. It passes through
``jax.jit``, ``device_put`` and sharding like any pytree, and serializes with flax (``flax.serialization``, once
:mod:`lpnum.nn` is imported) or orbax as its leaves together with its description (:meth:`QArray.describe`,
:mod:`lpnum.description`), so that it cannot be restored into a QArray of another format.

Layout: ``data`` holds the element codes of the original tensor packed along its last axis
(:mod:`lpnum.packing`); ``scales`` has one code per block, of shape ``ceil(shape / block)`` per axis.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import TYPE_CHECKING, Any

import jax
import numpy as np

from lpnum import description, packing

if TYPE_CHECKING:
  from lpnum.scaled.format import ScaledFormat

__all__ = ["QArray", "LAYOUT_VERSION"]

#: The version of the QArray layout (codes packed along the last axis, one scale per block); in every description.
LAYOUT_VERSION = 1

_FIELDS = ("data", "scales", "zero_point", "tensor_scale")


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
    checkpoint_tag: the empty pytree child whose key carries the description's fingerprint
      (:mod:`lpnum.description`); None, but for the placeholders orbax puts there while it maps over a tree.
  """

  data: jax.Array
  scales: jax.Array
  zero_point: jax.Array | None
  tensor_scale: jax.Array | None
  fmt: ScaledFormat
  shape: tuple[int, ...]
  dtype: np.dtype
  block: tuple[int, ...]
  checkpoint_tag: Any = dataclasses.field(default=None, repr=False, compare=False)

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

  def describe(self) -> dict:
    """What the codes mean, as JSON-able data: type, layout version, format (:meth:`ScaledFormat.describe`),
    shape, dtype and block (see :mod:`lpnum.description`).

    Example:
      >>> import jax.numpy as jnp, lpnum
      >>> d = lpnum.quantize_scaled(jnp.ones((2, 32)), lpnum.mx.format("mxfp4_e2m1")).describe()
      >>> d["type"], d["layout_version"], d["format"]["name"], d["shape"], d["dtype"], d["block"]
      ('QArray', 1, 'mxfp4_e2m1', [2, 32], 'float32', [1, 32])
    """
    return {"type": "QArray", "layout_version": LAYOUT_VERSION, "format": self.fmt.describe(),
            "shape": list(self.shape), "dtype": np.dtype(self.dtype).name, "block": list(self.block)}

  def check(self) -> None:
    """Raises ValueError if the leaves or the static metadata are inconsistent (e.g. after a bad restore).

    Shapes and dtypes are checked always (they are static, also under ``jax.jit``); the tensor scale's value
    (finite and positive) only when it is a concrete array, not a tracer.
    """
    shape, block, name = self.shape, self.block, self.fmt.name
    if not isinstance(shape, tuple) or any(isinstance(d, bool) or not isinstance(d, int) or d < 0 for d in shape):
      raise ValueError(f"q.shape={shape!r} must be a tuple of non-negative ints")
    if np.dtype(self.dtype) not in (np.float32, np.dtype("bfloat16"), np.float16):
      raise ValueError(f"q.dtype={self.dtype}; the original dtype is float32, bfloat16 or float16")
    if (not isinstance(block, tuple) or len(block) != len(shape)
        or any(isinstance(b, bool) or not isinstance(b, int) or b < 1 for b in block)):
      raise ValueError(f"q.block={block!r} must be {len(shape)} positive ints, one per axis of shape {shape}")
    want_block = self.fmt.granularity.block_shape(shape)
    if block != want_block:
      raise ValueError(f"q.block={block} is not the block of {self.fmt.granularity} over shape {shape}: "
                       f"{want_block}")
    n = shape[-1] if shape else 1
    want_data = (*shape[:-1], packing.packed_length(n, self.fmt.element.bits))
    _check_leaf("q.data", self.data, want_data, np.uint8, f"a {name} array of shape {shape}")
    want_scales = tuple(math.ceil(d / b) if d else 0 for d, b in zip(shape, block))
    _check_leaf("q.scales", self.scales, want_scales, self.fmt.scale_format.code_dtype,
                f"blocks {block} of shape {shape} in {name}")
    if (self.zero_point is None) == self.fmt.asymmetric:
      raise ValueError(f"q.zero_point is {'None' if self.zero_point is None else 'given'}; fmt.asymmetric="
                       f"{self.fmt.asymmetric} needs {'one per block' if self.fmt.asymmetric else 'None'}")
    if self.zero_point is not None:
      _check_leaf("q.zero_point", self.zero_point, want_scales, np.int32, f"one per block of {name}")
    if (self.tensor_scale is None) == self.fmt.tensor_scale:
      raise ValueError(f"q.tensor_scale is {'None' if self.tensor_scale is None else 'given'}; fmt.tensor_scale="
                       f"{self.fmt.tensor_scale} needs {'a float32 scalar' if self.fmt.tensor_scale else 'None'}")
    if self.tensor_scale is not None:
      _check_leaf("q.tensor_scale", self.tensor_scale, (), np.float32, f"the per-tensor scale of {name}")
      if isinstance(self.tensor_scale, np.ndarray | np.generic) or (
          isinstance(self.tensor_scale, jax.Array) and not isinstance(self.tensor_scale, jax.core.Tracer)):
        value = float(np.asarray(self.tensor_scale))
        if value <= 0:  # inf and NaN come from tensors that held them (their blocks decode to NaN)
          raise ValueError(f"q.tensor_scale={value}; a per-tensor scale is positive (inf or NaN where the tensor "
                           "held them)")

  def tree_flatten(self):
    return (self.data, self.scales, self.zero_point, self.tensor_scale, self.checkpoint_tag), (
        self.fmt, self.shape, self.dtype, self.block)

  def tree_flatten_with_keys(self):
    children, aux = self.tree_flatten()
    keys = (*map(jax.tree_util.GetAttrKey, _FIELDS), _tag(*aux))
    return list(zip(keys, children)), aux

  @classmethod
  def tree_unflatten(cls, aux: Any, leaves: Any) -> "QArray":
    *arrays, slot = leaves
    return cls(*arrays, *aux, slot)


@functools.lru_cache(maxsize=1024)
def _tag(fmt: ScaledFormat, shape: tuple[int, ...], dtype: np.dtype, block: tuple[int, ...]):
  return description.tag(QArray(None, None, None, None, fmt, shape, dtype, block).describe())


def _check_leaf(name: str, leaf: Any, shape: tuple[int, ...], dtype: Any, what: str) -> None:
  got_shape, got_dtype = tuple(np.shape(leaf)), np.dtype(leaf.dtype) if hasattr(leaf, "dtype") else None
  if got_dtype != np.dtype(dtype):
    raise ValueError(f"{name} has dtype {got_dtype}; {what} needs {np.dtype(dtype)}")
  if got_shape != tuple(shape):
    raise ValueError(f"{name} has shape {got_shape}; {what} needs {tuple(shape)}")


jax.tree_util.register_pytree_with_keys_class(QArray)
