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

from lpnum.carrier import INPUT_CARRIERS, Carrier, carrier_for
from lpnum.rounding import Overflow, Rounding, random_bits
from lpnum.formats import TABLE_BITS, Format, as_format, table_decode
from lpnum.validate import as_array

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
  float32). The gradient is the straight-through estimator (identity).

  Rules, in order: NaN stays NaN where the format has NaN/NaR, else becomes a zero of the NaN's sign (as
  ml_dtypes does); the magnitude is rounded on the format's grid, unbounded above; overflow is then decided
  (``saturate``: to +-max finite, infinities included; ``non_saturating``: to inf where the format has it, else
  NaN, else max finite, and to max finite for modes that round this value toward zero, as IEEE 754 does);
  formats without -0 return +0; formats without zero return their smallest value for nonzero inputs that
  round to zero; unsigned formats send negatives (that do not round to 0) to their smallest value
  (``saturate``) or NaN (``non_saturating``).

  Args:
    x: float32, bfloat16, float16 (or float64 with x64 enabled) array.
    fmt: a format or its name (see ``lpnum.get_format``).
    rounding: one of ``nearest_even``, ``nearest_away``, ``toward_zero``, ``up``, ``down``, ``to_odd``,
      ``stochastic``.
    overflow: ``saturate``, ``non_saturating``, or for integer formats ``wrap``.
    key: a ``jax.random.key``; required for (and only used by) stochastic rounding.
    stochastic_bits: for stochastic rounding, use only this many random bits (1..32), as hardware does;
      rounding up then has probability ``floor(f * 2^k) / 2^k`` for a fraction ``f`` of the gap, a bias toward
      zero of less than ``2^-k`` of the gap.

  Returns:
    The rounded array, same shape and dtype as ``x``.

  Raises:
    TypeError: ``x`` is not a float array, or ``fmt`` is not a format.
    ValueError: unknown ``rounding``/``overflow``, a missing ``key``, or a format whose values ``x``'s dtype
      cannot hold.

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

  ``bits`` is an integer array; bits above ``fmt.bits`` are ignored. NaN codes give NaN, infinities inf.

  Example:
    >>> import jax.numpy as jnp, lpnum
    >>> lpnum.decode(jnp.array([0x38, 0x7e], jnp.uint8), "float8_e4m3fn")
    Array([  1., 448.], dtype=float32)
  """
  fmt = as_format(fmt)
  bits = jnp.asarray(bits)
  if not jnp.issubdtype(bits.dtype, jnp.integer):
    raise TypeError(f"bits must be an integer array of codes, got dtype {bits.dtype}")
  dtype = np.dtype(dtype)
  if dtype not in INPUT_CARRIERS:
    raise TypeError(f"dtype={dtype} must be one of float32, bfloat16, float16, float64")
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
  x = as_array(x)
  if np.dtype(x.dtype) not in INPUT_CARRIERS:
    raise TypeError(f"x must be float32, bfloat16, float16 or float64, got dtype {x.dtype}")
  why = fmt.carrier_problem(INPUT_CARRIERS[np.dtype(x.dtype)])
  if why is not None:
    raise ValueError(f"fmt={fmt.name} cannot be quantized into x.dtype={x.dtype}: {why}; use a wider x")
  if mode is Rounding.STOCHASTIC:
    if key is None:
      raise ValueError("rounding='stochastic' needs key=jax.random.key(...)")
    if stochastic_bits is not None and (isinstance(stochastic_bits, bool) or not isinstance(stochastic_bits, int)
                                        or not 1 <= stochastic_bits <= 32):
      raise ValueError(f"stochastic_bits={stochastic_bits!r} must be an integer in [1, 32]")
  elif stochastic_bits is not None:
    raise ValueError(f"stochastic_bits={stochastic_bits!r} is only for rounding='stochastic'")
  return x, fmt, mode, ov, stochastic_bits


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
