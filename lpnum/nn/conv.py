"""The quantized convolution shared by the linen and nnx conv modules and the plain ``conv_general_dilated`` hook:
a convolution seen as its im2col matmul (see :class:`lpnum.nn.linen.QuantConv`)."""

from __future__ import annotations

import dataclasses

import jax

from lpnum.nn.ptq import dequantize_kernel, is_packed
from lpnum.qdot import SAME, DotConfig, Engine, quantize_operand

__all__ = ["conv_call"]


def conv_call(cfg: DotConfig, lhs, rhs, state_fn, key_fn, args, kwargs):
  """The quantized convolution shared by the linen and nnx modules: ``args``/``kwargs`` are those of
  ``lax.conv_general_dilated`` after its two operands."""
  if cfg.engine is not Engine.FAKE or cfg.accumulator is not None:
    raise ValueError(f"QuantConv supports engine='fake' without accumulator emulation, got "
                     f"engine={cfg.engine.value!r}, accumulator={cfg.accumulator!r}")
  if is_packed(rhs):  # a PTQ'd kernel is already quantized: multiply by its values
    rhs, cfg = dequantize_kernel(rhs), dataclasses.replace(cfg, rhs=None)
  state = state_fn(_flat_lhs(lhs), _flat_rhs(rhs))
  keys = [None] * 3
  if cfg.needs_key:
    keys = list(jax.random.split(key_fn(), 3))

  def conv(a, b):
    return jax.lax.conv_general_dilated(a, b, *args, **kwargs)

  qa = quantize_operand(_flat_lhs(lhs), cfg.lhs, "lhs", scale=state.lhs_scale, param=state.lhs_param,
                             key=keys[0]).reshape(lhs.shape)
  qb = quantize_operand(_flat_rhs(rhs), cfg.rhs, "rhs", scale=state.rhs_scale, param=state.rhs_param,
                             key=keys[1]).reshape(rhs.shape)
  if cfg.dlhs is None and cfg.drhs is None:
    return conv(qa, qb)
  return _grad_quantized(conv, qa, qb, cfg, keys[2])


def _flat_lhs(x: jax.Array) -> jax.Array:
  return x.reshape(-1, x.shape[-1])


def _flat_rhs(w: jax.Array) -> jax.Array:
  return w.reshape(-1, w.shape[-1])


def _grad_quantized(conv, qa, qb, cfg: DotConfig, key):
  for name in ("dlhs", "drhs"):
    bwd = getattr(cfg, name)
    if bwd is not None and bwd.operand != SAME:
      raise ValueError(f"QuantConv: {name}.operand must be 'same' (the forward-quantized operand)")

  @jax.custom_vjp
  def f(a, b, k):
    return conv(a, b)

  def fwd(a, b, k):
    return conv(a, b), (a, b, k)

  def bwd(res, g):
    a, b, k = res
    _, vjp = jax.vjp(conv, a, b)
    k1, k2 = (None, None) if k is None else tuple(jax.random.split(k))
    out = []
    for i, (name, kk) in enumerate((("dlhs", k1), ("drhs", k2))):
      spec = getattr(cfg, name)
      gq = g if spec is None or spec.grad is None else quantize_operand(
          _flat_lhs(g), spec.grad, "lhs" if name == "dlhs" else "rhs", key=kk).reshape(g.shape)
      out.append(vjp(gq)[i])
    return out[0], out[1], None

  f.defvjp(fwd, bwd)
  return f(qa, qb, key)
