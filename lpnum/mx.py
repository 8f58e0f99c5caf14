"""OCP Microscaling (MX v1.0) formats: blocks of 32 elements sharing one E8M0 power-of-two scale.

The presets are data in :mod:`lpnum.scaled.presets` (a table of their facts is there); this module names them for
the MX user. The shared exponent follows ``scale_rule`` (``floor`` by default, the spec's rule; see the README).
"""

from __future__ import annotations

import jax
from jax.typing import ArrayLike

from lpnum.qarray import QArray
from lpnum.scaled import ScaledFormat, quantize_scaled
from lpnum.scaled.presets import MX_NAMES, preset

__all__ = ["NAMES", "format", "quantize"]

#: The MX preset names.
NAMES: tuple[str, ...] = MX_NAMES


def format(name: str, *, axis: int = -1, scale_rule: str | None = None,  # noqa: A001
           block_size: int | None = None) -> ScaledFormat:
  """The ScaledFormat of an MX preset (or ``nvfp4``) along ``axis``.

  ``scale_rule`` and ``block_size`` default to the preset's own (``floor`` and 32 for MX; NVFP4's FP8 scales are
  rounded to ``nearest``, in blocks of 16); a value given overrides it, or is an error where the preset cannot
  take it (``scale_rule="ceil"`` with NVFP4's non-power-of-two scales).

  Example:
    >>> import lpnum
    >>> lpnum.mx.format("mxfp4_e2m1").emax
    2
  """
  if name != "nvfp4" and name not in NAMES:
    if not isinstance(name, str):
      raise TypeError(f"name must be an MX preset name (str), got {type(name).__name__}")
    raise ValueError(f"name={name!r}; expected one of {list(NAMES)} or 'nvfp4'")
  return preset(name, axis=axis, scale_rule=scale_rule, block_size=block_size)


def quantize(x: ArrayLike, name: str, axis: int = -1, scale_rule: str | None = None, *, block_size: int | None = None,
             rounding: str = "nearest_even", key: jax.Array | None = None, pad: bool = False) -> QArray:
  """Quantizes ``x`` to the MX format ``name`` in blocks of 32 along ``axis`` (the arguments as in :func:`format`).

  Example:
    >>> import jax.numpy as jnp, lpnum
    >>> q = lpnum.mx.quantize(jnp.linspace(-1, 1, 64).reshape(2, 32), "mxfp8_e4m3")
    >>> q.scale_codes.tolist(), q.element_codes.shape
    ([[119], [119]], (2, 32))
  """
  return quantize_scaled(x, format(name, axis=axis, scale_rule=scale_rule, block_size=block_size),
                         rounding=rounding, key=key, pad=pad)
