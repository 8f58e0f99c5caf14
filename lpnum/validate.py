"""Argument checks shared by the public entry points: each raises a TypeError or ValueError naming the argument, its
value and what is allowed.

Checks of types, shapes and dtypes run at trace time. Checks of *values* (a scale must be positive, a code must fit
its format) run where the value is concrete: on eager calls, and on NumPy or Python inputs under ``jit``; traced
values pass, with the documented behaviour of the function (NaN out for a non-positive scale, masked codes).
"""

from __future__ import annotations

import operator
import warnings
from collections.abc import Collection

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["check_flag", "check_int", "check_number", "check_axis", "check_key", "check_positive",
           "check_float_scalar", "as_array",
           "as_float_array", "as_dtype", "is_concrete", "short", "host_float64", "float32_with_warning"]


def short(value: object, limit: int = 60) -> str:
  """``repr(value)``, cut to ``limit`` characters (a named lpnum object shows its type and name)."""
  name = getattr(value, "name", None)
  if isinstance(name, str) and not isinstance(value, str | np.dtype):
    return f"{type(value).__name__}({name!r})"
  text = repr(value)
  return text if len(text) <= limit else text[:limit - 3] + "..."


def check_flag(name: str, value: object) -> bool:
  """``value`` if it is a bool (Python or NumPy); else TypeError naming ``name``. Flags are never truthiness:
  ``tensor_scale="no"`` must not turn a scale on."""
  if isinstance(value, np.bool_):
    return bool(value)
  if not isinstance(value, bool):
    raise TypeError(f"{name}={short(value)} must be True or False")
  return value


def check_int(name: str, value: object, lo: int | None = None, hi: int | None = None) -> int:
  """``value`` as a Python int if it is an integer (Python or NumPy, not a bool) in ``[lo, hi]``."""
  if isinstance(value, bool | np.bool_):
    raise TypeError(f"{name}={value!r} must be an integer, not a bool")
  try:
    value = operator.index(value)
  except TypeError:
    raise TypeError(f"{name}={short(value)} must be an integer") from None
  if (lo is not None and value < lo) or (hi is not None and value > hi):
    bounds = f"[{lo if lo is not None else '-inf'}, {hi if hi is not None else 'inf'}]"
    raise ValueError(f"{name}={value} must be in {bounds}")
  return value


def check_number(name: str, value: object, *, positive: bool = False, at_least: float | None = None) -> float:
  """``value`` as a finite Python float (a real number, not a bool or array), positive or at least ``at_least``
  if asked."""
  if isinstance(value, bool | np.bool_) or not isinstance(value, int | float | np.integer | np.floating):
    raise TypeError(f"{name}={short(value)} must be a real number")
  value = float(value)
  if not np.isfinite(value):
    raise ValueError(f"{name}={value} must be finite")
  if positive and not value > 0:
    raise ValueError(f"{name}={value} must be positive")
  if at_least is not None and value < at_least:
    raise ValueError(f"{name}={value} must be at least {at_least}")
  return value


def check_axis(name: str, axis: object, ndim: int) -> int:
  """``axis`` as an index in ``[0, ndim)``, for an integer in ``[-ndim, ndim)``."""
  axis = check_int(name, axis)
  if not -ndim <= axis < ndim:
    raise ValueError(f"{name}={axis} is out of range for an array with {ndim} dimensions")
  return axis % ndim


def is_concrete(x: object) -> bool:
  """Whether ``x`` holds values now (not a tracer inside jit, vmap or grad)."""
  return not isinstance(x, jax.core.Tracer)


def check_key(name: str, key: object) -> jax.Array:
  """``key`` if it is one JAX PRNG key: a typed key (``jax.random.key``) of shape () or a raw uint32 key of shape
  (2,) (``jax.random.PRNGKey``)."""
  if not isinstance(key, jax.Array | np.ndarray):
    raise TypeError(f"{name}={short(key)} must be a PRNG key from jax.random.key(seed)")
  if jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
    if key.shape != ():
      raise ValueError(f"{name} must be one PRNG key (shape ()), got a key array of shape {key.shape}")
  elif key.dtype != np.uint32 or key.shape != (2,):
    raise TypeError(f"{name} must be a PRNG key from jax.random.key(seed), got an array of dtype {key.dtype} and "
                    f"shape {key.shape}")
  return key


def as_array(x: object, name: str = "x") -> jax.Array:
  """``x`` as a jax array: Python scalars and sequences become float32; arrays keep their dtype; anything else
  (or a sequence that is not a rectangular array of numbers) is a TypeError naming ``name``."""
  if isinstance(x, bool):
    raise TypeError(f"{name}={x!r} must be an array of numbers, not a bool")
  if isinstance(x, float | int | list | tuple):
    return jnp.asarray(_host_numbers(x, name).astype(np.float32))
  if isinstance(x, jax.Array | np.ndarray | np.generic):
    if not isinstance(x, jax.core.Tracer) and np.dtype(x.dtype).kind not in "biufc" and not _is_ml_dtype(x.dtype):
      raise TypeError(f"{name} must be an array of numbers, got dtype {x.dtype}")
    return jnp.asarray(x)
  raise TypeError(f"{name} must be an array, got {type(x).__name__}")


