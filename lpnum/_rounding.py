"""Rounding: the one place in lpnum that decides which way a value goes.

Every format reduces its rounding problem to the same question: an unsigned integer ``v`` (a bit pattern,
a significand or a posit bit string, always monotone in the magnitude it encodes) must lose its ``drop`` low
bits. :func:`round_shift` answers it for every mode and returns ``v >> drop`` rounded. Floats, integers,
posits and power-of-two formats all call it; no family owns a round-to-nearest-even.

Rounding modes act on the magnitude, with the sign of the value passed in ``negative`` (so ``up`` rounds the
magnitude up only for positive values). Overflow modes are decided by each family after rounding.
"""

from __future__ import annotations

import enum

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["Rounding", "Overflow", "round_shift", "round_integral", "round_below_unit", "random_bits",
           "away_from_zero"]


class _ParsedEnum(enum.Enum):
  """An enum whose public spelling is its value string, parsed once at the API edge."""

  @classmethod
  def parse(cls, value: "str | _ParsedEnum", argname: str | None = None) -> "_ParsedEnum":
    if isinstance(value, cls):
      return value
    names = [m.value for m in cls]
    if isinstance(value, str):
      for member in cls:
        if member.value == value:
          return member
    arg = argname or cls.__name__.lower()
    raise ValueError(f"{arg}={value!r}; expected one of {names}")


class Rounding(_ParsedEnum):
  """Rounding modes.

  * ``nearest_even``: to nearest, ties to the even code (IEEE 754 roundTiesToEven).
  * ``nearest_away``: to nearest, ties away from zero.
  * ``toward_zero``: truncate the magnitude.
  * ``up`` / ``down``: toward +inf / -inf.
  * ``to_odd``: exact values stay; others go to whichever neighbour has an odd code (von Neumann rounding,
    used to avoid double rounding).
  * ``stochastic``: up with probability equal to the distance from the lower neighbour divided by the gap,
    resolved with 32 random bits (``stochastic_bits=k`` uses only k of them, as hardware does).
  """

  NEAREST_EVEN = "nearest_even"
  NEAREST_AWAY = "nearest_away"
  TOWARD_ZERO = "toward_zero"
  UP = "up"
  DOWN = "down"
  TO_ODD = "to_odd"
  STOCHASTIC = "stochastic"


class Overflow(_ParsedEnum):
  """What happens to values beyond a format's largest finite value, decided after rounding.

  * ``saturate``: to +-max finite (integers: to the ends of their range); infinities too.
  * ``non_saturating``: as a plain cast does: inf where the format has one, else NaN (NaR), else max finite.
    Directed modes that round toward zero overflow to max finite, as IEEE 754 specifies.
  * ``wrap``: integers only; two's complement wrap-around modulo 2^bits.
  """

  SATURATE = "saturate"
  NON_SATURATING = "non_saturating"
  WRAP = "wrap"


def away_from_zero(mode: Rounding, negative: jax.Array) -> jax.Array | bool:
  """Whether ``mode`` rounds a value of this sign away from zero (so that overflow goes to inf)."""
  if mode in (Rounding.NEAREST_EVEN, Rounding.NEAREST_AWAY, Rounding.STOCHASTIC):
    return True
  if mode is Rounding.UP:
    return ~negative
  if mode is Rounding.DOWN:
    return negative
  return False


