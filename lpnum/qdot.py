"""Quantized backward passes: gradient quantizers and a dot_general with its own formats for each matmul.

FP8 training recipes quantize the forward operands (e.g. E4M3) and the output gradient (e.g. E5M2) that feeds
both backward matmuls. :func:`dot_general` does that with any lpnum format or scaled format per operand, and
:func:`quantize_grad` rounds a cotangent anywhere in a model. Keys for stochastic rounding are explicit arguments:
the same key gives the same result.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from lpnum.formats import Format, as_format
from lpnum.hadamard import fwht
from lpnum.quantize import quantize
from lpnum.scaled import ScaledFormat, fake_quantize

__all__ = ["quantize_grad", "DotConfig", "dot_general"]

FormatLike = Format | ScaledFormat | str | None


def _as(fmt: FormatLike, name: str) -> Format | ScaledFormat | None:
  if fmt is None or isinstance(fmt, ScaledFormat):
    return fmt
  if isinstance(fmt, str | Format):
    return as_format(fmt)
  raise TypeError(f"{name}={fmt!r} must be a format, a ScaledFormat, a format name or None")


def _round(x: jax.Array, fmt, rounding: str, key) -> jax.Array:
  if fmt is None:
    return x
  if isinstance(fmt, ScaledFormat):
    return fake_quantize(x, fmt, rounding=rounding, key=key)
  return quantize(x, fmt, rounding=rounding, key=key)


def quantize_grad(x: ArrayLike, fmt: FormatLike, *, rounding: str = "nearest_even",
                  key: jax.Array | None = None) -> jax.Array:
  """Identity in the forward pass; in the backward pass the cotangent is rounded to ``fmt``.

  ``rounding='stochastic'`` needs ``key`` (DoReFa's stochastic gradient quantization).

  Example:
    >>> import jax, jax.numpy as jnp, lpnum
    >>> f = lambda v: jnp.sum(lpnum.qdot.quantize_grad(v, "int4") * jnp.array([0.3, 9.0]))
    >>> jax.grad(f)(jnp.ones(2)).tolist()
    [0.0, 7.0]
  """
  x = jnp.asarray(x)
  if not jnp.issubdtype(x.dtype, jnp.floating):
    raise TypeError(f"x must be a float array, got dtype {x.dtype}")
  fmt = _as(fmt, "fmt")
  if rounding == "stochastic" and key is None:
    raise ValueError("rounding='stochastic' needs key=jax.random.key(...)")
  return _quantize_grad(x, key, fmt, rounding)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _quantize_grad(x, key, fmt, rounding):
  return x


def _qg_fwd(x, key, fmt, rounding):
  return x, key


def _qg_bwd(fmt, rounding, key, g):
  return _round(g, fmt, rounding, key), None


_quantize_grad.defvjp(_qg_fwd, _qg_bwd)


@dataclasses.dataclass(frozen=True)
class DotConfig:
  """Formats of a quantized dot_general (None: leave that operand in its dtype).

  Attributes:
    lhs, rhs: the forward operands' formats (e.g. ``float8_e4m3fn`` or an MX format along the contracting axis).
    grad: the output gradient's format, used by both backward matmuls (e.g. ``float8_e5m2``).
    lhs_bwd, rhs_bwd: the operands' formats in the backward matmuls (``dlhs = g . rhs_bwd``,
      ``drhs = lhs_bwd . g``); default: the forward ones.
    grad_rounding: ``nearest_even`` or ``stochastic`` (then a key is required).
    rotate: Hadamard-rotate both operands along the (single) contracting axis before quantizing, with this
      block (``"auto"``, a power of two, or None for no rotation). ``(lhs H)(H rhs) = lhs rhs``, H orthonormal
      and symmetric, so the inverse is folded in exactly; gradients flow through the (linear) rotation.
  """

  lhs: FormatLike = None
  rhs: FormatLike = None
  grad: FormatLike = None
  lhs_bwd: FormatLike = "same"
  rhs_bwd: FormatLike = "same"
  grad_rounding: str = "nearest_even"
  rotate: int | str | None = None

  def __post_init__(self) -> None:
    for name in ("lhs", "rhs", "grad"):
      object.__setattr__(self, name, _as(getattr(self, name), name))
    for name, fwd in (("lhs_bwd", self.lhs), ("rhs_bwd", self.rhs)):
      value = getattr(self, name)
      object.__setattr__(self, name, fwd if isinstance(value, str) and value == "same" else _as(value, name))
    if self.grad_rounding not in ("nearest_even", "stochastic"):
      raise ValueError(f"grad_rounding={self.grad_rounding!r}; expected 'nearest_even' or 'stochastic'")


def dot_general(lhs: ArrayLike, rhs: ArrayLike, dimension_numbers, config: DotConfig, *,
                key: jax.Array | None = None, preferred_element_type=None) -> jax.Array:
  """``lax.dot_general`` of the quantized operands, with quantized backward matmuls (straight-through for the
  operand quantizers).

  Forward: ``q_lhs(lhs) . q_rhs(rhs)``. Backward, with ``gq = q_grad(g)``: ``dlhs`` and ``drhs`` are the
  dot_general transposes of ``gq`` against ``q_rhs_bwd(rhs)`` and ``q_lhs_bwd(lhs)``.

  Example:
    >>> import jax.numpy as jnp, lpnum
    >>> cfg = lpnum.qdot.DotConfig(lhs="float8_e4m3fn", rhs="float8_e4m3fn", grad="float8_e5m2")
    >>> lpnum.qdot.dot_general(jnp.ones((2, 3)), jnp.full((3, 4), 0.3), (((1,), (0,)), ((), ())), cfg).tolist()[0]
    [0.9375, 0.9375, 0.9375, 0.9375]
  """
  lhs, rhs = jnp.asarray(lhs), jnp.asarray(rhs)
  if not isinstance(config, DotConfig):
    raise TypeError(f"config must be a DotConfig, got {type(config).__name__}")
  if config.grad_rounding == "stochastic" and key is None:
    raise ValueError("config.grad_rounding='stochastic' needs key=jax.random.key(...)")
  try:
    (lc, rc), (lb, rb) = dimension_numbers
    dn = ((tuple(map(int, lc)), tuple(map(int, rc))), (tuple(map(int, lb)), tuple(map(int, rb))))
  except (TypeError, ValueError):
    raise ValueError(f"dimension_numbers={dimension_numbers!r} must be ((lhs_contract, rhs_contract), "
                     "(lhs_batch, rhs_batch))") from None
  if config.rotate is not None:
    if len(dn[0][0]) != 1:
      raise ValueError(f"config.rotate needs a single contracting axis, got dimension_numbers={dimension_numbers!r}")
    lhs = fwht(lhs, dn[0][0][0], block=config.rotate)
    rhs = fwht(rhs, dn[0][1][0], block=config.rotate)
  return _qdot(lhs, rhs, key, dn, config, preferred_element_type)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4, 5))
def _qdot(lhs, rhs, key, dn, config, pet):
  return jax.lax.dot_general(_round(lhs, config.lhs, "nearest_even", None),
                             _round(rhs, config.rhs, "nearest_even", None), dn, preferred_element_type=pet)


def _qdot_fwd(lhs, rhs, key, dn, config, pet):
  return _qdot(lhs, rhs, key, dn, config, pet), (lhs, rhs, key)


def _qdot_bwd(dn, config, pet, res, g):
  lhs, rhs, key = res
  gq = _round(g, config.grad, config.grad_rounding, key)
  lb = _round(lhs, config.lhs_bwd, "nearest_even", None)
  rb = _round(rhs, config.rhs_bwd, "nearest_even", None)
  _, vjp = jax.vjp(lambda a, b: jax.lax.dot_general(a, b, dn, preferred_element_type=pet), lb, rb)
  dl, dr = vjp(gq.astype(jnp.result_type(g)))
  return dl.astype(lhs.dtype), dr.astype(rhs.dtype), None


_qdot.defvjp(_qdot_fwd, _qdot_bwd)
