"""Element and scale decoding with the few operations every kernel backend lowers.

``lpnum.decode`` looks small formats up in a table, a gather that neither Mosaic (TPU) nor Triton (GPU) lowers
inside a kernel. These functions compute the same values from the code's fields with integer shifts, masks,
selects and a bitcast, on int32 codes. They serve the Pallas kernels and the XLA path alike, so both dequantize
with the same arithmetic; the tests check them against ``lpnum.decode`` and ``lpnum.dequantize`` code by code.

A weight is ``(v - zero_point) * S * 2^element_exponent`` (times the per-tensor scale for NVFP4), rounded as
``lpnum.dequantize`` rounds it wherever the result is a normal float32; below that the hardware's flush of
subnormals applies (as it does to the dot product that consumes the weight anyway).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from lpnum.formats import BinaryFormat, FloatFormat, Format, IntFormat
from lpnum.qarray import QArray
from lpnum.scaled import ScaledFormat

_F32_BIAS = 127


def check_element(fmt: Format) -> None:
  """Raises ValueError unless the kernels can decode elements of ``fmt`` (at most 8 bits; int, binary, float)."""
  if fmt.bits > 8:
    raise ValueError(f"element format {fmt.name} has {fmt.bits} bits; the kernels take elements of at most 8 bits")
  if isinstance(fmt, FloatFormat):
    _check_float(fmt, "element format")
  elif not isinstance(fmt, IntFormat | BinaryFormat):
    raise ValueError(f"element format {fmt.name} is not supported by the kernels (integer, binary and float "
                     "formats are)")


def check_scale(fmt: ScaledFormat) -> None:
  """Raises ValueError unless the kernels can decode the scale codes of ``fmt``."""
  sf = fmt.scale_format
  if not isinstance(sf, FloatFormat) or (fmt.pow2 and not _pow2_only(sf)):
    raise ValueError(f"scale format {sf.name} is not supported by the kernels (float and E8M0-like scale formats "
                     "are)")
  if not fmt.pow2 and not _is_f32_like(sf) and not _is_bf16_like(sf):
    _check_float(sf, "scale format")


def element_values(fmt: Format, codes: jax.Array) -> jax.Array:
  """float32 values of int32 ``codes`` of an element format (bits above ``fmt.bits`` must be zero)."""
  if isinstance(fmt, BinaryFormat):
    return jnp.where((codes & 1) == 1, jnp.float32(-1), jnp.float32(1))
  if isinstance(fmt, IntFormat):
    if fmt.signed:
      shift = 32 - fmt.bits
      codes = (codes << shift) >> shift  # arithmetic shift: sign extension
      if fmt.narrow:
        codes = jnp.maximum(codes, -((1 << (fmt.bits - 1)) - 1))
    return codes.astype(jnp.float32)
  return _float_values(fmt, codes)


@dataclasses.dataclass(frozen=True)
class ScaleParts:
  """Decoded scales: ``value`` (general formats) or the power-of-two ``exponent`` with its NaN flags."""

  value: jax.Array | None = None
  exponent: jax.Array | None = None
  nan: jax.Array | None = None


def scale_parts(fmt: ScaledFormat, codes: jax.Array) -> ScaleParts:
  """The scales of ``codes`` of ``fmt.scale_format`` (uint8/uint16/uint32 as stored in the QArray)."""
  sf = fmt.scale_format
  if fmt.pow2:
    c = codes.astype(jnp.int32)
    m, nb = sf.mantissa_bits, sf.exponent_bits + sf.mantissa_bits
    mag = c & ((1 << nb) - 1)
    e = (mag >> m) - sf.bias
    is_nan, is_inf = sf.special_codes(jnp.zeros(c.shape, bool), mag, jnp)
    return ScaleParts(exponent=e + fmt.element_exponent, nan=is_nan | is_inf)
  if _is_f32_like(sf):
    value = jax.lax.bitcast_convert_type(codes.astype(jnp.uint32), jnp.float32)
  elif _is_bf16_like(sf):
    value = jax.lax.bitcast_convert_type(codes.astype(jnp.uint32) << 16, jnp.float32)
  else:
    value = _float_values(sf, codes.astype(jnp.int32))
  return ScaleParts(value=value)


def apply_scale(v: jax.Array, fmt: ScaledFormat, s: ScaleParts, zero: jax.Array | None = None,
                tensor: jax.Array | None = None) -> jax.Array:
  """``(v - zero) * S * 2^element_exponent (* tensor)``: the dequantized float32 weights (shapes broadcast)."""
  if zero is not None:
    v = v - zero.astype(jnp.float32)
  if s.exponent is not None:
    # 2^t as two normal float32 factors (t reaches -127 - |element_exponent|): exact while results are normal.
    t = s.exponent
    hi = jnp.clip(t, -126, 127)
    out = (v * _pow2(t - hi)) * _pow2(hi)
    return jnp.where(s.nan, jnp.float32(np.nan), out)
  out = v * s.value
  if tensor is not None:
    out = out * tensor
  if fmt.element_exponent:
    out = out * np.float32(2.0 ** fmt.element_exponent)
  return out


def _pow2(t: jax.Array) -> jax.Array:
  """2^t for int32 t in [-126, 127], built from its exponent field."""
  return jax.lax.bitcast_convert_type((t + _F32_BIAS) << 23, jnp.float32)


def _float_values(fmt: FloatFormat, c: jax.Array) -> jax.Array:
  m, nb = fmt.mantissa_bits, fmt.exponent_bits + fmt.mantissa_bits
  negative = ((c >> nb) & 1) == 1 if fmt.signed else jnp.zeros(c.shape, bool)
  mag = c & ((1 << nb) - 1)
  e_field = mag >> m
  m_field = mag & ((1 << m) - 1)
  normal = jax.lax.bitcast_convert_type(((e_field - fmt.bias + _F32_BIAS) << 23) | (m_field << (23 - m)),
                                        jnp.float32)
  if fmt.has_subnormals:
    sub = m_field.astype(jnp.float32) * np.float32(2.0 ** (1 - fmt.bias - m))
    normal = jnp.where(e_field == 0, sub, normal)
  value = jnp.where(negative, -normal, normal)
  is_nan, is_inf = fmt.special_codes(negative, mag, jnp)
  value = jnp.where(is_inf, jnp.where(negative, -jnp.inf, jnp.inf).astype(jnp.float32), value)
  return jnp.where(is_nan, jnp.float32(np.nan), value)


def _check_float(fmt: FloatFormat, what: str) -> None:
  lo = (1 if fmt.has_subnormals else 0) - fmt.bias
  hi = (1 << fmt.exponent_bits) - 1 - fmt.bias
  sub = 1 - fmt.bias - fmt.mantissa_bits
  if lo < -126 or hi > 127 or (fmt.has_subnormals and sub < -126):
    raise ValueError(f"{what} {fmt.name} has binades outside float32's normal range; the kernels decode formats "
                     "whose values are normal float32 numbers")


def _is_f32_like(fmt: FloatFormat) -> bool:
  return (fmt.exponent_bits, fmt.mantissa_bits, fmt.bias, fmt.signed) == (8, 23, 127, True)


def _is_bf16_like(fmt: FloatFormat) -> bool:
  return (fmt.exponent_bits, fmt.mantissa_bits, fmt.bias, fmt.signed) == (8, 7, 127, True)


def _pow2_only(fmt: FloatFormat) -> bool:
  return fmt.mantissa_bits == 0 and not fmt.has_subnormals


def int8_values(el, data: jax.Array, codes) -> jax.Array:
  """int8 values of integer elements: 8-bit codes are their own values (reinterpreted, no unpacking pass)."""
  if el.bits == 8 and el.signed and not el.narrow:
    return jax.lax.bitcast_convert_type(data, jnp.int8)
  return element_values(el, codes().astype(jnp.int32)).astype(jnp.int8)


def row_scales(xq: QArray) -> jax.Array:
  """One float32 scale per row of x (per-tensor scales broadcast)."""
  s = apply_scale(jnp.float32(1), xq.fmt, scale_parts(xq.fmt, xq.scales), None, xq.tensor_scale)
  return jnp.broadcast_to(s[..., :1], (*xq.shape[:-1], 1))