def round_shift(
    v: jax.Array,
    drop: jax.Array | int,
    mode: Rounding,
    *,
    negative: jax.Array | None = None,
    sticky: jax.Array | None = None,
    rand: jax.Array | None = None,
    stochastic_bits: int | None = None,
    parity_flip: jax.Array | None = None,
    drop_range: tuple[int, int] | None = None,
) -> jax.Array:
  """Rounds ``v >> drop`` according to ``mode``.

  Args:
    v: unsigned integer array, monotone in the magnitude it encodes.
    drop: number of low bits to remove, ``>= 0``; may exceed the width of ``v`` only when ``v`` is then
      below half of one unit of the result (callers keep that invariant; the result is then 0 or 1).
    mode: the rounding mode.
    negative: sign of the values (for ``up``/``down``); ``None`` means all positive.
    sticky: whether nonzero bits were already lost below ``v`` (so ``v`` alone understates the value).
    rand: uint32 random bits, one per element, for ``stochastic``.
    stochastic_bits: use only this many of the random bits (hardware-style). The rounding probability is then
      ``floor(f * 2^k) / 2^k`` for a true fraction ``f``, biased toward zero by less than ``2^-k`` of a step.
    parity_flip: where true, the code of ``v >> drop`` has the opposite parity to its low bit (used when ``v`` is
      a carrier bit pattern and the format numbers its codes with a different offset); for ties-to-even and
      to-odd.
    drop_range: static bounds ``(lo, hi)`` the caller guarantees for ``drop``, with ``0 <= lo <= hi < width``;
      they let the rounding skip the range checks (the hot path of float formats).

  Returns:
    The rounded quotient, in the dtype of ``v``; it may equal ``2^(width - drop)`` (a carry out), which the
    caller interprets.
  """
  width = jnp.iinfo(v.dtype).bits
  utype = v.dtype
  drop = jnp.asarray(drop, jnp.int32)
  one = jnp.asarray(1, utype)
  if drop_range is not None:
    lo_drop, hi_drop = drop_range
    if not 0 <= lo_drop <= hi_drop < width:
      raise ValueError(f"drop_range={drop_range!r} must satisfy 0 <= lo <= hi < {width}")
    d = drop.astype(utype)
  else:
    lo_drop = 0
    d = jnp.clip(drop, 0, width - 1).astype(utype)
  lo = v >> d
  mask = (one << d) - one
  rem = v & mask
  if mode is Rounding.TOWARD_ZERO:
    return lo
  odd = (lo & one) == one
  if parity_flip is not None:
    odd = odd ^ parity_flip
  inexact = rem != 0
  if sticky is not None:
    inexact = inexact | sticky
  if mode is Rounding.NEAREST_EVEN and drop_range is not None and lo_drop >= 1 and sticky is None:
    # With 1 <= drop < width: above half, or at half with an odd quotient.
    inc = (rem + odd.astype(utype)) > (one << (d - one))
  elif mode in (Rounding.NEAREST_EVEN, Rounding.NEAREST_AWAY):
    half = (one << d) >> one
    in_range = drop == d.astype(jnp.int32)  # beyond the clip, v is below half a unit
    above = in_range & (rem > half)
    at_half = in_range & (rem == half) & (drop > 0)
    if sticky is not None:
      above = above | (at_half & sticky)
      at_half = at_half & ~sticky
    if mode is Rounding.NEAREST_EVEN:
      inc = above | (at_half & odd)
    else:
      inc = above | at_half
  elif mode is Rounding.UP:
    inc = inexact if negative is None else inexact & ~negative
  elif mode is Rounding.DOWN:
    inc = jnp.zeros_like(inexact) if negative is None else inexact & negative
  elif mode is Rounding.TO_ODD:
    inc = inexact & ~odd
  elif mode is Rounding.STOCHASTIC:
    if rand is None:
      raise ValueError("stochastic rounding needs random bits")
    frac = _fraction32(rem, drop, width)
    r = rand.astype(jnp.uint32)
    if stochastic_bits is not None and stochastic_bits < 32:
      sh = jnp.uint32(32 - stochastic_bits)
      frac, r = frac >> sh, r >> sh
    inc = r < frac
  else:  # pragma: no cover - the enum is closed
    raise ValueError(f"rounding={mode!r}")
  return lo + inc.astype(utype)


