"""Rounding: the one place in lpnum that decides which way a value goes.

Every format reduces its rounding problem to the same question: an unsigned integer ``v`` (a bit pattern,
a significand or a posit bit string, always monotone in the magnitude it encodes) must lose its ``drop`` low
bits. :func:`round_shift` answers it for every mode and returns ``v >> drop`` rounded. Floats, integers,
posits and power-of-two formats all call it; no family owns a round-to-nearest-even. On top of it,
:func:`round_magnitude` rounds carrier magnitudes to the grid of a float with ``m`` mantissa bits (floats,
integers and power-of-two formats are such grids) and :func:`finish_round` applies a format's range, zero and
special-value rules.

Rounding modes act on the magnitude, with the sign of the value passed in ``negative`` (so ``up`` rounds the
magnitude up only for positive values). Overflow modes are decided by each family after rounding.
"""

from __future__ import annotations

import enum

import jax
import jax.numpy as jnp
import numpy as np

from lpnum.carrier import Carrier, pattern
from lpnum.validate import check_key

__all__ = ["ParsedEnum", "Rounding", "Overflow", "P3109_OVERFLOWS", "round_shift", "round_integral", "round_below_unit",
           "random_bits", "check_rounding_key", "hash32", "rounds_toward_zero", "round_magnitude", "finish_round"]


class ParsedEnum(enum.Enum):
  """An enum whose public spelling is its value string, parsed once at the API edge."""

  @classmethod
  def parse(cls, value: "str | ParsedEnum", argname: str | None = None) -> "ParsedEnum":
    if isinstance(value, cls):
      return value
    names = [m.value for m in cls]
    if isinstance(value, str):
      for member in cls:
        if member.value == value:
          return member
    arg = argname or cls.__name__.lower()
    raise ValueError(f"{arg}={value!r}; expected one of {names}")


class Rounding(ParsedEnum):
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


class Overflow(ParsedEnum):
  """What happens to values beyond a format's finite range, decided after rounding.

  lpnum's modes:

  * ``saturate``: to +-max finite (integers: to the ends of their range); infinities too.
  * ``non_saturating``: as a plain cast does: inf where the format has one, else NaN (NaR), else max finite.
    The directed modes that round the value toward zero overflow to max finite, as IEEE 754 specifies; so does
    ``to_odd`` on unsigned formats with inf, whose max finite has the odd code (P3109 report v4.0, 4.7.5).
    Negatives into unsigned formats give NaN.
  * ``wrap``: integers only; two's complement wrap-around modulo 2^bits.

  The saturation modes of the IEEE P3109 Interim Report v4.0 (4.7.5, !Saturate), for float formats, with
  ``M_hi = max_finite``, ``M_lo = min_value`` (``-M_hi``, or 0 for unsigned formats) and the value ``R`` rounded
  without an upper bound:

  * ``sat_finite`` (SatFinite): ``R`` and +-inf clamp to ``[M_lo, M_hi]``. The same results as ``saturate``.
  * ``sat_propagate`` (SatPropagate): finite ``R`` clamps to ``[M_lo, M_hi]``; +inf stays +inf and -inf stays
    -inf where the format has them (else ``M_hi`` / ``M_lo``; -inf into an unsigned format gives 0).
  * ``sat_none`` (SatNone): +-inf stay where the format has them, else give ``M_hi`` / ``M_lo`` (-inf into an
    unsigned format: NaN). ``R > M_hi`` gives ``M_hi`` under ``toward_zero`` and ``down``, and under ``to_odd``
    on unsigned formats with inf; otherwise +inf where the format has it, else ``M_hi``. ``R < M_lo`` gives
    ``M_lo`` under ``toward_zero`` and ``up``; otherwise NaN on unsigned formats, -inf on signed formats with
    inf, else ``M_lo``.

  Mapping: ``sat_finite`` is ``saturate``. ``sat_none`` is ``non_saturating`` on signed formats with inf (IEEE and
  P3109 signed extended); it differs where the format has no inf (``sat_none`` gives the extreme finite value,
  ``non_saturating`` NaN) and for negatives into unsigned formats under ``toward_zero``/``up`` (``sat_none``
  gives 0, ``non_saturating`` NaN). ``sat_propagate`` has no lpnum counterpart. Formats without NaN give, where
  these rules say NaN, their smallest value (as ``saturate`` does); formats without zero (E8M0) send exact zeros
  to their smallest value under ``sat_finite`` and ``sat_propagate``, to NaN under ``sat_none``.
  """

  SATURATE = "saturate"
  NON_SATURATING = "non_saturating"
  WRAP = "wrap"
  SAT_FINITE = "sat_finite"
  SAT_PROPAGATE = "sat_propagate"
  SAT_NONE = "sat_none"


