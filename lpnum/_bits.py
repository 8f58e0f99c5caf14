"""Bit-level views of the IEEE carrier floats (float32, float64) that lpnum computes in.

XLA on the CPU flushes subnormal operands of float arithmetic to zero, so lpnum never does float arithmetic
on values that may be subnormal: it reads and writes fields of the bit pattern with integer operations.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np


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


def compose(
    negative: jax.Array,
    exponent: jax.Array,
    significand: jax.Array,
    sig_bits: int,
    target: Carrier,
) -> jax.Array:
  """Rounds (nearest even) ``(-1)^negative * significand * 2^(exponent - sig_bits)`` into ``target``.

  ``significand`` is an unsigned array with its leading one at bit ``sig_bits`` (or zero). The result handles
  subnormals, overflow to inf and underflow to zero of the target, with integer operations only.
  """
  from lpnum import _rounding  # local import: _rounding does not depend on this module

  wide = np.promote_types(significand.dtype, target.utype)
  sig = significand.astype(wide)
  e = exponent.astype(jnp.int32)
  min_e = 1 - target.bias
  # Quantum of the result: 2^(max(e, min_e) - M). The significand's unit is 2^(e - sig_bits).
  drop = jnp.maximum(e, min_e) - target.mantissa_bits - (e - sig_bits)
  left = jnp.clip(-drop, 0, wide.itemsize * 8 - 1).astype(wide)
  r = _rounding.round_shift(sig << left, jnp.maximum(drop, 0), _rounding.Rounding.NEAREST_EVEN)
  # Normals: r = 2^M + mantissa (2^(M+1) after a carry), so adding (biased exponent - 1) << M gives the bits
  # and carries into the exponent by themselves. Subnormals: the field is 0 and r is the mantissa.
  field = jnp.where(e >= min_e, e + target.bias - 1, 0)
  bits = (field.astype(target.utype) << target.u(target.mantissa_bits)) + r.astype(target.utype)
  overflow = (e > target.bias) | ((bits >> target.u(target.mantissa_bits)) >= target.u(target.exp_all_ones))
  bits = jnp.where(sig == 0, target.u(0), jnp.where(overflow, target.inf_bits, bits))
  return target.join(negative, bits)


def normalize(c: Carrier, x: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
  """Exact ``(negative, exponent, significand, abs_bits)`` of a carrier float, subnormals included.

  The significand has its leading one at bit ``mantissa_bits`` (0 for zero), so that
  ``|x| = significand * 2^(exponent - mantissa_bits)``.
  """
  negative, a, biased = c.split(x)
  e = c.exponent(a, biased)
  lead = (c.width - 1) - jax.lax.clz(a).astype(jnp.int32)
  up = jnp.clip(c.mantissa_bits - lead, 0, c.width - 1).astype(c.utype)
  sig = jnp.where(biased > 0, (a & c.u(c.mant_mask)) | c.u(1 << c.mantissa_bits), a << up)
  return negative, e, sig, a


def ldexp(x: jax.Array, k: jax.Array | int, c: Carrier = F32) -> jax.Array:
  """``x * 2^k`` with integer operations: exact unless the result leaves the normal range, where it is rounded
  to nearest even (subnormal) or becomes inf; NaN and inf pass through.

  Float multiplication cannot do this on the CPU: XLA flushes subnormal operands and results to zero.
  """
  negative, e, sig, a = normalize(c, x)
  y = compose(negative, e + jnp.asarray(k, jnp.int32), sig, c.mantissa_bits, c)
  return jnp.where(a >= c.inf_bits, x, y)


def multiply(x: jax.Array, y: jax.Array, x_precision: int, target: Carrier = F32) -> jax.Array:
  """``x * y`` of two float32 arrays, rounded once (nearest even) into ``target``, subnormals included.

  ``x`` must have at most ``x_precision <= 8`` significant bits (e.g. a value of an 8-bit format), so that the
  product of the significands is exact in 32 bits. NaN and inf propagate as in IEEE multiplication.
  """
  if not 1 <= x_precision <= 8:
    raise ValueError(f"x_precision={x_precision} must be in [1, 8]")
  nx, ex, sx, ax = normalize(F32, x)
  ny, ey, sy, ay = normalize(F32, y)
  top = x_precision + 23  # the product of a p-bit and a 24-bit significand has its leading one at top - 1 or top
  p = (sx >> np.uint32(24 - x_precision)) * sy
  carry = p >= np.uint32(1 << top)
  p = jnp.where(carry, p, p << np.uint32(1))
  out = compose(nx ^ ny, ex + ey + carry.astype(jnp.int32), p, top, target)
  special = (ax >= F32.inf_bits) | (ay >= F32.inf_bits)
  ieee = (x.astype(jnp.float32) * y.astype(jnp.float32)).astype(target.dtype)
  return jnp.where(special, ieee, out)


def _pow2_factors(k: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Two normal float32 powers of two whose product is 2^k, for |k| <= 252."""
  k = jnp.asarray(k, jnp.int32)
  half = k >> 1
  make = lambda e: jax.lax.bitcast_convert_type(((e + 127) << 23).astype(jnp.uint32), jnp.float32)
  return make(half), make(k - half)