def _host_numbers(x: object, name: str) -> np.ndarray:
  """A Python number or (nested) sequence as a NumPy array of numbers; strings, ragged or mixed sequences are a
  TypeError naming ``name``."""
  try:
    array = np.asarray(x)
  except (TypeError, ValueError) as err:
    raise TypeError(f"{name}={short(x)} is not a rectangular array of numbers ({err})") from None
  if array.dtype.kind not in "biufc" or (array.dtype.kind == "b" and array.ndim == 0):
    raise TypeError(f"{name}={short(x)} must be numbers, got {array.dtype.name} values")
  return array


def as_float_array(x: object, name: str = "x") -> jax.Array:
  """:func:`as_array` for arguments that must be floating point (any float dtype)."""
  x = as_array(x, name)
  if not jnp.issubdtype(x.dtype, jnp.floating):
    raise TypeError(f"{name} must be a float array, got dtype {x.dtype}")
  return x


def _is_ml_dtype(dtype) -> bool:
  return jnp.issubdtype(dtype, jnp.floating) or jnp.issubdtype(dtype, jnp.integer)


def check_positive(name: str, value: object, *, learned: bool = False) -> jax.Array:
  """``value`` (a number or a real array) as a float32 array whose values, where concrete, are finite and
  positive (a given scale, a step, a clipping level). A ``learned`` parameter is checked only where it is a
  constant (a Python number or NumPy array): a JAX array there is a trained value, which training may move
  anywhere, and is used as it is."""
  if isinstance(value, bool | np.bool_) or isinstance(value, str | bytes):
    raise TypeError(f"{name}={short(value)} must be a positive number or array")
  if isinstance(value, float | int | list | tuple):
    value = _host_numbers(value, name).astype(np.float64)
  array = value if isinstance(value, np.ndarray | np.generic) else as_array(value, name)
  if jnp.issubdtype(array.dtype, jnp.complexfloating) or not (jnp.issubdtype(array.dtype, jnp.floating)
                                                                 or jnp.issubdtype(array.dtype, jnp.integer)):
    raise TypeError(f"{name} must be a real array, got dtype {array.dtype}")
  if is_concrete(array) and not (learned and isinstance(array, jax.Array)):
    host = np.asarray(array, np.float64)
    bad = ~(np.isfinite(host) & (host > 0))
    if bad.any():
      raise ValueError(f"{name} must be finite and positive; got {host[bad].ravel()[0]!r}")
    if (host > np.finfo(np.float32).max).any():
      raise ValueError(f"{name} must be at most float32's largest value; got {host.max()!r}")
  if isinstance(array, np.ndarray | np.generic):
    return jnp.asarray(np.asarray(array, np.float32))
  return array if jnp.issubdtype(array.dtype, jnp.floating) else array.astype(jnp.float32)


def check_float_scalar(name: str, value: object, *, positive: bool = False) -> jax.Array | None:
  """``value`` (None, or a 0-d float array or number) as a float32 scalar; ``positive``: where concrete, it must be
  finite and positive."""
  if value is None:
    return None
  v = as_array(value)
  if v.shape != () or not jnp.issubdtype(v.dtype, jnp.floating):
    raise ValueError(f"{name} must be a float scalar, got shape {v.shape} dtype {v.dtype}")
  if positive and is_concrete(v) and not (np.isfinite(float(v)) and float(v) > 0):
    raise ValueError(f"{name}={float(v)!r} must be finite and positive")
  return v.astype(jnp.float32)


def as_dtype(name: str, value: object, allowed: Collection[np.dtype]) -> np.dtype:
  """``value`` as a NumPy dtype that is one of ``allowed``. Strings must be printable: NumPy takes some control
  characters as type codes (``"\\x17"`` is float16)."""
  try:
    if isinstance(value, str) and not value.isprintable():
      raise TypeError
    dtype = np.dtype(value)
  except (TypeError, ValueError, SyntaxError):  # NumPy parses dtype strings, and raises all three
    raise TypeError(f"{name}={short(value)} is not a dtype; expected one of "
                    f"{[np.dtype(d).name for d in allowed]}") from None
  if dtype not in allowed:
    raise TypeError(f"{name}={dtype.name} must be one of {[np.dtype(d).name for d in allowed]}")
  return dtype


def host_float64(x: object) -> np.ndarray | None:
  """``x`` as a NumPy float64 array if it holds float64 values on the host (a float64 NumPy array or scalar, a
  Python float or a sequence of numbers), else None (JAX arrays, other dtypes, and malformed input, which
  :func:`as_array` names)."""
  if isinstance(x, float | list | tuple) and not isinstance(x, bool):
    try:
      items = np.asarray(x)
    except (TypeError, ValueError):
      return None
    if items.dtype.kind not in "biuf":  # strings (NumPy would parse "0" as 0.0), objects, complex numbers
      return None
    x = items.astype(np.float64)
  if isinstance(x, np.ndarray | np.float64) and np.dtype(x.dtype) == np.float64:
    return np.asarray(x)
  return None


def float32_with_warning(x: np.ndarray, why: str) -> np.ndarray:
  """float64 ``x`` rounded to float32 (nearest even), with a UserWarning saying ``why`` where a value changes."""
  with np.errstate(over="ignore"):
    near = x.astype(np.float32)
  if not np.array_equal(near.astype(np.float64), x, equal_nan=True):
    warnings.warn(f"x is float64: {why}", UserWarning, stacklevel=5)
  return near