#: The saturation modes of IEEE P3109 (for float formats).
P3109_OVERFLOWS = (Overflow.SAT_FINITE, Overflow.SAT_PROPAGATE, Overflow.SAT_NONE)


def rounds_toward_zero(mode: Rounding, negative: jax.Array) -> jax.Array | bool:
  """Whether ``mode`` is a directed mode that rounds a value of this sign toward zero (so that it never
  overflows past max finite): ``toward_zero``, ``down`` for positive and ``up`` for negative values."""
  if mode is Rounding.TOWARD_ZERO:
    return True
  if mode is Rounding.UP:
    return negative
  if mode is Rounding.DOWN:
    return ~negative
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


def check_rounding_key(mode: Rounding, key: object) -> None:
  """Stochastic rounding needs one PRNG key (:func:`lpnum.validate.check_key`); the other modes take none, so a
  key given with them is an error rather than silently unused."""
  if mode is Rounding.STOCHASTIC:
    if key is None:
      raise ValueError("rounding='stochastic' needs key=jax.random.key(...)")
    check_key("key", key)
  elif key is not None:
    raise ValueError(f"key is only used by rounding='stochastic'; rounding={mode.value!r} takes key=None")


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
  h = hash32(idx ^ seed[0])
  return hash32(h + seed[1])


def hash32(x: jax.Array) -> jax.Array:
  """The "lowbias32" integer hash of uint32 ``x`` (Chris Wellons' finalizer): a bijection that mixes every bit."""
  x = x ^ (x >> 16)
  x = x * np.uint32(0x7FEB352D)
  x = x ^ (x >> 15)
  x = x * np.uint32(0x846CA68B)
  return x ^ (x >> 16)


# ---- float grids: the rounding every format family reduces to --------------------------------------------
def round_magnitude(a, biased, c: Carrier, m: int, emin: int, tsub: int, mode: Rounding,
                    negative, rand, stochastic_bits, code_bias: int = 0, in_kernel: bool = False) -> jax.Array:
  """Rounds magnitudes (carrier bits ``a``) to the grid of a float with m mantissa bits, unbounded above.

  The grid step at a value with exponent e is ``2^(e - m)`` for ``e >= emin`` and ``2^tsub`` below. The bits of a
  float are linear in its value within a binade and across a carry, so dropping low bits of ``a`` rounds; only
  values below one grid step (``drop > mantissa_bits`` of the carrier) go through the significand instead.
  Ties go to the even code: for ``m = 0`` the code is the exponent plus ``code_bias``, whose parity may differ
  from the carrier's biased exponent. Nearest even with subnormals has a faster path that uses the float unit's
  round-to-integral, which Pallas's GPU (Triton) lowering lacks: ``in_kernel=True`` (code inside Pallas kernels)
  skips it for the bit-level path, which gives the same results.
  """
  M = c.mantissa_bits
  if (mode is Rounding.NEAREST_EVEN and not in_kernel and 1 <= m < M and tsub == emin - m
      and tsub >= 2 - c.bias):
    return _round_magnitude_nearest(a, c, m, emin)
  if emin < -c.bias or mode is Rounding.STOCHASTIC:
    return _round_magnitude_general(a, biased, c, m, emin, tsub, mode, negative, rand, stochastic_bits,
                                    code_bias)
  # The format's normal range starts at most one binade below the carrier's, so the exponent can be read from
  # the biased field without counting leading zeros: a carrier subnormal, read as exponent -bias, then gets the
  # grid step it would get with its true exponent. Every value of at least one grid step (2^tsub) drops between
  # M - m (one less in the binade below the carrier's normals) and M bits of its pattern.
  e = biased - c.bias
  t = jnp.where(e >= emin, e - m, tsub)
  drop = jnp.clip(t - (jnp.maximum(biased, 1) - c.bias - M), 0, M)
  reaches_normal = emin <= c.bias
  lo_drop = max(M - m - (emin == -c.bias), 0) if reaches_normal else 0
  if m == 0:
    flip = _parity_flip(e, biased, drop, c, m, emin, code_bias)
  else:  # only the lowest subnormal binade drops M bits (values below it are handled as tiny)
    flip = (drop == M) & ((biased & 1) == 0)
  q = round_shift(a, drop, mode, negative=negative, parity_flip=flip,
                  drop_range=(lo_drop, M))
  kept = q << drop.astype(c.utype)
  unit = pattern(2.0 ** tsub, c)
  if tsub - 1 >= 1 - c.bias - M:
    below = round_below_unit(a, pattern(2.0 ** (tsub - 1), c), mode, negative)
  else:  # 2^tsub is the carrier's smallest subnormal: nothing nonzero lies below it
    below = False
  return jnp.where(a < unit, jnp.where(below, unit, c.u(0)), kept)


