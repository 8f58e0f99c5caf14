"""Weights cast straight into the packed matmul's layout: the cast kernel (:mod:`lpnum.kernels.quantize`) writing
the bit planes of :mod:`lpnum.kernels.packed_matmul.layout`, so that float ``(K, N)`` weights become PackedWeights in
one read and one packed write.

It joins two kernel ops, which are independent of each other, and so lives beside them.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from lpnum.kernels.packed_matmul.layout import PackedWeights, pack_weights
from lpnum.kernels.quantize.api import pallas_supports, per_tensor_codes, prepare, run_pallas
from lpnum.kernels.quantize.pallas import Output
from lpnum.kernels.quantize.tile import cast_of
from lpnum.scaled import ScaledFormat, quantize_scaled

__all__ = ["quantize_weights"]


def quantize_weights(w: ArrayLike, fmt: ScaledFormat | str, *, tile_k: int | None = None,
                     scale: ArrayLike | None = None, tensor_amax: ArrayLike | None = None, implementation: str = "auto",
                     platform: str | None = None, interpret: bool = False) -> PackedWeights:
  """``pack_weights(quantize_scaled(w, fmt, scale=scale, tensor_amax=tensor_amax), tile_k=tile_k)``, bit for bit,
  in one read of ``w`` on GPU and TPU: the cast kernel writes the bit planes itself.

  The kernel takes scales shared along K (``mx.format(name, axis=0)``, ``nvfp4.format(axis=0)``,
  ``per_block(g, 0)``, ``per_channel(1)``) or one scale per tensor, with K a multiple of the layout's ``tile_k`` and
  N of 128 (no padding); otherwise, and on the CPU, ``quantize_scaled`` and ``pack_weights`` run.

  Args:
    w: ``(K, N)`` float32, bfloat16 or float16 weights, K the reduction axis.
    fmt: a ScaledFormat, or a preset name (blocks along K).
    tile_k: K rows per layout tile (default and rules: :func:`lpnum.kernels.pack_weights`).
    scale, tensor_amax, implementation, platform, interpret: as in :func:`lpnum.kernels.quantize.quantize`.

  Returns:
    The PackedWeights.

  Example:
    >>> import jax.numpy as jnp, lpnum
    >>> from lpnum import kernels
    >>> w = kernels.quantize_weights(jnp.ones((512, 128)), "mxfp4_e2m1", implementation="pallas", interpret=True)
    >>> w.planes[0].shape, w.scales.shape
    ((256, 128), (16, 128))
  """
  target = {}

  def why_not(fmt, shape, backend):
    target["w"] = t = jax.eval_shape(lambda: pack_weights(quantize_scaled(jnp.zeros(shape, jnp.float32), fmt),
                                                          tile_k=tile_k))
    if t.padded_shape != tuple(shape):
      return f"w of shape {tuple(shape)} needs padding to {t.padded_shape} (K tiles of {t.tile_k}, N to 128)"
    if cast_of(fmt, shape, False).axis == 1:
      return "scales must be shared along K (axis 0)"
    return pallas_supports(fmt, shape, (False,), backend, scale, tile_k=t.tile_k, plane_widths=t.plane_bits)

  x, fmt, scale, tensor_amax, implementation, platform = prepare(
      w, fmt, scale, tensor_amax, implementation, platform, interpret, why_not, default_axis=0)
  if implementation == "xla":
    return pack_weights(quantize_scaled(x, fmt, scale=scale, tensor_amax=tensor_amax), tile_k=tile_k)
  t = target["w"]
  output = Output(cast_of(fmt, x.shape, False), False, t.tile_k, t.plane_bits, t.planes[0].dtype)
  ((planes, scales),), ideal, tensor = run_pallas(x, scale, tensor_amax, fmt, (output,), platform, interpret)
  if scales is None:
    scales = jnp.broadcast_to(per_tensor_codes(ideal, fmt), (1, x.shape[1]))
  return PackedWeights(tuple(planes), scales, None, tensor, fmt, tuple(x.shape), t.tile_k, t.group)
