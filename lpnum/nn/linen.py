"""flax.linen integration: quantized dot_general and conv modules for the stock layers' injection points.

``nn.Dense(features, dot_general_cls=functools.partial(QuantDotGeneral, config=cfg))`` (also ``DenseGeneral``) and
``nn.Conv(features, kernel, conv_general_dilated_cls=functools.partial(QuantConv, config=cfg))`` quantize a stock
layer without touching its code; :func:`lpnum.nn.quantize_model` does it by module path for a whole model.
Stateless configs (dynamic scaling, nearest rounding) also fit the plain ``dot_general=`` hook through
:func:`lpnum.nn.make_dot_general`.

State lives in Flax collections: ``quant_stats`` holds the amax history (``delayed``) and the calibrated amax
(``static``), updated in the forward pass when the collection is mutable (``apply(..., mutable=["quant_stats"])``,
as ``batch_stats``); ``params`` holds the estimators' learned parameters (LSQ steps, PACT clips). Stochastic rounding draws from the ``"quant"`` RNG stream.
"""

from __future__ import annotations

import dataclasses
import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from lpnum.nn import dot as _dot
from lpnum.nn.config import LEARNED, QuantConfig, TensorQuant
from lpnum.nn.ptq import dequantize_kernel, is_packed

__all__ = ["QuantDotGeneral", "QuantConv", "operand_state", "conv_call"]


def learned_init(x: jax.Array, tq: TensorQuant) -> jax.Array:
  """The initial learned parameter: LSQ's step ``2 mean|x| / sqrt(Q_P)`` (Esser et al.) from the first operand
  seen, or PACT's clip (``estimator_params["alpha"]``, default 10 as in Choi et al.)."""
  if tq.estimator == "pact":
    return jnp.asarray(dict(tq.estimator_params).get("alpha", 10.0), jnp.float32)
  return 2.0 * jnp.mean(jnp.abs(x)).astype(jnp.float32) / math.sqrt(tq.element.max_finite) + 1e-8


def operand_state(module: nn.Module, config: QuantConfig, lhs: jax.Array, rhs) -> _dot.OperandState:
  """Reads (and, when ``quant_stats`` is mutable, updates) a module's scaling state for one call."""
  out = {}
  for role, tq, x in (("lhs", config.lhs, lhs), ("rhs", config.rhs, rhs)):
    if tq is None or is_packed(x):
      continue
    current = jax.lax.stop_gradient(_dot.amax(x))
    if tq.scaling == "delayed":
      hist = module.variable("quant_stats", f"{role}_amax_history", jnp.zeros, (tq.history,), jnp.float32)
      past = jnp.max(hist.value)
      out[f"{role}_scale"] = _dot.scale_from_amax(jnp.where(past > 0, past, current), tq)
      if module.is_mutable_collection("quant_stats") and not module.is_initializing():
        hist.value = jnp.roll(hist.value, 1).at[0].set(current)
    elif tq.scaling == "static":
      calibrated = module.variable("quant_stats", f"{role}_amax", jnp.zeros, (), jnp.float32)
      if module.is_mutable_collection("quant_stats") and not module.is_initializing():
        calibrated.value = jnp.maximum(calibrated.value, current)
      value = calibrated.value
      out[f"{role}_scale"] = _dot.scale_from_amax(jnp.where(value > 0, value, current), tq)
    if tq.estimator in LEARNED:
      name = f"{role}_{LEARNED[tq.estimator]}"
      out[f"{role}_param"] = module.param(name, lambda _: learned_init(x, tq))
  return _dot.OperandState(**out)