def _round_magnitude_nearest(a, c: Carrier, m: int, emin: int) -> jax.Array:
  """round_magnitude to nearest even for a format with subnormals, ``1 <= m < mantissa_bits`` and its smallest
  step ``2^(emin - m)`` at least ``2^(2 - bias)`` of the carrier.

  From ``2^emin`` up, every value drops the same ``mantissa_bits - m`` bits of its pattern (the kept low bit is
  the code's). Below, the grid is uniform: ``|x| / step`` rounded to an integer by the float unit (exact, see
  round_integral) and scaled back, both exact powers of two. Carrier subnormals there (which XLA may flush) lie
  below half a step and round to 0 either way.
  """
  drop = c.mantissa_bits - m
  normal = round_shift(a, drop, Rounding.NEAREST_EVEN, drop_range=(drop, drop)) << c.u(drop)
  step = emin - m
  v = jax.lax.bitcast_convert_type(jnp.minimum(a, pattern(2.0 ** emin, c)), c.dtype)
  units = round_integral(v * np.array(2.0 ** -step, c.dtype), Rounding.NEAREST_EVEN)
  small = jax.lax.bitcast_convert_type(units * np.array(2.0 ** step, c.dtype), c.utype)
  return jnp.where(a < pattern(2.0 ** emin, c), small, normal)


def _parity_flip(e, biased, drop, c: Carrier, m: int, emin: int, code_bias: int):
  """Where the code of ``a >> drop`` has the opposite parity to that pattern's low bit.

  Ties-to-even and to-odd read the parity of ``a >> drop``. For ``m = 0`` (normal range) the code is the
  exponent plus ``code_bias``, while the kept bits count carrier exponents (or, for carrier subnormals, are the
  single unit 1). Below the format's normal range, where exactly the carrier's mantissa bits drop, the kept bit
  is the carrier's exponent bit but the kept value is one grid step: an odd code.
  """
  if m == 0:
    normal_flip = (((e + code_bias) ^ jnp.where(biased > 0, e + c.bias, 1)) & 1) == 1
  else:
    normal_flip = False
  sub_flip = (drop == c.mantissa_bits) & (biased > 0) & (((e + c.bias) & 1) == 0)
  return jnp.where(e >= emin, normal_flip, sub_flip)


