"""The IEEE carrier floats (float32, float64, float16, bfloat16) that lpnum computes in, described by their fields.

XLA on the CPU flushes subnormal operands of float arithmetic to zero, so lpnum never does float arithmetic
on values that may be subnormal: it reads and writes fields of the bit pattern with integer operations, through
the views defined here.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["Carrier", "F16", "F32", "F64", "BF16", "INPUT_CARRIERS", "carrier_for", "pattern", "float32_odd",
           "sticky_in_float32"]


@dataclasses.dataclass(frozen=True)
class Carrier:
  """An IEEE binary float used as the working type, described by its fields."""

  dtype: np.dtype
  utype: np.dtype
  mantissa_bits: int
  exponent_bits: int

  @property
  def width(self) -> int:
    return 1 + self.exponent_bits + self.mantissa_bits

  @property
  def bias(self) -> int:
    return (1 << (self.exponent_bits - 1)) - 1

  @property
  def exp_all_ones(self) -> int:
    return (1 << self.exponent_bits) - 1

  @property
  def abs_mask(self) -> int:
    return (1 << (self.width - 1)) - 1

  @property
  def mant_mask(self) -> int:
    return (1 << self.mantissa_bits) - 1

  def u(self, value: int) -> np.generic:
    """A constant of the carrier's unsigned type."""
    return self.utype.type(value)

  def pow2_bits(self, e: jax.Array | int) -> jax.Array:
    """Bit pattern of 2^e, for ``1 - bias - mantissa_bits <= e <= bias`` (subnormal or normal)."""
    e = jnp.asarray(e, jnp.int32)
    normal = ((e + self.bias).astype(self.utype)) << self.u(self.mantissa_bits)
    sub_shift = jnp.clip(e + self.bias - 1 + self.mantissa_bits, 0, self.width - 1)
    sub = self.u(1) << sub_shift.astype(self.utype)
    return jnp.where(e >= 1 - self.bias, normal, sub)

  def split(self, x: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Returns ``(negative, abs_bits, biased_exponent)`` of a carrier float array."""
    bits = jax.lax.bitcast_convert_type(x, self.utype)
    negative = (bits >> self.u(self.width - 1)) != 0
    a = bits & self.u(self.abs_mask)
    return negative, a, (a >> self.u(self.mantissa_bits)).astype(jnp.int32)

  def exponent(self, a: jax.Array, biased: jax.Array) -> jax.Array:
    """floor(log2(value)) from the bits (exact for subnormals; very negative for zero)."""
    msb = (self.width - 1) - jax.lax.clz(a).astype(jnp.int32)
    sub_e = msb - (self.bias - 1 + self.mantissa_bits)
    return jnp.where(biased > 0, biased - self.bias, sub_e)

  def join(self, negative: jax.Array, a: jax.Array) -> jax.Array:
    sign = jnp.where(negative, self.u(1 << (self.width - 1)), self.u(0))
    return jax.lax.bitcast_convert_type(a | sign, self.dtype)

  @property
  def nan_bits(self) -> np.generic:
    return self.u((self.exp_all_ones << self.mantissa_bits) | (1 << (self.mantissa_bits - 1)))

  @property
  def inf_bits(self) -> np.generic:
    return self.u(self.exp_all_ones << self.mantissa_bits)


F32 = Carrier(np.dtype(np.float32), np.dtype(np.uint32), 23, 8)
F64 = Carrier(np.dtype(np.float64), np.dtype(np.uint64), 52, 11)
F16 = Carrier(np.dtype(np.float16), np.dtype(np.uint16), 10, 5)
BF16 = Carrier(np.dtype(jnp.bfloat16), np.dtype(np.uint16), 7, 8)

INPUT_CARRIERS = {F32.dtype: F32, F64.dtype: F64, F16.dtype: F16, BF16.dtype: BF16}


def carrier_for(dtype: np.dtype) -> Carrier:
  """The carrier lpnum rounds in for an input dtype: float64 for float64, float32 otherwise (exact upcast)."""
  return F64 if np.dtype(dtype) == F64.dtype else F32


def pattern(value: float, c: Carrier) -> np.generic:
  """The bit pattern of the number ``value`` in carrier ``c`` (rounded to ``c.dtype`` first)."""
  return np.array(value, c.dtype).view(c.utype)[()]


def float32_odd(x: np.ndarray) -> np.ndarray:
  """float64 values rounded to float32 *to odd*, on the host: exact values stay; the others are truncated toward
  zero and get an odd significand (the lowest bit set), so the float32 value records that the float64 one was
  not exact. Magnitudes beyond float32's range become its largest finite value (odd), nonzero magnitudes below
  its smallest subnormal that subnormal (odd); NaN stays NaN and infinities stay infinite.

  Rounding the result once more, to a format whose rounding breakpoints are float32 values with an even
  significand (:func:`sticky_in_float32`), gives the same value as rounding the float64 input directly: the
  classic way to round once through a narrower intermediate (Boldo and Melquiond 2008).
  """
  x = np.asarray(x, np.float64)
  with np.errstate(over="ignore", invalid="ignore"):
    near = x.astype(np.float32)
    back = near.astype(np.float64)
  finite = np.isfinite(x)
  inexact = finite & (back != x)
  # Toward zero: step the nearest float32 back toward zero where it overshot |x| (inf included).
  over = inexact & (np.abs(back) > np.abs(x))
  bits = near.view(np.uint32).copy()
  bits = np.where(over, bits - np.uint32(1), bits)  # the next float32 toward zero (sign-magnitude patterns)
  bits = np.where(inexact, bits | np.uint32(1), bits)
  out = bits.view(np.float32)
  return np.where(np.isnan(x), np.float32(np.nan), out).astype(np.float32)


def sticky_in_float32(breakpoints: np.ndarray) -> bool:
  """Whether every rounding breakpoint (float64 values: a format's values and the points where rounding between
  them changes direction) is a float32 value with an even significand, so that :func:`float32_odd` keeps every
  value on its side of every breakpoint."""
  b = np.asarray(breakpoints, np.float64)
  b = b[np.isfinite(b)]
  with np.errstate(over="ignore"):
    f = b.astype(np.float32)
  if not np.array_equal(f.astype(np.float64), b):
    return False
  return not (np.abs(f).view(np.uint32) & np.uint32(1)).any()