class QuantDotGeneral(nn.Module):
  """A ``dot_general`` module for the ``dot_general_cls`` hook of ``nn.Dense`` / ``nn.DenseGeneral``.

  Attributes:
    config: the layer's :class:`~lpnum.nn.QuantConfig`.

  Example:
    >>> import functools, jax, jax.numpy as jnp, flax.linen as nn
    >>> from lpnum import nn as lnn
    >>> cfg = lnn.QuantConfig(lhs=lnn.TensorQuant("float8_e4m3fn", scaling="delayed"), rhs="int8")
    >>> layer = nn.Dense(3, dot_general_cls=functools.partial(lnn.linen.QuantDotGeneral, config=cfg))
    >>> variables = layer.init(jax.random.key(0), jnp.ones((2, 4)))
    >>> y, stats = layer.apply(variables, jnp.ones((2, 4)), mutable=["quant_stats"])
    >>> stats["quant_stats"]["QuantDotGeneral_0"]["lhs_amax_history"][:2].tolist()
    [1.0, 0.0]
  """

  config: QuantConfig

  @nn.compact
  def __call__(self, lhs, rhs, dimension_numbers, precision=None, preferred_element_type=None, **kwargs):
    state = operand_state(self, self.config, lhs, rhs)
    key = self.make_rng("quant") if _dot._needs_key(self.config) else None
    return _dot.dot_general(lhs, rhs, dimension_numbers, self.config, state=state, key=key,
                            preferred_element_type=preferred_element_type)


class QuantConv(nn.Module):
  """A ``conv_general_dilated`` module for the ``conv_general_dilated_cls`` hook of ``nn.Conv``.

  The convolution is seen as its im2col matmul: lhs rows are output positions (``"channel"`` = a scale per
  position), K runs over the kernel window and the input features (blocks of g along the input features), rhs
  columns are the output features (``"channel"`` = per output feature). Backward: ``dlhs``/``drhs`` quantize
  the output gradient (per position for ``channel``) and reuse the forward-quantized operands; ``backend`` must
  be ``"fake"`` (XLA's convolutions take no integer operands on every platform).
  """

  config: QuantConfig

  @nn.compact
  def __call__(self, lhs, rhs, *args, **kwargs):
    def key():
      return self.make_rng("quant") if _dot._needs_key(self.config) else None

    return conv_call(self.config, lhs, rhs, lambda a, b: operand_state(self, self.config, a, b), key, args, kwargs)


def conv_call(cfg: QuantConfig, lhs, rhs, state_fn, key_fn, args, kwargs):
  """The quantized convolution shared by the linen and nnx modules: ``args``/``kwargs`` are those of
  ``lax.conv_general_dilated`` after its two operands."""
  if cfg.backend != "fake" or cfg.accumulator is not None:
    raise ValueError(f"QuantConv supports backend='fake' without accumulator emulation, got "
                     f"backend={cfg.backend!r}, accumulator={cfg.accumulator!r}")
  if is_packed(rhs):  # a PTQ'd kernel is already quantized: multiply by its values
    rhs, cfg = dequantize_kernel(rhs), dataclasses.replace(cfg, rhs=None)
  state = state_fn(_flat_lhs(lhs), _flat_rhs(rhs))
  keys = [None] * 3
  if _dot._needs_key(cfg):
    keys = list(jax.random.split(key_fn(), 3))

  def conv(a, b):
    return jax.lax.conv_general_dilated(a, b, *args, **kwargs)

  qa = _dot.quantize_operand(_flat_lhs(lhs), cfg.lhs, "lhs", scale=state.lhs_scale, param=state.lhs_param,
                             key=keys[0]).reshape(lhs.shape)
  qb = _dot.quantize_operand(_flat_rhs(rhs), cfg.rhs, "rhs", scale=state.rhs_scale, param=state.rhs_param,
                             key=keys[1]).reshape(rhs.shape)
  if cfg.dlhs is None and cfg.drhs is None:
    return conv(qa, qb)
  return _grad_quantized(conv, qa, qb, cfg, keys[2])


def _flat_lhs(x: jax.Array) -> jax.Array:
  return x.reshape(-1, x.shape[-1])


def _flat_rhs(w: jax.Array) -> jax.Array:
  return w.reshape(-1, w.shape[-1])


def _grad_quantized(conv, qa, qb, cfg: QuantConfig, key):
  for name in ("dlhs", "drhs"):
    bwd = getattr(cfg, name)
    if bwd is not None and bwd.operand != "same":
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
      gq = g if spec is None or spec.grad is None else _dot.quantize_operand(
          _flat_lhs(g), spec.grad, "lhs" if name == "dlhs" else "rhs", key=kk).reshape(g.shape)
      out.append(vjp(gq)[i])
    return out[0], out[1], None

  f.defvjp(fwd, bwd)
  return f(qa, qb, key)