def _round_magnitude_general(a, biased, c: Carrier, m: int, emin: int, tsub: int, mode: Rounding,
                             negative, rand, stochastic_bits, code_bias: int) -> jax.Array:
  """round_magnitude for any format and mode: exponents by counting leading zeros, tiny values rounded from
  their significand (needed for stochastic rounding and for formats reaching below the carrier's normals)."""
  e = c.exponent(a, biased)
  t = jnp.where(e >= emin, e - m, tsub)
  lsb = jnp.maximum(biased, 1) - c.bias - c.mantissa_bits
  drop = t - lsb
  tiny = drop > c.mantissa_bits
  sig = (a & c.u(c.mant_mask)) | jnp.where(biased > 0, c.u(1 << c.mantissa_bits), c.u(0))
  flip = ~tiny & _parity_flip(e, biased, drop, c, m, emin, code_bias)
  q = round_shift(jnp.where(tiny, sig, a), jnp.maximum(drop, 0), mode, negative=negative, rand=rand,
                  stochastic_bits=stochastic_bits, parity_flip=flip)
  kept = q << jnp.clip(drop, 0, c.mantissa_bits).astype(c.utype)
  return jnp.where(tiny, jnp.where(q != 0, c.pow2_bits(jnp.clip(t, -c.bias, c.bias)), c.u(0)), kept)


def finish_round(fmt, x, c: Carrier, a, r, negative, is_nan, is_inf, mode: Rounding,
                 overflow: Overflow) -> jax.Array:
  """Applies a format's range, zero and special-value rules to rounded magnitudes ``r`` (carrier bits).

  ``fmt`` is any :class:`lpnum.Format`; only its facts are read (``max_finite``, ``min_positive``, ``has_inf``,
  ``has_nan``, ``has_zero``, ``has_negative_zero``, ``signed``). The overflow modes are those of
  :class:`Overflow`, whose docstring states every rule applied here.
  """
  max_bits = pattern(fmt.max_finite, c)
  min_bits = pattern(fmt.min_positive, c)
  smallest = c.u(0) if fmt.has_zero else min_bits
  nan = c.nan_bits if fmt.has_nan else smallest
  inf = c.inf_bits if fmt.has_inf else max_bits
  toward_zero = rounds_toward_zero(mode, negative)
  odd_max = mode is Rounding.TO_ODD and fmt.has_inf and not fmt.signed  # max finite has the odd code
  if overflow in (Overflow.SATURATE, Overflow.SAT_FINITE):
    over_to, inf_to, negative_to = max_bits, max_bits, smallest
  elif overflow is Overflow.SAT_PROPAGATE:
    over_to, inf_to, negative_to = max_bits, inf, smallest
  elif overflow is Overflow.SAT_NONE:
    over_to = jnp.where(toward_zero | odd_max, max_bits, inf)
    inf_to, negative_to = inf, jnp.where(toward_zero & ~is_inf, smallest, nan)
  else:  # NON_SATURATING
    special = c.inf_bits if fmt.has_inf else nan if fmt.has_nan else max_bits
    over_to, inf_to, negative_to = jnp.where(toward_zero | odd_max, max_bits, special), special, nan
  r = jnp.where(is_inf, inf_to, jnp.where(r > max_bits, over_to, r))
  # For unsigned formats: a negative that does not round to 0 (in a format without zero, none does).
  negative_bad = negative & ((r != 0) | is_inf | ((a != 0) & (not fmt.has_zero)))
  if not fmt.has_zero:
    keeps_min = overflow in (Overflow.SATURATE, Overflow.SAT_FINITE, Overflow.SAT_PROPAGATE)
    r = jnp.where(r == 0, jnp.where((a != 0) | keeps_min, min_bits, nan), r)
  if not fmt.signed:
    r = jnp.where(negative_bad, negative_to, r)
    negative = jnp.zeros_like(negative)
  if fmt.has_nan:
    r = jnp.where(is_nan, c.nan_bits, r)
  else:
    # ml_dtypes' convention for formats without NaN: NaN becomes the zero of the opposite sign.
    r = jnp.where(is_nan, c.u(0) if fmt.has_zero else min_bits, r)
    negative = jnp.where(is_nan, ~negative, negative)
  if not fmt.has_negative_zero:
    negative = negative & (r != 0)
  return c.join(negative, r)
