"""Argument checks shared by the public entry points: each raises a TypeError or ValueError naming the argument, its
value and what is allowed."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["check_flag", "as_array"]


def check_flag(name: str, value: object) -> bool:
  """``value`` if it is a bool (Python or NumPy); else TypeError naming ``name``. Flags are never truthiness:
  ``tensor_scale="no"`` must not turn a scale on."""
  if isinstance(value, np.bool_):
    return bool(value)
  if not isinstance(value, bool):
    raise TypeError(f"{name}={value!r} must be True or False")
  return value


def as_array(x: object) -> jax.Array:
  """``x`` as a jax array: Python scalars and sequences become float32; arrays keep their dtype; anything else is a
  TypeError naming ``x``."""
  if isinstance(x, float | int | list | tuple):
    return jnp.asarray(x, jnp.float32)
  if isinstance(x, jax.Array | np.ndarray | np.generic):
    return jnp.asarray(x)
  raise TypeError(f"x must be an array, got {type(x).__name__}")
