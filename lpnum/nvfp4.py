"""NVFP4: FP4 E2M1 elements in blocks of 16, an FP8 E4M3 scale per block and a float32 per-tensor scale.

Recipe (as NVIDIA's and torchao's): the per-tensor scale is ``T = amax / (448 * 6)`` (at least 2^-126); each
block's scale is ``(block amax / 6) / T`` rounded to nearest even into E4M3 and clamped to
``[2^-9, 448]``; elements are ``x / (s_block * T)`` rounded to nearest even into E2M1, saturated to +-6; values
are ``element * (s_block * T)``. Divisions are IEEE float32 divisions; products are rounded once.
"""

from __future__ import annotations

import jax
from jax.typing import ArrayLike

from lpnum import blocks
from lpnum.qarray import QArray
from lpnum.scaled import ScaledFormat, quantize_scaled

__all__ = ["format", "quantize"]


def format(*, axis: int = -1, tensor_scale: bool = True, tile: bool = False) -> ScaledFormat:  # noqa: A001
  """The NVFP4 ScaledFormat: blocks of 16 along ``axis`` (or 16x16 tiles over the last two axes)."""
  granularity = blocks.per_tile((16, 16)) if tile else blocks.per_block(16, axis)
  return ScaledFormat("float4_e2m1fn", granularity, "float8_e4m3fn", "nearest", tensor_scale=tensor_scale,
                      name="nvfp4" + ("_tile" if tile else "") + ("" if tensor_scale else "_no_tensor_scale"))


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
