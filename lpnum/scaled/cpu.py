"""The native CPU face of :func:`lpnum.dequantize` called eagerly (``cpu_dequantize.cc``, through XLA's FFI).

XLA's CPU backend decodes block-scaled codes through a value-table gather and a multiply per element, slower than
writing the float32 output. The native face reads the packed codes once and looks every value up in a table that
is computed here, by the same functions as the XLA face (:func:`~lpnum.scaled.scales.scales_from_codes`,
:func:`~lpnum.scaled.elements.apply_scale`), for every pair of a scale code and an element code; so it returns
the XLA face's bits by construction. Formats with float32 scale values and integer elements (int4 or int8 per
channel or group, with or without zero points) multiply instead, with the XLA face's IEEE operations.

It takes float32 output of 4- and 8-bit elements whose blocks tile the array's 2-D view exactly (no padding, no
block spanning leading axes); :func:`takes` says which. Everything else stays on the XLA face.
"""

from __future__ import annotations

import math
import pathlib

import jax
import jax.numpy as jnp
import numpy as np

from lpnum import native
from lpnum.carrier import F32
from lpnum.formats import FloatFormat, IntFormat
from lpnum.qarray import QArray
from lpnum.scaled.elements import apply_scale
from lpnum.scaled.scales import decode_f32, scales_from_codes

__all__ = ["TARGET", "available", "takes", "dequantize"]

#: The FFI target name of the kernel.
TARGET = "lpnum_dequantize"

_SOURCE = pathlib.Path(__file__).with_name("cpu_dequantize.cc")


def available() -> bool:
  """True when the native dequantize is built and registered (builds it on first call; False where native code is
  off or cannot be built: see :mod:`lpnum.native`)."""
  return native.load(_SOURCE, {TARGET: "LpnumDequantize"}) is not None


def _view(q: QArray) -> tuple[int, int, int, int] | None:
  """``(rows, cols, block_rows, block_cols)`` of ``q``'s 2-D view, or None when its blocks do not tile it."""
  shape, block = q.shape, q.block
  if not shape or any(b != 1 for b in block[:-2]) or any(d % b for d, b in zip(shape, block)):
    return None
  rows = math.prod(shape[:-1])
  return rows, shape[-1], block[-2] if len(block) > 1 else 1, block[-1]


def _by_code(q: QArray) -> bool:
  """Whether each value is a table entry of (scale code, element code): uint8 scale codes, no zero points."""
  return np.dtype(q.scales.dtype) == np.uint8 and q.zero_point is None


def _by_value(q: QArray) -> bool:
  """Whether each value is ``(v - zero) * scale`` in float32 (integer elements, general scales, no tensor scale)."""
  fmt = q.fmt
  return (isinstance(fmt.element, IntFormat) and not fmt.pow2 and q.tensor_scale is None
          and fmt.element_exponent == 0)


def takes(q: QArray, dtype: np.dtype) -> bool:
  """Whether the native face computes ``lpnum.dequantize(q, dtype)`` here: float32 output, 4- or 8-bit elements
  whose blocks tile the 2-D view, values by code or by value (see the module), and the kernel built."""
  return (np.dtype(dtype) == np.float32 and q.fmt.element.bits in (4, 8) and math.prod(q.shape) > 0
          and _view(q) is not None and (_by_code(q) or _by_value(q)) and available())


def dequantize(q: QArray) -> jax.Array:
  """``lpnum.dequantize(q)`` (float32) by the native kernel; ``q`` must be one :func:`takes` accepts."""
  fmt = q.fmt
  rows, cols, block_rows, block_cols = _view(q)
  bits = fmt.element.bits
  codes = q.data.reshape(rows, -1)
  scale_shape = (rows // block_rows, cols // block_cols)
  elements = decode_f32(fmt.element, jnp.arange(1 << bits, dtype=jnp.uint8))
  zero = jnp.zeros((0,), jnp.float32)
  if _by_code(q):
    s = scales_from_codes(fmt, jnp.arange(256, dtype=jnp.uint8)[:, None], None, q.tensor_scale).with_factors(fmt)
    table = apply_scale(elements[None, :], s, fmt, F32)
    scales = q.scales.reshape(scale_shape)
  else:
    table = jnp.zeros((0,), jnp.float32)
    scales = decode_f32(fmt.scale_format, q.scales).reshape(scale_shape)
    if q.zero_point is not None:
      zero = q.zero_point.astype(jnp.float32).reshape(scale_shape)
  # 8-bit float elements: the kernel may decode them by arithmetic on these fields (it checks that against
  # ``elements`` and the table before it does).
  el = fmt.element
  mantissa_bits, bias = (el.mantissa_bits, el.bias) if isinstance(el, FloatFormat) and bits == 8 else (0, 0)
  call = jax.ffi.ffi_call(TARGET, jax.ShapeDtypeStruct((rows, cols), jnp.float32), vmap_method="sequential")
  out = call(codes, scales, elements, table, zero, bits=np.int32(bits), block_rows=np.int32(block_rows),
             block_cols=np.int32(block_cols), mantissa_bits=np.int32(mantissa_bits), bias=np.int32(bias))
  return out.reshape(q.shape)
