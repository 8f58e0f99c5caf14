"""NVFP4: FP4 E2M1 elements in blocks of 16, an FP8 E4M3 scale per block and a float32 per-tensor scale.

The preset is data in :mod:`lpnum.scaled.presets` (the recipe is described there); this module names it for the
NVFP4 user.
"""

from __future__ import annotations

import jax
from jax.typing import ArrayLike

from lpnum.qarray import QArray
from lpnum.scaled import ScaledFormat, quantize_scaled
from lpnum.scaled.presets import preset
from lpnum.validate import check_flag

__all__ = ["format", "quantize"]


def format(*, axis: int = -1, tensor_scale: bool = True, tile: bool = False) -> ScaledFormat:  # noqa: A001
  """The NVFP4 ScaledFormat: blocks of 16 along ``axis`` (or 16x16 tiles over the last two axes)."""
  check_flag("tensor_scale", tensor_scale)
  return preset("nvfp4", axis=axis, tensor_scale=tensor_scale, tile=tile)


def quantize(x: ArrayLike, axis: int = -1, *, tensor_scale: bool = True, rounding: str = "nearest_even",
             key: jax.Array | None = None, pad: bool = False) -> QArray:
  """Quantizes ``x`` to NVFP4 in blocks of 16 along ``axis``.

  Example:
    >>> import jax.numpy as jnp, lpnum
    >>> q = lpnum.nvfp4.quantize(jnp.array([0.3, -1.1, 2.6, 6.0] * 4), tensor_scale=False)
    >>> q.scale_codes.tolist(), lpnum.dequantize(q).tolist()[:4]  # block scale 6 / 6 = 1.0 (E4M3 code 56)
    ([56], [0.5, -1.0, 3.0, 6.0])
  """
  return quantize_scaled(x, format(axis=axis, tensor_scale=tensor_scale), rounding=rounding, key=key, pad=pad)
