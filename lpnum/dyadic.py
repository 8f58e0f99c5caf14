"""Dyadic requantization: int32 accumulators rescaled by ``M0 * 2^-31 * 2^-shift`` in integer arithmetic only.

Integer-only inference (Jacob et al. 2018, "Quantization and Training of Neural Networks for Efficient
Integer-Arithmetic-Only Inference"; Yao et al. 2021, "HAWQ-V3: Dyadic Neural Network Quantization") rescales the
int32 accumulator of a layer, whose scale is ``s_in * s_w``, to the int8 codes of the next layer's input, scale
``s_out``, by the real multiplier ``M = s_in * s_w / s_out``. ``M`` is stored as a dyadic number, an integer
over a power of two, so the rescaling is an integer multiply and a shift. The formulas are gemmlowp's
(``fixedpoint.h``) and TFLite's (``MultiplyByQuantizedMultiplier``, the double-rounding form):

- :func:`quantize_multiplier`: ``M = M0 * 2^-31 * 2^-shift`` with ``M0`` in ``[2^30, 2^31)`` (a Q0.31 fixed-point
  number in ``[0.5, 1)``) and ``shift`` in ``[-31, 31]`` (negative: a left shift, for ``M >= 1``). ``M0`` is
  ``M``'s float64 significand times ``2^31`` rounded half away from zero (a significand rounding up to ``2^31``
  becomes ``2^30`` with the exponent one higher).
- :func:`saturating_rounding_doubling_high_mul`: the high 32 bits of ``2 * a * b``, rounded to nearest with ties
  up (toward +infinity, so a negative tie goes toward zero): ``(a * b + nudge) / 2^31`` truncated toward zero, ``nudge = 2^30`` for ``a * b >= 0`` and
  ``1 - 2^30`` otherwise; ``INT32_MIN * INT32_MIN`` (the one overflow) saturates to ``INT32_MAX``.
- :func:`rounding_divide_by_pot`: ``x / 2^e`` rounded to nearest, ties away from zero, by gemmlowp's
  mask/remainder/threshold form: ``(x >> e) + (remainder > threshold)`` with ``mask = 2^e - 1``,
  ``remainder = x & mask``, ``threshold = (mask >> 1) + (x < 0)``; ``e`` in ``[0, 31]``.
- :func:`multiply_by_quantized_multiplier`: ``rounding_divide_by_pot(srdhm(x * 2^left, M0), right)`` with
  ``left = max(-shift, 0)`` and ``right = max(shift, 0)``: two roundings, ties up then ties away from zero. The
  left shift saturates to the int32 range (TFLite
  multiplies without a check, which overflows in C; the result here is then the saturated value's).
- :func:`requantize`: that product plus the output zero point, saturated to the output dtype's range.

No 64-bit integer is used (JAX's x64 is off by default, and TPUs have no int64 multiplier): the 64-bit product of
:func:`saturating_rounding_doubling_high_mul` is built from four 16 x 16 -> 32-bit products of the magnitudes in
uint32, so the lowered program is int32/uint32 arithmetic only, on any backend. Multipliers and shifts may be
scalars (per tensor) or arrays broadcast against the accumulator (per channel: one per output channel, along the
last axis).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.typing import ArrayLike

from lpnum.validate import as_dtype, is_concrete, short

__all__ = ["quantize_multiplier", "saturating_rounding_doubling_high_mul", "rounding_divide_by_pot",
           "multiply_by_quantized_multiplier", "requantize", "OUTPUT_DTYPES"]

INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1
#: Output dtypes :func:`requantize` saturates to.
OUTPUT_DTYPES = (np.dtype(np.int8), np.dtype(np.uint8), np.dtype(np.int16), np.dtype(np.uint16))


def quantize_multiplier(real: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
  """The dyadic form ``(M0, shift)`` of a positive real multiplier, ``real ~ M0 * 2^-31 * 2^-shift``.

  TFLite's ``QuantizeMultiplier``: ``M0`` in ``[2^30, 2^31)`` is ``real``'s significand (in ``[0.5, 1)``, from
  float64) times ``2^31``, rounded half away from zero; the relative error ``|M - real| / real`` is at most
  ``2^-31``. ``shift`` is positive (a right shift) for ``real < 0.5`` and negative (a left shift) for
  ``real >= 1``. This runs on the host, on concrete values: multipliers are fixed when a model is converted.

  Args:
    real: one multiplier or an array of them (per channel), each in about ``[2^-32, 2^31)``: after rounding,
      ``shift`` must lie in ``[-31, 31]``.

  Returns:
    ``(M0, shift)``: two int32 NumPy arrays of ``real``'s shape.

  Raises:
    TypeError: if ``real`` is not a real number or array of them, or is traced.
    ValueError: if a value is not finite and positive, or out of the range above.

  Example:
    >>> m0, shift = quantize_multiplier([0.5, 0.1, 3.0])
    >>> m0.tolist(), shift.tolist()
    ([1073741824, 1717986918, 1610612736], [0, 3, -2])
  """
  if isinstance(real, jax.core.Tracer):
    raise TypeError("real must be concrete (a number or array on the host): quantize_multiplier runs when a model "
                    "is converted, not under jit")
  if isinstance(real, bool | np.bool_ | str | bytes):
    raise TypeError(f"real={short(real)} must be a positive real number or array of them")
  try:
    r = np.asarray(real)
  except (TypeError, ValueError):
    raise TypeError(f"real={short(real)} must be a positive real number or array of them") from None
  if r.dtype.kind not in "iuf":
    raise TypeError(f"real={short(real)} must be a positive real number or array of them, got dtype {r.dtype}")
  r = r.astype(np.float64)
  bad = ~(np.isfinite(r) & (r > 0))
  if bad.any():
    raise ValueError(f"real must be finite and positive; got {r[bad].ravel()[0]!r}")
  significand, exponent = np.frexp(r)  # r = significand * 2^exponent, significand in [0.5, 1)
  m0 = np.floor(significand * 2.0**31 + 0.5)  # exact in float64: half away from zero for positive values
  carry = m0 == 2.0**31
  m0 = np.where(carry, 2.0**30, m0)
  shift = -(exponent + carry)
  out = (shift < -31) | (shift > 31)
  if out.any():
    value = r[out].ravel()[0]
    raise ValueError(f"real={value!r} is out of range: M0 * 2^-31 * 2^-shift needs shift in [-31, 31], "
                     "i.e. about 2^-32 <= real < 2^31")
  return m0.astype(np.int32), shift.astype(np.int32)


def _int32(name: str, x: ArrayLike) -> jax.Array:
  """``x`` as an int32 array: an int32 array, or a Python/NumPy integer in the int32 range."""
  if isinstance(x, bool | np.bool_):
    raise TypeError(f"{name}={x!r} must be an int32 array or integer, not a bool")
  if isinstance(x, int | np.integer):
    if not INT32_MIN <= int(x) <= INT32_MAX:
      raise ValueError(f"{name}={int(x)} must be in the int32 range [{INT32_MIN}, {INT32_MAX}]")
    return jnp.asarray(x, jnp.int32)
  if not isinstance(x, jax.Array | np.ndarray):
    raise TypeError(f"{name}={short(x)} must be an int32 array or integer")
  if np.dtype(x.dtype) != np.int32:
    raise TypeError(f"{name} must be int32, got dtype {x.dtype}")
  return jnp.asarray(x)


def _check_range(name: str, x: jax.Array, lo: int, hi: int) -> None:
  """Where ``x`` is concrete, every value must lie in ``[lo, hi]`` (traced values pass)."""
  if is_concrete(x):
    host = np.asarray(x)
    bad = (host < lo) | (host > hi)
    if bad.any():
      raise ValueError(f"{name}={int(host[bad].ravel()[0])} must be in [{lo}, {hi}]")


def _u32(x: jax.Array) -> jax.Array:
  return lax.bitcast_convert_type(x, jnp.uint32)


def _wide_mul_u32(a: jax.Array, b: jax.Array) -> tuple[jax.Array, jax.Array]:
  """The 64-bit product of uint32 ``a`` and ``b`` as ``(high, low)`` uint32 words, from 16-bit limbs."""
  mask = jnp.uint32(0xFFFF)
  a0, a1, b0, b1 = a & mask, a >> 16, b & mask, b >> 16
  t = a0 * b0
  w0, t = t & mask, a1 * b0 + (t >> 16)  # each partial sum stays below 2^32
  w1, w2 = t & mask, t >> 16
  t = a0 * b1 + w1
  return a1 * b1 + w2 + (t >> 16), (t << 16) | w0


def saturating_rounding_doubling_high_mul(a: ArrayLike, b: ArrayLike) -> jax.Array:
  """gemmlowp's ``SaturatingRoundingDoublingHighMul``: ``a * b / 2^31`` rounded to nearest, ties up.

  ``(a * b + nudge) / 2^31`` in exact integers, truncated toward zero, with ``nudge = 2^30`` if ``a * b >= 0``
  else ``1 - 2^30``: ties go toward +infinity (1.5 to 2, -1.5 to -1); ``a = b = INT32_MIN`` saturates to
  ``INT32_MAX``. With ``b = M0`` in ``[2^30, 2^31)`` it multiplies ``a`` by the Q0.31 number ``M0 / 2^31``.

  Args:
    a, b: int32 arrays (or Python integers), broadcast against each other.

  Returns:
    The int32 result, of the broadcast shape.

  Raises:
    TypeError: if an operand is not int32.

  Example:
    >>> import jax.numpy as jnp
    >>> a = jnp.array([1000, -1000, 3, -2**31], jnp.int32)
    >>> saturating_rounding_doubling_high_mul(a, jnp.int32(2**30)).tolist()  # times one half
    [500, -500, 2, -1073741824]
    >>> int(saturating_rounding_doubling_high_mul(jnp.int32(-2**31), jnp.int32(-2**31)))
    2147483647
  """
  return _high_mul(_int32("a", a), _int32("b", b))


@jax.jit
def _high_mul(a: jax.Array, b: jax.Array) -> jax.Array:
  a, b = jnp.broadcast_arrays(a, b)
  overflow = (a == b) & (a == INT32_MIN)
  negative = (a < 0) != (b < 0)
  ua, ub = _u32(a), _u32(b)
  ma = jnp.where(a < 0, jnp.uint32(0) - ua, ua)  # |a| (2^31 for INT32_MIN)
  mb = jnp.where(b < 0, jnp.uint32(0) - ub, ub)
  high, low = _wide_mul_u32(ma, mb)
  nudge = jnp.where(negative, jnp.uint32(2**30 - 1), jnp.uint32(2**30))  # -(|p| - nudge') rounds toward zero
  total = low + nudge
  high = high + (total < low).astype(jnp.uint32)
  magnitude = lax.bitcast_convert_type((high << 1) | (total >> 31), jnp.int32)  # < 2^31 unless overflow
  return jnp.where(overflow, jnp.int32(INT32_MAX), jnp.where(negative, -magnitude, magnitude))


def rounding_divide_by_pot(x: ArrayLike, exponent: ArrayLike) -> jax.Array:
  """gemmlowp's ``RoundingDivideByPOT``: ``x / 2^exponent`` rounded to nearest, ties away from zero.

  ``(x >> e) + (remainder > threshold)`` with ``mask = 2^e - 1``, ``remainder = x & mask`` and
  ``threshold = (mask >> 1) + (x < 0)``: an arithmetic shift (a floor) corrected upward past the half, where a
  negative ``x``'s half itself counts as below (so -2.5 gives -3, 2.5 gives 3).

  Args:
    x: an int32 array (or Python integer).
    exponent: shift in ``[0, 31]``, an integer or int32 array broadcast against ``x`` (per channel); values are
      checked where concrete.

  Returns:
    The int32 quotient, of the broadcast shape.

  Raises:
    TypeError: if ``x`` or ``exponent`` is not int32.
    ValueError: if a concrete ``exponent`` is outside ``[0, 31]``.

  Example:
    >>> import jax.numpy as jnp
    >>> rounding_divide_by_pot(jnp.array([5, -5, 6, -6, 7], jnp.int32), 1).tolist()  # 2.5 -2.5 3 -3 3.5
    [3, -3, 3, -3, 4]
  """
  x, e = _int32("x", x), _int32("exponent", exponent)
  _check_range("exponent", e, 0, 31)
  return _divide_by_pot(x, e)


@jax.jit
def _divide_by_pot(x: jax.Array, e: jax.Array) -> jax.Array:
  x, e = jnp.broadcast_arrays(x, e)
  mask = lax.bitcast_convert_type((jnp.uint32(1) << _u32(e)) - jnp.uint32(1), jnp.int32)
  remainder = x & mask
  threshold = (mask >> 1) + (x < 0).astype(jnp.int32)
  return (x >> e) + (remainder > threshold).astype(jnp.int32)


def _saturating_left_shift(x: jax.Array, left: jax.Array) -> jax.Array:
  """``x * 2^left`` saturated to the int32 range, ``left`` in ``[0, 31]``."""
  over, under = jnp.int32(INT32_MAX) >> left, jnp.int32(INT32_MIN) >> left
  return jnp.where(x > over, jnp.int32(INT32_MAX), jnp.where(x < under, jnp.int32(INT32_MIN), x << left))


def multiply_by_quantized_multiplier(x: ArrayLike, multiplier: ArrayLike, shift: ArrayLike) -> jax.Array:
  """``x * M0 * 2^-31 * 2^-shift`` in int32, as TFLite's ``MultiplyByQuantizedMultiplier``.

  ``rounding_divide_by_pot(saturating_rounding_doubling_high_mul(x * 2^left, M0), right)`` with
  ``left = max(-shift, 0)`` (saturating) and ``right = max(shift, 0)``: two roundings to nearest, the first with
  ties up, the second with ties away from zero (so the result can differ by one from ``x * M`` rounded once).

  Args:
    x: int32 array (an accumulator).
    multiplier: ``M0``, int32 in ``[0, 2^31)`` (from :func:`quantize_multiplier`), scalar or per channel.
    shift: int32 in ``[-31, 31]``, scalar or per channel (positive shifts right).

  Returns:
    The int32 product, of the broadcast shape.

  Raises:
    TypeError: if an argument is not int32.
    ValueError: if a concrete ``multiplier`` is negative or a concrete ``shift`` is outside ``[-31, 31]``.

  Example:
    >>> import jax.numpy as jnp
    >>> m0, shift = quantize_multiplier(0.25)
    >>> multiply_by_quantized_multiplier(jnp.array([100, -102, 10], jnp.int32), m0, shift).tolist()
    [25, -26, 3]
  """
  x, m, s = _int32("x", x), _int32("multiplier", multiplier), _int32("shift", shift)
  _check_range("multiplier", m, 0, INT32_MAX)
  _check_range("shift", s, -31, 31)
  return _multiply(x, m, s)


@jax.jit
def _multiply(x: jax.Array, m: jax.Array, s: jax.Array) -> jax.Array:
  left, right = jnp.maximum(-s, 0), jnp.maximum(s, 0)
  return _divide_by_pot(_high_mul(_saturating_left_shift(x, left), m), right)


def requantize(acc: ArrayLike, multiplier: ArrayLike, shift: ArrayLike, zero_point: ArrayLike = 0,
               out_dtype: jax.typing.DTypeLike = jnp.int8) -> jax.Array:
  """Rescales int32 accumulators to the codes of ``out_dtype``: ``clamp(acc * M + zero_point)`` in integers.

  ``multiply_by_quantized_multiplier(acc, multiplier, shift) + zero_point``, saturated to ``out_dtype``'s range
  (the sum is formed after clamping the product to ``[lo - zero_point, hi - zero_point]``, so it cannot
  overflow int32).

  Args:
    acc: int32 accumulators, e.g. ``x_codes @ w_codes + bias`` at scale ``s_in * s_w``.
    multiplier: ``M0`` of ``M = s_in * s_w / s_out`` (:func:`quantize_multiplier`), int32, scalar (per tensor)
      or broadcast against ``acc`` (per channel: shape ``(N,)`` for the last axis).
    shift: the matching int32 shift(s).
    zero_point: the output zero point, an integer or int32 array in ``out_dtype``'s range.
    out_dtype: one of :data:`OUTPUT_DTYPES` (int8, uint8, int16, uint16).

  Returns:
    The codes, ``out_dtype``, of the broadcast shape.

  Raises:
    TypeError: if an argument is not int32 or ``out_dtype`` is not allowed.
    ValueError: for out-of-range multipliers, shifts or a concrete zero point outside ``out_dtype``'s range.

  Example:
    >>> import jax.numpy as jnp
    >>> m0, shift = quantize_multiplier([0.5, 0.01])           # per channel
    >>> acc = jnp.array([[300, 300], [-300, 25_000]], jnp.int32)
    >>> requantize(acc, m0, shift).tolist()                   # 150 saturates to 127
    [[127, 3], [-128, 127]]
  """
  dtype = as_dtype("out_dtype", out_dtype, OUTPUT_DTYPES)
  info = np.iinfo(dtype)
  zp = _int32("zero_point", zero_point)
  _check_range("zero_point", zp, int(info.min), int(info.max))
  acc, m, s = _int32("acc", acc), _int32("multiplier", multiplier), _int32("shift", shift)
  _check_range("multiplier", m, 0, INT32_MAX)
  _check_range("shift", s, -31, 31)
  return _requantize(acc, m, s, zp, dtype)


@functools.partial(jax.jit, static_argnums=4)
def _requantize(acc: jax.Array, m: jax.Array, s: jax.Array, zp: jax.Array, dtype: np.dtype) -> jax.Array:
  info = np.iinfo(dtype)
  lo, hi = jnp.int32(info.min) - zp, jnp.int32(info.max) - zp
  return (jnp.clip(_multiply(acc, m, s), lo, hi) + zp).astype(dtype)
