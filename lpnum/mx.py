"""OCP Microscaling (MX v1.0) formats: blocks of 32 elements sharing one E8M0 power-of-two scale.

The presets are :class:`~lpnum.scaled.ScaledFormat` values, not a separate code path:

==============  ===================  =====  ==========================================
name            element              emax   element max
==============  ===================  =====  ==========================================
mxfp8_e4m3      float8_e4m3fn        8      448
mxfp8_e5m2      float8_e5m2          15     57344
mxfp6_e3m2      float6_e3m2fn        4      28
mxfp6_e2m3      float6_e2m3fn        2      7.5
mxfp4_e2m1      float4_e2m1fn        2      6
mxint8          int8, unit 2^-6      0      127/64 (symmetric: -128 is never produced)
==============  ===================  =====  ==========================================

The shared exponent follows ``scale_rule`` (``floor`` by default, the spec's rule; see :mod:`lpnum.scaled`).
Choices where the spec leaves one: an all-zero block gets the smallest scale (E8M0 code 0, 2^-127); a block
holding NaN or +-inf gets the NaN scale code 0xFF, its elements encoded as if the scale were 1, and dequantizes to
NaN; MXINT8 saturates to +-127 (symmetric, so that negation is exact). Elements round to nearest even (or any
lpnum rounding mode) and saturate to the element's max.
"""

from __future__ import annotations

import jax
from jax.typing import ArrayLike

from lpnum import blocks
from lpnum.formats import int_format
from lpnum.qarray import QArray
from lpnum.scaled import ScaledFormat, quantize_scaled

__all__ = ["NAMES", "format", "quantize"]

_ELEMENTS = {
    "mxfp8_e4m3": ("float8_e4m3fn", 0),
    "mxfp8_e5m2": ("float8_e5m2", 0),
    "mxfp6_e3m2": ("float6_e3m2fn", 0),
    "mxfp6_e2m3": ("float6_e2m3fn", 0),
    "mxfp4_e2m1": ("float4_e2m1fn", 0),
    "mxint8": (int_format(8, narrow=True), -6),
}

#: The MX preset names.
NAMES: tuple[str, ...] = tuple(_ELEMENTS)


def format(name: str, *, axis: int = -1, scale_rule: str = "floor", block_size: int = 32) -> ScaledFormat:  # noqa: A001
  """The ScaledFormat of an MX preset (or ``nvfp4``) along ``axis``.

  Example:
    >>> import lpnum
    >>> lpnum.mx.format("mxfp4_e2m1").emax
    2
  """
  if name == "nvfp4":
    from lpnum import nvfp4

    return nvfp4.format(axis=axis)
  if name not in _ELEMENTS:
    raise ValueError(f"name={name!r}; expected one of {list(NAMES)} or 'nvfp4'")
  element, unit = _ELEMENTS[name]
  return ScaledFormat(element, blocks.per_block(block_size, axis), "float8_e8m0fnu", scale_rule,
                      element_exponent=unit, name=name if block_size == 32 else f"{name}_b{block_size}")


def quantize(x: ArrayLike, name: str, axis: int = -1, scale_rule: str = "floor", *, block_size: int = 32,
             rounding: str = "nearest_even", key: jax.Array | None = None, pad: bool = False) -> QArray:
  """Quantizes ``x`` to the MX format ``name`` in blocks of 32 along ``axis``.

  Example:
    >>> import jax.numpy as jnp, lpnum
    >>> q = lpnum.mx.quantize(jnp.linspace(-1, 1, 64).reshape(2, 32), "mxfp8_e4m3")
    >>> q.scale_codes.tolist(), q.element_codes.shape
    ([[119], [119]], (2, 32))
  """
  return quantize_scaled(x, format(name, axis=axis, scale_rule=scale_rule, block_size=block_size),
                         rounding=rounding, key=key, pad=pad)
