"""The arithmetic of one accumulation step, shared by the reference, the XLA path and the Pallas kernels.

Everything here is elementwise on 32-bit arrays (a tile inside a kernel, the whole output in XLA) and uses only
operations that lower to XLA, Mosaic (TPU) and Triton (GPU). Constants are NumPy scalars, which kernels may
capture. Rounding to a float format is always :meth:`lpnum.FloatFormat.round_values` (lpnum's one rounding routine),
except float32 itself, which has no wider carrier: its nearest-even sums are float32 additions and its stochastic
ones are decided by :func:`lpnum.rounding.round_shift` on the exact error of the addition; the final rounding of
the exact accumulator is :func:`lpnum.compose`.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np

from lpnum.carrier import F32
from lpnum.exact import compose
from lpnum.rounding import Overflow, Rounding, hash32, round_shift
from lpnum.formats import FloatFormat

_INF = np.float32(np.inf)
_ABS = np.uint32(0x7FFFFFFF)
_INF_BITS = np.uint32(0x7F800000)
#: Exponent given to zero (and non-finite) products by :func:`product_exponent`: below every real exponent.
NO_EXPONENT = -1000


def finite(x: jax.Array) -> jax.Array:
  """Whether float32 ``x`` is finite (NaN compares false)."""
  return jnp.abs(x) < _INF


# ---- integer accumulators ----------------------------------------------------------------------------------
def int_add(acc: jax.Array, x: jax.Array, bits: int, saturate: bool) -> tuple[jax.Array, jax.Array]:
  """``acc + x`` in a ``bits``-bit two's complement accumulator; returns ``(sum, overflowed)``.

  ``acc`` holds a ``bits``-bit value in int32, ``x`` any int32. The exact sum is wrapped modulo 2^bits or clamped
  to ``[-2^(bits-1), 2^(bits-1) - 1]``; ``overflowed`` says where it left that range (int32 wrap-around of the
  sum itself included).
  """
  s = acc + x
  carry_out = ((acc ^ s) & (x ^ s)) < 0  # the int32 addition itself wrapped
  lo, hi = np.int32(-(1 << (bits - 1))), np.int32((1 << (bits - 1)) - 1)
  if bits == 32:
    out = carry_out
    wrapped = s
  else:
    shift = np.int32(32 - bits)
    wrapped = (s << shift) >> shift
    out = carry_out | (wrapped != s)
  if saturate:
    beyond = jnp.where(x < 0, lo, hi)
    return jnp.where(carry_out, beyond, jnp.clip(s, lo, hi) if bits < 32 else s), out
  return wrapped, out


def wrap(s: jax.Array, bits: int) -> jax.Array:
  """int32 ``s`` wrapped to ``bits`` bits (two's complement)."""
  if bits == 32:
    return s
  shift = np.int32(32 - bits)
  return (s << shift) >> shift


# ---- float accumulators ------------------------------------------------------------------------------------
def float_add(acc: jax.Array, p: jax.Array, fmt: FloatFormat, mode: Rounding,
              rand: jax.Array | None) -> jax.Array:
  """``acc + p`` rounded once to ``fmt`` (float32 arrays in, float32 array of ``fmt`` values out)."""
  return round_to(pending_sum(acc, p, fmt), fmt, mode, rand)


def is_float32(fmt: FloatFormat) -> bool:
  """Whether ``fmt`` is float32 itself (23 mantissa bits: its sums are rounded from their two operands)."""
  return fmt.mantissa_bits == F32.mantissa_bits


def pending_sum(acc: jax.Array, p: jax.Array, fmt: FloatFormat) -> jax.Array | tuple[jax.Array, jax.Array]:
  """``acc + p`` held, unrounded, in a form that :func:`round_to` rounds to ``fmt`` as it would the exact sum.

  Formats of at most 21 mantissa bits: the sum rounded to odd at 24 bits (:func:`odd_sum`). Float32: the pair
  ``(acc, p)`` itself, whose exact sum no single float32 holds.
  """
  return (acc, p) if is_float32(fmt) else odd_sum(acc, p)


def zero_sum(shape: tuple[int, ...], fmt: FloatFormat) -> jax.Array | tuple[jax.Array, jax.Array]:
  """The pending sum of an accumulator at +0."""
  zero = jnp.zeros(shape, jnp.float32)
  return (zero, zero) if is_float32(fmt) else zero


def odd_sum(acc: jax.Array, p: jax.Array) -> jax.Array:
  """``acc + p`` rounded to odd at float32's 24 bits: exact sums stay, others go to the neighbour with an odd
  last bit.

  The float32 sum ``s`` and its exact error (TwoSum) give it: where the error is nonzero, ``s`` steps toward the
  error to the odd neighbour (or stays, if odd). Rounding that to a format of at most 22 significant bits equals
  rounding the exact sum, with no double rounding. An infinite or NaN ``s`` has a NaN error and is left alone.
  """
  s = acc + p
  bp = s - acc
  err = (acc - (s - bp)) + (p - bp)
  sb = jax.lax.bitcast_convert_type(s, jnp.uint32)
  toward_zero = (sb ^ jax.lax.bitcast_convert_type(err, jnp.uint32)) >> np.uint32(31)  # |exact sum| < |s|
  odd = jnp.where(jnp.abs(err) > 0, (sb - toward_zero) | np.uint32(1), sb)
  return jax.lax.bitcast_convert_type(odd, jnp.float32)


def round_to(pending: jax.Array | tuple[jax.Array, jax.Array], fmt: FloatFormat, mode: Rounding,
             rand: jax.Array | None) -> jax.Array:
  """A :func:`pending_sum` rounded to ``fmt`` (nearest even, or stochastic with ``rand``; inf on overflow)."""
  if is_float32(fmt):
    return sum32(*pending, mode, rand)
  return fmt.round_values(pending, F32, mode, Overflow.NON_SATURATING, rand, None, in_kernel=True)


def sum32(a: jax.Array, b: jax.Array, mode: Rounding, rand: jax.Array | None) -> jax.Array:
  """``a + b`` rounded once to float32: nearest even, or stochastic with ``rand``.

  The float32 sum ``s`` (nearest even) and its exact error ``e`` (TwoSum) bracket the exact sum between ``s`` and
  its neighbour ``t`` toward ``e``. :func:`lpnum.rounding.round_shift` decides on the bits of ``e`` against the
  gap ``|t - s|``: stochastic goes to ``t`` with probability ``|e| / |t - s|`` (a 0.32 fixed-point fraction
  against 32 random bits, exact when ``|e|`` has no bits 32 places below the gap); nearest even never moves,
  ``|e|`` being at most half the gap and ``s`` even at a tie (computing ``e`` also keeps the compiler from
  contracting a product and the sum into a fused multiply-add, whose single rounding would skip the product's).
  The gap and the step to ``t`` are bit operations: the gap below a power of two is half the one above,
  subnormals are spaced 2^-149, and one step up from the largest finite value is inf. A sum beyond the rounding
  range (``s`` infinite, operands finite) is rounded at half scale, where halving both operands is exact (each is
  at least 2^103), and doubled: below 2^128 it goes to the largest finite value or to inf as the distance says
  (nearest even: inf), from 2^128 on always to inf. Non-finite operands give their IEEE sum. XLA on CPUs and TPUs
  flushes float32 subnormal results, so there an error below 2^-126 reads as 0 and that sum stays ``s``.
  """
  s = a + b
  finite_operands = finite(a) & finite(b)
  beyond = finite_operands & ~finite(s)
  a = jnp.where(beyond, a * np.float32(0.5), a)
  b = jnp.where(beyond, b * np.float32(0.5), b)
  s = jnp.where(beyond, a + b, s)
  bp = s - a
  err = (a - (s - bp)) + (b - bp)
  sb = jax.lax.bitcast_convert_type(s, jnp.uint32)
  eb = jax.lax.bitcast_convert_type(err, jnp.uint32)
  toward_zero = ((sb ^ eb) >> np.uint32(31)) == 1  # the exact sum is smaller in magnitude than s
  biased = ((sb & _ABS) >> np.uint32(23)).astype(jnp.int32)
  bottom = (sb & np.uint32(0x7FFFFF)) == 0
  gap = jnp.maximum(biased, 1) - np.int32(150) - (toward_zero & bottom & (biased > 1)).astype(jnp.int32)
  e_biased = ((eb & _ABS) >> np.uint32(23)).astype(jnp.int32)
  e_sig = jnp.where(e_biased > 0, (eb & np.uint32(0x7FFFFF)) | np.uint32(1 << 23), eb & np.uint32(0x7FFFFF))
  lsb = jnp.maximum(e_biased, 1) - np.int32(150)
  step = round_shift(e_sig, gap - lsb, mode, rand=rand)  # 0 or 1: |e| is at most half the gap
  stepped = jax.lax.bitcast_convert_type(jnp.where(toward_zero, sb - step, sb + step), jnp.float32)
  out = jnp.where(beyond, stepped * np.float32(2), stepped)
  return jnp.where(finite_operands, out, a + b)


def float_overflowed(acc: jax.Array, p: jax.Array, out: jax.Array) -> jax.Array:
  """Where an addition of finite operands gave an infinity or NaN (the accumulator overflowed)."""
  return finite(acc) & finite(p) & ~finite(out)


def random_bits(idx: jax.Array, words: tuple[jax.Array, jax.Array], k) -> jax.Array:
  """32 random bits per output for the addition of product ``k``: lpnum's counter-based hash (as in
  :func:`lpnum.rounding.random_bits`) of the output index ``idx``, seeded with ``hash(w0 ^ k)`` and
  ``hash(w1 ^ k)`` from the two key words."""
  k = jnp.asarray(k).astype(jnp.uint32)
  return hash32(hash32(idx ^ hash32(words[0] ^ k)) + hash32(words[1] ^ k))


def key_words(key: jax.Array) -> jax.Array:
  """The two uint32 words ``jax.random.bits(key, (2,))`` that seed every addition's random bits."""
  if isinstance(key, jax.Array) and not jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
    if key.dtype != jnp.uint32:
      raise TypeError(f"key must be a jax.random.key(...) (or legacy uint32 PRNGKey), got dtype {key.dtype}")
    key = jax.random.wrap_key_data(key)
  return jax.random.bits(key, (2,), jnp.uint32)


def output_index(rows: jax.Array, cols: jax.Array, n: int) -> jax.Array:
  """Flat index ``row * n + col`` (uint32, wrapping) of outputs: what the random bits are keyed on."""
  return rows.astype(jnp.uint32) * np.uint32(n & 0xFFFFFFFF) + cols.astype(jnp.uint32)


# ---- aligned (fixed-point) chunks --------------------------------------------------------------------------
def _pow2(e: jax.Array) -> jax.Array:
  """2^e as float32 for int32 ``-126 <= e <= 127``."""
  return jax.lax.bitcast_convert_type(((e + np.int32(127)) << np.int32(23)).astype(jnp.uint32), jnp.float32)


def scale_pow2(x: jax.Array, t: jax.Array) -> jax.Array:
  """``x * 2^t`` for float32 ``x`` and int32 ``t`` (clipped to [-252, 252]) by two exact multiplications."""
  t = jnp.clip(t, -252, 252)
  h = t >> np.int32(1)
  return (x * _pow2(h)) * _pow2(t - h)


def product_exponent(p: jax.Array) -> jax.Array:
  """floor(log2 |p|) of float32 products; :data:`NO_EXPONENT` for zeros, infinities and NaNs (-127 for
  subnormals)."""
  a = jax.lax.bitcast_convert_type(p, jnp.uint32) & _ABS
  e = (a >> np.uint32(23)).astype(jnp.int32) - np.int32(127)
  return jnp.where((a == 0) | (a >= _INF_BITS), np.int32(NO_EXPONENT), e)


def aligned_units(p: jax.Array, emax: jax.Array, product_bits: int) -> jax.Array:
  """``p`` in units of ``2^(emax - product_bits)``, truncated toward zero (int32); 0 for non-finite ``p``."""
  x = scale_pow2(p, np.int32(product_bits) - emax)
  return jnp.where(finite(p), x, np.float32(0)).astype(jnp.int32)


def aligned_value(n: jax.Array, emax: jax.Array, product_bits: int) -> jax.Array:
  """The chunk sum ``n * 2^(emax - product_bits)`` as float32 (``n`` converted to nearest even first)."""
  return scale_pow2(n.astype(jnp.float32), emax - np.int32(product_bits))


# ---- exact (Kulisch) accumulation --------------------------------------------------------------------------
LIMB_BITS = 24
_LIMB_MASK = np.int32((1 << LIMB_BITS) - 1)
_PART_BITS = 12  # operand significands are cut into parts of at most 12 bits: part products fit in 24 bits


@dataclasses.dataclass(frozen=True)
class ExactOperand:
  """How the values of one input dtype split into ``sign * sum(part * 2^exponent)`` with parts of <= 12 bits.

  Floats are read from their float32 bits: significand ``>> shift`` (bits that are zero for every value of the
  dtype) with its least significant bit at exponent ``max(biased, 1) - 150 + shift``; integers have exponent 0.
  Significands wider than 12 bits are split in two (high part at exponent + 12).
  """

  is_float: bool
  shift: int
  split: bool
  ex_min: int  # smallest exponent of a low part
  ex_max: int  # largest exponent of any part

  @classmethod
  def of(cls, dtype: np.dtype) -> ExactOperand:
    dtype = np.dtype(dtype)
    if jnp.issubdtype(dtype, jnp.integer):
      info = jnp.iinfo(dtype)
      split = max(abs(int(info.min)), int(info.max)).bit_length() > _PART_BITS
      return cls(False, 0, split, 0, _PART_BITS if split else 0)
    info = jnp.finfo(dtype)
    tiny = math.floor(math.log2(float(info.smallest_subnormal)))
    # Values below 2^-126 are float32 subnormals: their significand is only guaranteed zero below 2^tiny.
    shift = min(23 - int(info.nmant), max(0, tiny + 149))
    ex_min = (tiny if tiny >= -126 else -126) - 23 + shift
    ex_max = math.floor(math.log2(float(info.max))) - 23 + shift
    split = 24 - shift > _PART_BITS
    return cls(True, shift, split, ex_min, ex_max + (_PART_BITS if split else 0))

  def parts(self, x: jax.Array) -> tuple[jax.Array, list[tuple[jax.Array, jax.Array]]]:
    """``(negative, [(part, exponent), ...])`` of float32 or int32 ``x``; non-finite values give zero parts."""
    if self.is_float:
      bits = jax.lax.bitcast_convert_type(x, jnp.uint32)
      negative = (bits >> np.uint32(31)) != 0
      a = bits & _ABS
      biased = (a >> np.uint32(23)).astype(jnp.int32)
      mant = (a & np.uint32(0x7FFFFF)).astype(jnp.int32)
      sig = jnp.where(biased > 0, mant | np.int32(1 << 23), mant) >> np.int32(self.shift)
      sig = jnp.where(biased == 255, np.int32(0), sig)
      ex = jnp.maximum(biased, 1) - np.int32(150 - self.shift)
    else:
      negative = x < 0
      sig = jnp.abs(x)
      ex = jnp.zeros_like(x)
    if not self.split:
      return negative, [(sig, ex)]
    return negative, [(sig >> np.int32(_PART_BITS), ex + np.int32(_PART_BITS)), (sig & np.int32(0xFFF), ex)]


@dataclasses.dataclass(frozen=True)
class ExactPlan:
  """A fixed-point accumulator wide enough for every product of two dtypes, summed ``k`` times.

  The sum is held in ``limbs`` int32 limbs of :data:`LIMB_BITS` bits each (limb l weighs ``2^(base + 24 l)``).
  Each product part is deposited into two adjacent limbs (no carries); ``carry_every`` steps a parallel carry pass
  brings every limb back below 2^25, so no limb can overflow int32 in between.
  """

  a: ExactOperand
  b: ExactOperand
  base: int
  limbs: int
  carry_every: int

  @classmethod
  def of(cls, a_dtype: np.dtype, b_dtype: np.dtype, k: int) -> ExactPlan:
    a, b = ExactOperand.of(a_dtype), ExactOperand.of(b_dtype)
    contributions = (2 if a.split else 1) * (2 if b.split else 1)
    base = a.ex_min + b.ex_min
    top_position = a.ex_max + b.ex_max - base  # least significant bit of the largest part product
    # |sum| < k * contributions * 2^(top_position + 24); one more bit for the sign, one spare limb for carries.
    bits = top_position + LIMB_BITS + max(k * contributions, 1).bit_length() + 1
    limbs = max(-(-bits // LIMB_BITS), top_position // LIMB_BITS + 2) + 1
    return cls(a, b, base, limbs, 64 // contributions)

  def deposit(self, limbs: list[jax.Array], col: jax.Array, row: jax.Array) -> list[jax.Array]:
    """Adds the exact product ``col * row`` (broadcast to the limbs' shape) to the limbs."""
    na, pa = self.a.parts(col)
    nb, pb = self.b.parts(row)
    negative = na ^ nb
    limbs = list(limbs)
    for sa, ea in pa:
      for sb, eb in pb:
        sig = sa * sb  # < 2^24
        pos = ea + eb - np.int32(self.base)  # >= 0
        lo_limb = (pos * np.int32(2731)) >> np.int32(16)  # pos // 24, exact for pos < 8192
        offset = pos - lo_limb * np.int32(LIMB_BITS)
        v0 = (sig << offset) & _LIMB_MASK
        v1 = sig >> (np.int32(LIMB_BITS) - offset)
        v0 = jnp.where(negative, -v0, v0)
        v1 = jnp.where(negative, -v1, v1)
        for i in range(self.limbs - 1):  # the top limb only ever receives carries
          add = jnp.where(lo_limb == i, v0, np.int32(0))
          if i > 0:
            add = add + jnp.where(lo_limb == i - 1, v1, np.int32(0))
          limbs[i] = limbs[i] + add
    return limbs

  def carry(self, limbs: list[jax.Array]) -> list[jax.Array]:
    """One parallel carry pass: every limb but the top one ends in [-2^7, 2^24 + 2^7)."""
    shift = np.int32(LIMB_BITS)
    out = [limbs[0] & _LIMB_MASK]
    for i in range(1, self.limbs - 1):
      out.append((limbs[i] & _LIMB_MASK) + (limbs[i - 1] >> shift))
    out.append(limbs[-1] + (limbs[-2] >> shift))
    return out

  def _normalize(self, limbs: list[jax.Array]) -> list[jax.Array]:
    limbs = list(limbs)
    for i in range(self.limbs - 1):
      limbs[i + 1] = limbs[i + 1] + (limbs[i] >> np.int32(LIMB_BITS))
      limbs[i] = limbs[i] & _LIMB_MASK
    return limbs

  def round(self, limbs: list[jax.Array]) -> jax.Array:
    """The accumulated value rounded once to float32 (nearest even, subnormals and overflow to inf included)."""
    limbs = self._normalize(limbs)
    negative = limbs[-1] < 0
    limbs = self._normalize([jnp.where(negative, -v, v) for v in limbs])
    top = jnp.full(limbs[0].shape, -1, jnp.int32)
    for i, v in enumerate(limbs):
      top = jnp.where(v != 0, np.int32(i), top)

    def pick(offset):
      out = jnp.zeros_like(limbs[0])
      for i, v in enumerate(limbs):
        out = jnp.where(top - offset == i, v, out)
      return out

    t0, t1, t2 = pick(0), pick(1), pick(2)
    rest = jnp.zeros(t0.shape, bool)
    for i, v in enumerate(limbs):
      rest = rest | ((v != 0) & (np.int32(i) < top - 2))
    lead = np.int32(32) - jax.lax.clz(t0)  # bits in the top limb, 1..24
    # The leading 30 bits of t0:t1:t2 with everything below them folded into a sticky bit: rounding that to the
    # 24 bits of float32 is the correct rounding of the whole sum.
    s1 = np.int32(6) - lead
    up = s1 >= 0
    w1 = jnp.where(up, t1 << jnp.clip(s1, 0, 5), t1 >> jnp.clip(-s1, 0, 18))
    w2 = jnp.where(up, t2 >> jnp.clip(np.int32(LIMB_BITS) - s1, 19, 24), np.int32(0))
    lost1 = jnp.where(up, np.int32(0), t1 & ((np.int32(1) << jnp.clip(-s1, 0, 18)) - np.int32(1)))
    lost2 = jnp.where(up, t2 & ((np.int32(1) << jnp.clip(np.int32(LIMB_BITS) - s1, 19, 24)) - np.int32(1)), t2)
    sticky = (lost1 != 0) | (lost2 != 0) | rest
    window = (t0 << (np.int32(30) - lead)) | w1 | w2 | sticky.astype(jnp.int32)
    exponent = np.int32(self.base) + np.int32(LIMB_BITS) * top + lead - np.int32(1)
    return compose(negative, exponent, window.astype(jnp.uint32), 29, F32)
