"""Argument checks shared by the public entry points: each raises a TypeError or ValueError naming the argument, its
value and what is allowed."""

from __future__ import annotations

import numpy as np

__all__ = ["check_flag"]


def check_flag(name: str, value: object) -> bool:
  """``value`` if it is a bool (Python or NumPy); else TypeError naming ``name``. Flags are never truthiness:
  ``tensor_scale="no"`` must not turn a scale on."""
  if isinstance(value, np.bool_):
    return bool(value)
  if not isinstance(value, bool):
    raise TypeError(f"{name}={value!r} must be True or False")
  return value
