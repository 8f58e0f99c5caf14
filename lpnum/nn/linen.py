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

import flax.linen as nn
import jax
import jax.numpy as jnp

from lpnum.nn.conv import conv_call
from lpnum.nn.ptq import is_packed
from lpnum.qdot import DotConfig, OperandState, Scaling, amax, dot_general, rotated_operands, scale_from_amax

__all__ = ["QuantDotGeneral", "QuantConv", "operand_state"]


def operand_state(module: nn.Module, config: DotConfig, lhs: jax.Array, rhs) -> OperandState:
  """Reads (and, when ``quant_stats`` is mutable, updates) a module's scaling state for one call."""
  out = {}
  for role, tq, x in (("lhs", config.lhs, lhs), ("rhs", config.rhs, rhs)):
    if tq is None or is_packed(x):
      continue
    current = jax.lax.stop_gradient(amax(x))
    if tq.scaling is Scaling.DELAYED:
      hist = module.variable("quant_stats", f"{role}_amax_history", jnp.zeros, (tq.history,), jnp.float32)
      past = jnp.max(hist.value)
      out[f"{role}_scale"] = scale_from_amax(jnp.where(past > 0, past, current), tq)
      if module.is_mutable_collection("quant_stats") and not module.is_initializing():
        hist.value = jnp.roll(hist.value, 1).at[0].set(current)
    elif tq.scaling is Scaling.STATIC:
      calibrated = module.variable("quant_stats", f"{role}_amax", jnp.zeros, (), jnp.float32)
      if module.is_mutable_collection("quant_stats") and not module.is_initializing():
        calibrated.value = jnp.maximum(calibrated.value, current)
      value = calibrated.value
      out[f"{role}_scale"] = scale_from_amax(jnp.where(value > 0, value, current), tq)
    if tq.estimator.learned is not None:
      name = f"{role}_{tq.estimator.learned}"
      out[f"{role}_param"] = module.param(name, lambda _: tq.estimator.init_param(x, tq.element))
  return OperandState(**out)


class QuantDotGeneral(nn.Module):
  """A ``dot_general`` module for the ``dot_general_cls`` hook of ``nn.Dense`` / ``nn.DenseGeneral``.

  Attributes:
    config: the layer's :class:`~lpnum.DotConfig`.

  Example:
    >>> import functools, jax, jax.numpy as jnp, flax.linen as nn, lpnum
    >>> from lpnum import nn as lnn
    >>> cfg = lpnum.DotConfig(lhs=lpnum.OperandQuant("float8_e4m3fn", scaling="delayed"), rhs="int8")
    >>> layer = nn.Dense(3, dot_general_cls=functools.partial(lnn.linen.QuantDotGeneral, config=cfg))
    >>> variables = layer.init(jax.random.key(0), jnp.ones((2, 4)))
    >>> y, stats = layer.apply(variables, jnp.ones((2, 4)), mutable=["quant_stats"])
    >>> stats["quant_stats"]["QuantDotGeneral_0"]["lhs_amax_history"][:2].tolist()
    [1.0, 0.0]
  """

  config: DotConfig

  @nn.compact
  def __call__(self, lhs, rhs, dimension_numbers, precision=None, preferred_element_type=None, **kwargs):
    state = operand_state(self, self.config, *rotated_operands(lhs, rhs, dimension_numbers, self.config))
    key = self.make_rng("quant") if self.config.needs_key else None
    return dot_general(lhs, rhs, dimension_numbers, self.config, state=state, key=key,
                            preferred_element_type=preferred_element_type)


class QuantConv(nn.Module):
  """A ``conv_general_dilated`` module for the ``conv_general_dilated_cls`` hook of ``nn.Conv``.

  Granularities are those of the convolution's matmul views (:mod:`lpnum.nn.conv`): lhs ``per_channel()`` is a
  scale per example and ``per_block(g)`` a scale per g input features of one pixel; rhs ``per_channel()`` is a scale
  per output feature. ``engine='int'`` (e.g. :meth:`lpnum.DotConfig.w8a8`) runs the forward and both backward
  convolutions as int8 x int8 -> int32 convolutions and scales their outputs; ``engine='fake'`` quantizes,
  dequantizes and convolves in float32.

  Example:
    >>> import functools, jax, jax.numpy as jnp, flax.linen as nn, lpnum
    >>> from lpnum import nn as lnn
    >>> conv = nn.Conv(4, (3, 3), conv_general_dilated_cls=functools.partial(lnn.linen.QuantConv,
    ...                                                                      config=lpnum.DotConfig.w8a8()))
    >>> x = jnp.ones((2, 8, 8, 3))
    >>> conv.apply(conv.init(jax.random.key(0), x), x).shape
    (2, 8, 8, 4)
  """

  config: DotConfig

  @nn.compact
  def __call__(self, lhs, rhs, *args, **kwargs):
    def key():
      return self.make_rng("quant") if self.config.needs_key else None

    return conv_call(self.config, lhs, rhs, lambda a, b: operand_state(self, self.config, a, b), key, args, kwargs)