def scale_for_rounding(x: jax.Array, k: jax.Array, floor_exponent: int) -> jax.Array:
  """``x * 2^k`` (float32) for a rounding that follows: exact wherever ``|x * 2^k| >= 2^floor_exponent``.

  Below ``2^floor_exponent`` (which must be at least 2^-102) results may be rounded or flushed to zero, with
  their sign: harmless before rounding to a format whose half smallest step is above that. Subnormal inputs
  are read from their bits (XLA on the CPU would flush them). Two float multiplications per element.
  """
  if floor_exponent < -102:
    raise ValueError(f"floor_exponent={floor_exponent} must be at least -102")
  k = jnp.asarray(k, jnp.int32)
  p1, p2 = _pow2_factors(k)
  normal = (x * p1) * p2
  bits = jax.lax.bitcast_convert_type(x, jnp.uint32)
  a = bits & np.uint32(0x7FFFFFFF)
  # A subnormal x is a * 2^-149 with a < 2^23; scaled, it reaches 2^-102 only if k >= 24.
  c = jnp.where(k >= 24, jax.lax.bitcast_convert_type(((jnp.clip(k, 24, 150) - 149 + 127) << 23)
                                                       .astype(jnp.uint32), jnp.float32), jnp.float32(0))
  sub = a.astype(jnp.float32) * c
  sub = jnp.where(bits >> np.uint32(31) == 1, -sub, sub)
  return jnp.where((a >> np.uint32(23)) == 0, sub, normal)


def ldexp_of_normal(v: jax.Array, k: jax.Array, target: Carrier = F32) -> jax.Array:
  """``v * 2^k`` rounded once (nearest even) into ``target``, subnormal results included.

  ``v`` is float32 and zero, inf, NaN or at least 2^-100 in magnitude (values of a scaled format's elements).
  Two float multiplications where the result is normal; where it falls below 2^-126, the subnormal's bit
  pattern is ``|v| * 2^(k + 149)`` rounded to an integer, so nothing is flushed.
  """
  k = jnp.asarray(k, jnp.int32)
  p1, p2 = _pow2_factors(k)
  y = (v * p1) * p2
  # Below 2^-126 with |v| >= 2^-100 needs k < -26, so 2^(k + 149) is a normal float32.
  c = jax.lax.bitcast_convert_type(((jnp.clip(k, -149, -22) + 149 + 127) << 23).astype(jnp.uint32), jnp.float32)
  units = jnp.minimum(jnp.round(jnp.abs(v) * c), jnp.float32(1 << 23))
  sub = jax.lax.bitcast_convert_type(units.astype(jnp.uint32), jnp.float32)
  sub = jnp.where(v < 0, -sub, sub)
  y = jnp.where((jnp.abs(y) < jnp.float32(2.0 ** -126)) & (v != 0), sub, y)
  return y if target is F32 else y.astype(target.dtype)
