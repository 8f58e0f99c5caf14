"""The element pass of block-scaled quantization: elements ``x / S`` rounded to the element format, and values
``element * S`` rounded once into the output dtype (the arithmetic is described in the README)."""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

from lpnum.carrier import F32, Carrier
from lpnum.exact import (Pow2, multiply, plain_exact, plain_for_rounding, pow2_factors, scale_exact,
                         scale_for_rounding)
from lpnum.formats import FloatFormat, IntFormat
from lpnum.rounding import Overflow, Rounding
from lpnum.scaled.format import MIN_NORMAL, ScaledFormat, element_precision
from lpnum.scaled.xla_cpu import cond, div, per_block, row_view

__all__ = ["Scales", "by_scaling", "round_elements", "apply_scale", "INT_GRID"]


@dataclasses.dataclass(frozen=True)
class Scales:
  """Per-block scales as the arithmetic needs them.

  Elements are ``x / S`` with ``S = m * 2^e`` (``m`` in [1, 2), or None for power-of-two scales); values are
  ``v * block * tm * 2^de``: ``block`` is the block scale's value and ``tm * 2^de`` the per-tensor scale when
  there is one (so that ``v * block``, exact, is rounded once more, by the per-tensor product); without one,
  ``block = m``, ``tm = None``, ``de = e``.
  """

  codes: jax.Array
  m: jax.Array | None
  e: jax.Array
  nan: jax.Array | None  # blocks whose scale is NaN (power-of-two scales)
  zero: jax.Array | None = None
  tensor: jax.Array | None = None
  block: jax.Array | None = None
  tm: jax.Array | None = None
  de: jax.Array | None = None
  down: Pow2 | None = None  # factors of 2^-(e + element_exponent): scale x to element units
  up: Pow2 | None = None  # factors of 2^(de + element_exponent): scale elements back

  def with_factors(self, fmt: ScaledFormat) -> "Scales":
    de = self.e if self.de is None else self.de
    return dataclasses.replace(self, down=pow2_factors(-(self.e + fmt.element_exponent)),
                               up=pow2_factors(de + fmt.element_exponent))

  def exact(self) -> "Scales":
    """With the factors of the exact paths (``Pow2.exact``)."""
    return dataclasses.replace(self, down=self.down.exact(), up=self.up.exact())



jax.tree_util.register_dataclass(
    Scales, data_fields=["codes", "m", "e", "nan", "zero", "tensor", "block", "tm", "de", "down", "up"],
    meta_fields=[])


def by_scaling(compute, xb: jax.Array, s: Scales, fmt: ScaledFormat, mode: Rounding | None, *,
               rows: bool = True) -> jax.Array:
  """``compute(plain, xb, s)``, the elementwise pass (rounding elements with ``mode``, or None for none), with
  ``plain=True`` where every block allows it.

  ``plain`` scales by one float multiplication with the scale's power of two each way (``round_elements``,
  ``apply_scale``) instead of the exact paths for subnormal inputs and results, which cost the elementwise pass
  about as much as the rounding itself. Where the two agree bit for bit in every block (the usual case: no scale
  near the ends of float32's range; see ``plain_for_rounding`` and ``plain_exact``), a conditional
  runs the plain pass, else the exact one. Elements are rounded only to nearest even, and only float and integer
  elements (whose rounding takes values below 2^-102 to zero). The conditional's pass runs over rows of 32 to 64
  elements where the blocks allow it (``row_view``) and ``rows`` is true (false where ``xb`` is not laid out as
  the elements, e.g. packed codes that ``compute`` unpacks).
  """
  if xb.size == 0:
    return compute(False, xb, s)
  ok = plain_exact(s.up, _smallest_product(fmt))
  if mode is not None:
    if mode is not Rounding.NEAREST_EVEN or not isinstance(fmt.element, FloatFormat | IntFormat):
      return compute(False, xb, per_block(lambda v: v.exact(), xb.size, s))  # factors once per block
    ok = ok & plain_for_rounding(s.down)
  # Inside the conditional the exact branch derives its factors per element: computing them per block there made
  # the plain branch slower (the factors then cross the conditional as extra operands), and the exact branch is
  # the rare one.
  view = row_view(xb, s) if rows else None
  if view is None:
    return cond(ok, functools.partial(compute, True), functools.partial(compute, False), xb, s)
  xr, sr, width, spread = view

  def run(plain, xr, sr, width):
    return compute(plain, xr, spread(sr, width))

  return cond(ok, functools.partial(run, True), functools.partial(run, False), xr, sr, width).reshape(xb.shape)


def _smallest_product(fmt: ScaledFormat) -> float:
  """A power of two at most the smallest nonzero magnitude that ``apply_scale`` scales by ``2^(de + e)``."""
  low = fmt.element.min_positive
  if fmt.tensor_scale:
    low *= max(fmt.scale_format.min_positive, MIN_NORMAL)
  return 2.0 ** math.floor(math.log2(low))


def round_elements(xb, s: Scales, fmt: ScaledFormat, mode: Rounding, rand, plain: bool = False, *,
                   in_kernel: bool = False) -> jax.Array:
  """The elements: ``x / S`` rounded to the element format, as float32 values in element units (``plain``: see
  ``by_scaling``; ``in_kernel``: only operations every Pallas lowering has, see ``Format.round_values``)."""
  el = fmt.element
  xn = xb * s.down.p if plain else scale_for_rounding(xb, s.down)
  q = xn if s.m is None else div(xn, s.m)
  if fmt.asymmetric:
    r = INT_GRID.round_values(q, F32, mode, Overflow.SATURATE, rand, None, in_kernel=in_kernel) + s.zero
    return jnp.clip(r, el.min_value, el.max_finite)
  return el.round_values(q, F32, mode, Overflow.SATURATE, rand, None, in_kernel=in_kernel)


#: The integer grid asymmetric elements are rounded on before the zero point is added.
INT_GRID = IntFormat(bits=16)


def apply_scale(v: jax.Array, s: Scales, fmt: ScaledFormat, target: Carrier,
                 plain: bool = False) -> jax.Array:
  """``v * S`` rounded once into ``target`` (``v`` in element units); NaN scales give NaN (``plain``: see
  ``by_scaling``)."""
  if s.zero is not None:
    v = v - s.zero.astype(jnp.float32)

  def scale(w):
    return scale_exact(w, s.up, target) if not plain else (w * s.up.p).astype(target.dtype)

  if s.m is None:
    out = scale(v)
    if s.nan is not None:
      out = jnp.where(s.nan, jnp.asarray(np.nan, target.dtype), out)
    return out
  if s.tm is not None:  # fl(fl(v * block) * tm) * 2^de, with v * block exact
    return scale((v * s.block) * s.tm)
  # ``block`` is S itself, a normal float32 (general scales are at least 2^-126).
  if target is F32 and fmt.element.min_positive >= 1:
    return v * s.block  # integer elements: the IEEE product, never below 2^-126
  p = element_precision(fmt.element)
  if target is not F32 and p <= 8:
    return multiply(v, s.block, p, target)
  # fl(v * m) * 2^e: one rounding wherever the result is a normal float (below, a second one; documented).
  return scale(v * s.m)
