"""The public quantize / encode / decode functions: validate at call time, then call the format's hooks.

Each function checks its arguments in Python, then runs one jitted computation, compiled once per static
configuration (format, rounding and overflow modes, ``stochastic_bits``, dtype; formats are frozen values, so
equal formats share it) and input shape: an eager call runs as fast as a jitted one. Inside ``jax.jit``,
``vmap`` or ``grad`` the inner jit is inlined.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from lpnum.carrier import F32, F64, INPUT_CARRIERS, Carrier, carrier_for, float32_odd, sticky_in_float32
from lpnum.rounding import Overflow, Rounding, check_rounding_key, random_bits
from lpnum.formats import TABLE_BITS, Format, PositFormat, as_format, table_decode
from lpnum.validate import as_array, as_dtype, check_int, float32_with_warning, host_float64, is_concrete

__all__ = ["quantize", "encode", "decode"]


def quantize(
    x: ArrayLike,
    fmt: Format | str,
    *,
    rounding: str | Rounding = "nearest_even",
    overflow: str | Overflow = "saturate",
    key: jax.Array | None = None,
    stochastic_bits: int | None = None,
) -> jax.Array:
  """Rounds ``x`` to the values of ``fmt``; same shape and dtype as ``x``.

  Every output is exactly a value of ``fmt`` (or NaN/inf as the format's rules say), held in ``x``'s dtype.
  ``x`` is rounded once, directly, whatever its dtype (float64 inputs under ``jax_enable_x64`` do not go through
  float32). Without x64, float64 values on the host (NumPy arrays, Python floats) give float32 results and are
  still rounded once: they become float32 *to odd*, which is exact for every format whose rounding breakpoints
  float32 holds with a bit to spare (all formats of up to 16 bits but the widest); for the others (float32
  itself, posit32, wide integers) they are rounded to float32 first, with a warning where that changes a value.
  The gradient is the straight-through estimator (identity).

  Rules, in order: NaN stays NaN where the format has NaN/NaR, else becomes a zero of the NaN's sign (as
  ml_dtypes does); the magnitude is rounded on the format's grid, unbounded above; overflow is then decided
  (``saturate``: to +-max finite, infinities included; ``non_saturating``: to inf where the format has it, else
  NaN, else max finite, and to max finite for modes that round this value toward zero, as IEEE 754 does; the
  IEEE P3109 modes ``sat_finite``, ``sat_propagate`` and ``sat_none`` as :class:`lpnum.Overflow` states);
  formats without -0 return +0; formats without zero return their smallest value for nonzero inputs that
  round to zero; unsigned formats send negatives (that do not round to 0) to their smallest value
  (``saturate``) or NaN (``non_saturating``).

  Args:
    x: float32, bfloat16, float16 (or float64 with x64 enabled) array.
    fmt: a format or its name (see ``lpnum.get_format``).
    rounding: one of ``nearest_even``, ``nearest_away``, ``toward_zero``, ``up``, ``down``, ``to_odd``,
      ``stochastic``.
    overflow: ``saturate``, ``non_saturating``; for float formats also ``sat_finite``, ``sat_propagate`` and
      ``sat_none`` (IEEE P3109); for integer formats ``wrap`` instead of ``non_saturating``.
    key: a ``jax.random.key``; required for stochastic rounding, and an error with the other modes.
    stochastic_bits: for stochastic rounding, use only this many random bits (1..32), as hardware does;
      rounding up then has probability ``floor(f * 2^k) / 2^k`` for a fraction ``f`` of the gap, a bias toward
      zero of less than ``2^-k`` of the gap.

  Returns:
    The rounded array, same shape and dtype as ``x``.

  Raises:
    TypeError: ``x`` is not a float array, or ``fmt`` is not a format.
    ValueError: unknown ``rounding``/``overflow`` (or one the format's family does not take), a missing
      ``key``, or a format whose values ``x``'s dtype cannot hold (formats beyond float32's range need float64
      ``x`` under ``jax_enable_x64``).

  Example:
    >>> import jax.numpy as jnp, lpnum
    >>> lpnum.quantize(jnp.array([0.3, 464.0, 500.0]), "float8_e4m3fn").tolist()
    [0.3125, 448.0, 448.0]
  """
  x, fmt, mode, ov, stochastic_bits = _prepare(x, fmt, rounding, overflow, key, stochastic_bits)
  return _quantize_jit(x, key, fmt, mode, ov, stochastic_bits)


def encode(
    x: ArrayLike,
    fmt: Format | str,
    *,
    rounding: str | Rounding = "nearest_even",
    overflow: str | Overflow = "saturate",
    key: jax.Array | None = None,
    stochastic_bits: int | None = None,
) -> jax.Array:
  """Rounds ``x`` as :func:`quantize` does and returns the codes (bit patterns) of the results.

  Codes come in the smallest unsigned dtype that holds ``fmt.bits`` bits (``fmt.code_dtype``); signed integer
  formats use two's complement codes, posits their standard codes.

  Example:
    >>> import jax.numpy as jnp, lpnum
    >>> lpnum.encode(jnp.array([1.0, -2.0]), "float8_e4m3fn")
    Array([ 56, 192], dtype=uint8)
  """
  x, fmt, mode, ov, stochastic_bits = _prepare(x, fmt, rounding, overflow, key, stochastic_bits)
  return _encode_jit(x, key, fmt, mode, ov, stochastic_bits)


def decode(bits: ArrayLike, fmt: Format | str, dtype: jax.typing.DTypeLike = jnp.float32) -> jax.Array:
  """The values of codes ``bits`` of ``fmt``, rounded once (nearest even) to ``dtype``.

  ``bits`` is an integer array of codes in ``[0, 2^fmt.bits)``: other values are an error where they are concrete
  (eager calls, NumPy inputs); under ``jit`` the bits above ``fmt.bits`` are ignored. NaN codes give NaN,
  infinities inf.

  Example:
    >>> import jax.numpy as jnp, lpnum
    >>> lpnum.decode(jnp.array([0x38, 0x7e], jnp.uint8), "float8_e4m3fn")
    Array([  1., 448.], dtype=float32)
  """
  fmt = as_format(fmt)
  bits = _as_codes(bits, fmt)
  dtype = as_dtype("dtype", dtype, INPUT_CARRIERS)
  if dtype == np.float64 and not jax.config.jax_enable_x64:
    raise ValueError("dtype=float64 needs jax_enable_x64")
  return _decode_jit(bits, fmt, dtype)


@functools.partial(jax.jit, static_argnums=(1, 2))
def _decode_jit(bits, fmt, dtype):
  carrier = INPUT_CARRIERS[dtype]
  if fmt.bits <= TABLE_BITS and not _decodes_exactly(fmt, carrier):
    return table_decode(fmt, bits, dtype)
  mask = np.uint32((1 << fmt.bits) - 1)
  return fmt.decode_values(bits.astype(jnp.uint32) & mask, carrier)


def _as_codes(bits, fmt: Format) -> jax.Array:
  """``bits`` as an integer array of codes of ``fmt``; where the values are concrete, each must be a code (in
  ``[0, 2^fmt.bits)``)."""
  if isinstance(bits, bool) or not isinstance(bits, int | list | tuple | jax.Array | np.ndarray | np.generic):
    raise TypeError(f"bits must be an integer array of codes, got {type(bits).__name__}")
  if isinstance(bits, int | list | tuple):
    try:
      bits = np.asarray(bits)
    except (TypeError, ValueError) as err:
      raise TypeError(f"bits is not a rectangular array of integer codes ({err})") from None
  if not jnp.issubdtype(bits.dtype, jnp.integer):
    raise TypeError(f"bits must be an integer array of codes, got dtype {bits.dtype}")
  dt = np.dtype(bits.dtype)
  holds_only_codes = dt.kind == "u" and dt.itemsize * 8 <= fmt.bits  # e.g. uint16 codes of a 16-bit format
  if is_concrete(bits) and np.size(bits) and not holds_only_codes:
    lo, hi = (int(v) for v in (_min_max(bits) if isinstance(bits, jax.Array) else (bits.min(), bits.max())))
    if lo < 0 or hi >= 1 << fmt.bits:
      bad = lo if lo < 0 else hi
      raise ValueError(f"bits holds {int(bad)}, not a code of {fmt.name} (codes are 0 .. {(1 << fmt.bits) - 1})")
  return jnp.asarray(bits)


@jax.jit
def _min_max(bits):
  return jnp.min(bits), jnp.max(bits)


def _decodes_exactly(fmt: Format, carrier: Carrier) -> bool:
  """Whether ``fmt`` decodes by arithmetic into ``carrier``: its family does so faster than the table, and
  ``carrier`` holds every value (values of at most :data:`TABLE_BITS` bits have at most 16 significant bits, so
  float32 and float64 hold them where they hold the extremes)."""
  return fmt.arithmetic_decode and carrier.mantissa_bits >= TABLE_BITS and fmt.carrier_problem(carrier) is None


def _prepare(x, fmt, rounding, overflow, key, stochastic_bits):
  fmt = as_format(fmt)
  mode = Rounding.parse(rounding, "rounding")
  ov = Overflow.parse(overflow, "overflow")
  fmt.check_overflow(ov)
  x = as_array(_float64_on_host(x, fmt))
  if np.dtype(x.dtype) not in INPUT_CARRIERS:
    raise TypeError(f"x must be float32, bfloat16, float16 or float64, got dtype {x.dtype}")
  why = fmt.carrier_problem(INPUT_CARRIERS[np.dtype(x.dtype)])
  if why is not None:
    needs_f64 = fmt.carrier_problem(F32) is not None and fmt.carrier_problem(F64) is None
    hint = "its values need float64 x, with jax_enable_x64 on" if needs_f64 else "use a wider x"
    raise ValueError(f"fmt={fmt.name} cannot be quantized into x.dtype={x.dtype}: {why}; {hint}")
  check_rounding_key(mode, key)
  if mode is Rounding.STOCHASTIC:
    if stochastic_bits is not None:
      stochastic_bits = check_int("stochastic_bits", stochastic_bits, 1, 32)
  elif stochastic_bits is not None:
    raise ValueError(f"stochastic_bits={stochastic_bits!r} is only for rounding='stochastic'")
  return x, fmt, mode, ov, stochastic_bits


def _float64_on_host(x, fmt: Format):
  """Float64 values held on the host (NumPy float64 arrays, Python floats) when ``jax_enable_x64`` is off, made
  float32 so that they are still rounded once: to odd (:func:`lpnum.carrier.float32_odd`) where that is exact for
  ``fmt``; else to nearest, with a warning where that changes a value. Anything else passes unchanged."""
  host = None if jax.config.jax_enable_x64 else host_float64(x)
  if host is None:
    return x
  if _rounds_once_through_float32(fmt):
    return float32_odd(host)
  return float32_with_warning(host, f"jax_enable_x64 is off, so its values are rounded to float32 before {fmt.name}, "
                              "which can differ from rounding them once; enable jax_enable_x64 to round them once")


@functools.lru_cache(maxsize=None)
def _rounds_once_through_float32(fmt: Format) -> bool:
  """Whether every rounding breakpoint of ``fmt`` is a float32 value with an even significand: its values, the
  midpoints between neighbours (for posits, the values of the posit one bit wider, where the bit string rounds),
  and the midpoint above the largest value, where overflow begins."""
  if fmt.bits + isinstance(fmt, PositFormat) > 20:  # tables of at most 2^20 values
    return False
  values = np.abs(fmt.decode_exact(np.arange(1 << fmt.bits)))
  values = np.unique(values[np.isfinite(values)])
  if isinstance(fmt, PositFormat):
    wider = PositFormat(n=fmt.n + 1, es=fmt.es)
    points = np.abs(wider.decode_exact(np.arange(1 << wider.bits)))
  else:
    mids = (values[1:] + values[:-1]) / 2
    top = values[-1] + (values[-1] - values[-2]) / 2 if values.size > 1 else values[-1] * 1.5
    points = np.concatenate([values, mids, [top]])
  return sticky_in_float32(points)


def _round_in_carrier(x, key, fmt, mode, overflow, stochastic_bits):
  """Rounds ``x`` to ``fmt`` in its carrier float; returns the rounded values and the carrier."""
  carrier = carrier_for(x.dtype)
  rand = random_bits(key, x.shape) if mode is Rounding.STOCHASTIC else None
  return fmt.round_values(x.astype(carrier.dtype), carrier, mode, overflow, rand, stochastic_bits), carrier


@functools.partial(jax.jit, static_argnums=(2, 3, 4, 5))
def _quantize_jit(x, key, fmt, mode, overflow, stochastic_bits):
  return _quantize_ste(x, key, fmt, mode, overflow, stochastic_bits)


@functools.partial(jax.jit, static_argnums=(2, 3, 4, 5))
def _encode_jit(x, key, fmt, mode, overflow, stochastic_bits):
  y, carrier = _round_in_carrier(x, key, fmt, mode, overflow, stochastic_bits)
  return fmt.encode_values(y, carrier)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4, 5))
def _quantize_ste(x, key, fmt, mode, overflow, stochastic_bits):
  y, _ = _round_in_carrier(x, key, fmt, mode, overflow, stochastic_bits)
  return y.astype(x.dtype)


def _quantize_fwd(x, key, fmt, mode, overflow, stochastic_bits):
  return _quantize_ste(x, key, fmt, mode, overflow, stochastic_bits), key


def _quantize_bwd(fmt, mode, overflow, stochastic_bits, key, g):
  del fmt, mode, overflow, stochastic_bits
  key_ct = None if key is None else np.zeros(key.shape, jax.dtypes.float0)
  return g, key_ct


_quantize_ste.defvjp(_quantize_fwd, _quantize_bwd)