def round_integral(v: jax.Array, mode: Rounding) -> jax.Array | None:
  """``v`` rounded to an integer by the float unit, or None where that is not exact.

  IEEE roundToIntegral is exact, so ``nearest_even`` (``jnp.round``) and ``toward_zero`` (``jnp.trunc``) need no
  bit work; they stay right when XLA flushes subnormal operands, as those round to 0 anyway. ``up``, ``down``
  (a subnormal would go to +-1), ``nearest_away``, ``to_odd`` and ``stochastic`` go through :func:`round_shift`.
  """
  if mode is Rounding.NEAREST_EVEN:
    return jnp.round(v)
  if mode is Rounding.TOWARD_ZERO:
    return jnp.trunc(v)
  return None


def round_below_unit(a: jax.Array, half: np.generic, mode: Rounding,
                     negative: jax.Array | None = None) -> jax.Array:
  """Whether a magnitude below one unit rounds to the unit (else to 0), for every mode but stochastic.

  ``a`` is monotone in the magnitude (e.g. float bits) and ``half`` is its value at half a unit. The unit's
  code is odd (1), so a tie goes to 0 under ``nearest_even``.
  """
  nonzero = a != 0
  if mode is Rounding.NEAREST_EVEN:
    return a > half
  if mode is Rounding.NEAREST_AWAY:
    return a >= half
  if mode is Rounding.TOWARD_ZERO:
    return jnp.zeros_like(nonzero)
  if mode is Rounding.UP:
    return nonzero if negative is None else nonzero & ~negative
  if mode is Rounding.DOWN:
    return jnp.zeros_like(nonzero) if negative is None else nonzero & negative
  if mode is Rounding.TO_ODD:
    return nonzero
  raise ValueError(f"rounding={mode.value!r} needs the fraction itself; use round_shift")


def _fraction32(rem: jax.Array, drop: jax.Array, width: int) -> jax.Array:
  """``rem / 2^drop`` as a 0.32 fixed-point uint32 (exact for ``drop <= 32``, truncated beyond)."""
  utype = rem.dtype
  left = jnp.clip(32 - drop, 0, width - 1).astype(utype)
  right = jnp.clip(drop - 32, 0, width - 1).astype(utype)
  frac = jnp.where(drop <= 32, rem << left, rem >> right)
  # drop == 0 means rem == 0; a shift by 32 would be needed only then.
  return frac.astype(jnp.uint32)


def random_bits(key: jax.Array, shape: tuple[int, ...]) -> jax.Array:
  """uint32 random bits for stochastic rounding, one per element, deterministic for a given key.

  A counter-based generator: 64 bits drawn from ``key`` with ``jax.random.bits`` seed a 32-bit integer hash
  (two rounds of the "lowbias32" finalizer) of each element's flat index. It costs a few integer operations per
  element and fuses into the rounding kernel, where ``jax.random.bits`` over the whole tensor costs ~10x a memory
  pass on the CPU. Its quality is ample for rounding (uniform, no visible correlation between neighbours) but it
  is not a cryptographic or general-purpose generator.
  """
  if isinstance(key, jax.Array) and not jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
    if key.dtype != jnp.uint32:
      raise TypeError(f"key must be a jax.random.key(...) (or legacy uint32 PRNGKey), got dtype {key.dtype}")
    key = jax.random.wrap_key_data(key)
  seed = jax.random.bits(key, (2,), jnp.uint32)
  idx = jnp.zeros(shape, jnp.uint32)
  stride = 1
  for axis in reversed(range(len(shape))):
    idx = idx + jax.lax.broadcasted_iota(jnp.uint32, shape, axis) * np.uint32(stride & 0xFFFFFFFF)
    stride *= shape[axis]
  h = _lowbias32(idx ^ seed[0])
  return _lowbias32(h + seed[1])


def _lowbias32(x: jax.Array) -> jax.Array:
  x = x ^ (x >> 16)
  x = x * np.uint32(0x7FEB352D)
  x = x ^ (x >> 15)
  x = x * np.uint32(0x846CA68B)
  return x ^ (x >> 16)
