"""Exact float arithmetic from integer operations on carrier bit patterns.

XLA on the CPU flushes subnormal operands and results of float arithmetic to zero. The functions here round
once, subnormals included: composing a float from a sign, an exponent and a significand, ``ldexp``, products
of low-precision values, and scaling by powers of two.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from lpnum.carrier import F32, Carrier
from lpnum.rounding import Rounding, round_shift

__all__ = ["compose", "normalize", "ldexp", "multiply", "Pow2", "pow2_factors", "plain_for_rounding", "plain_exact",
           "scale_for_rounding", "scale_exact"]


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
  wide = np.promote_types(significand.dtype, target.utype)
  sig = significand.astype(wide)
  e = exponent.astype(jnp.int32)
  min_e = 1 - target.bias
  # Quantum of the result: 2^(max(e, min_e) - M). The significand's unit is 2^(e - sig_bits).
  drop = jnp.maximum(e, min_e) - target.mantissa_bits - (e - sig_bits)
  left = jnp.clip(-drop, 0, wide.itemsize * 8 - 1).astype(wide)
  r = round_shift(sig << left, jnp.maximum(drop, 0), Rounding.NEAREST_EVEN)
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


def _pow2(e: jax.Array) -> jax.Array:
  """2^e as float32, for integer ``-126 <= e <= 127``."""
  return jax.lax.bitcast_convert_type(((e + 127) << 23).astype(jnp.uint32), jnp.float32)


class Pow2(NamedTuple):
  """Float factors for scaling by 2^k, computed once per block by :func:`pow2_factors` (XLA would otherwise
  repeat the integer work for every element). The plain scaling needs only ``p``; :meth:`exact` adds the factors
  of the exact paths."""

  k: jax.Array
  p: jax.Array  # 2^k where that is a normal float32 (-126 <= k <= 127), else 0
  p1: jax.Array | None = None  # p1 * p2 = 2^k, both normal
  p2: jax.Array | None = None
  sub_in: jax.Array | None = None  # 2^(k - 149) where k >= 24, else 0: scales a subnormal input's integer significand
  sub_out: jax.Array | None = None  # 2^(k + 149) for k <= -22: gives a subnormal result's integer units

  def exact(self) -> "Pow2":
    """These factors with those of :func:`scale_for_rounding` and :func:`scale_exact`."""
    if self.p1 is not None:
      return self
    k, half = self.k, self.k >> 1
    sub_in = jnp.where(k >= 24, _pow2(jnp.clip(k, 24, 252) - 149), np.float32(0))
    return self._replace(p1=_pow2(half), p2=_pow2(k - half), sub_in=sub_in,
                         sub_out=_pow2(jnp.clip(k, -149, -22) + 149))


def pow2_factors(k: jax.Array) -> Pow2:
  """The plain factors of 2^k, ``|k| <= 252`` (:meth:`Pow2.exact` adds the others)."""
  k = jnp.asarray(k, jnp.int32)
  return Pow2(k, jnp.where((k >= -126) & (k <= 127), _pow2(jnp.clip(k, -126, 127)), np.float32(0)))


def plain_for_rounding(f: Pow2) -> jax.Array:
  """Whether ``x * f.p`` may stand for :func:`scale_for_rounding` everywhere (a bool scalar).

  It may where ``2^k`` is a normal float32 and ``k < 24``: the products then agree wherever either is at least
  2^-126 (exact), and are both below 2^-102 elsewhere (a subnormal ``x`` included), which a rounding to nearest
  to a format whose half smallest step is above 2^-102 takes to the zero of ``x``'s sign either way.
  """
  return jnp.all((f.p != 0) & (f.k < 24))


def plain_exact(f: Pow2, smallest: float) -> jax.Array:
  """Whether ``v * f.p`` equals :func:`scale_exact` for every ``v`` that is zero, inf, NaN or at least the power
  of two ``smallest`` in magnitude (a bool scalar): it does where every such nonzero product is a normal float32.
  """
  return jnp.all(f.p * np.float32(smallest) >= np.float32(2.0 ** -126))


def scale_for_rounding(x: jax.Array, f: Pow2) -> jax.Array:
  """``x * 2^k`` (float32) for a rounding that follows; ``f = pow2_factors(k)`` (its :meth:`Pow2.exact`
  factors are derived here where ``f`` lacks them).

  Exact wherever ``|x * 2^k| >= 2^-102``; smaller results may be rounded or flushed to a zero of their sign,
  which is harmless before rounding to a format whose half smallest step is above 2^-102. Subnormal inputs are
  read from their bits (XLA on the CPU would flush them): ``x = a * 2^-149`` with ``a < 2^23`` reaches 2^-102
  only if ``k >= 24``.
  """
  f = f.exact()
  bits = jax.lax.bitcast_convert_type(x, jnp.uint32)
  a = bits & np.uint32(0x7FFFFFFF)
  sub = jax.lax.bitcast_convert_type(
      jax.lax.bitcast_convert_type(a.astype(jnp.float32) * f.sub_in, jnp.uint32) | (bits ^ a), jnp.float32)
  return jnp.where(a < np.uint32(1 << 23), sub, (x * f.p1) * f.p2)


def scale_exact(v: jax.Array, f: Pow2, target: Carrier = F32) -> jax.Array:
  """``v * 2^k`` rounded once (nearest even) into ``target``, subnormal results included; ``f =
  pow2_factors(k)``.

  ``v`` is float32 and zero, inf, NaN or at least 2^-100 in magnitude (values of a scaled format's elements).
  Two float multiplications where the result is normal; below 2^-126 (only for ``k < -26``) the subnormal's bit
  pattern is ``|v| * 2^(k + 149)`` rounded to an integer.
  """
  f = f.exact()
  y = (v * f.p1) * f.p2
  units = jnp.minimum(jnp.round(jnp.abs(v) * f.sub_out), np.float32(1 << 23))
  sign = jax.lax.bitcast_convert_type(v, jnp.uint32) & np.uint32(0x80000000)
  sub = jax.lax.bitcast_convert_type(units.astype(jnp.uint32) | sign, jnp.float32)
  y = jnp.where((jnp.abs(y) < np.float32(2.0 ** -126)) & (v != 0), sub, y)
  return y if target is F32 else y.astype(target.dtype)
