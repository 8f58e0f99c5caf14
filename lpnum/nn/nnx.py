"""flax.nnx integration: quantized dot_general and conv modules for the stock layers' attributes.

``nnx.Linear(..., dot_general=QuantDotGeneral(cfg))`` (also ``LinearGeneral``) and
``nnx.Conv(..., conv_general_dilated=QuantConv(cfg))``; :func:`lpnum.nn.quantize_model` sets them by path.

State is nnx state of the quantizer modules: :class:`QuantStat` variables hold the amax history (``delayed``)
and the calibrated amax (``static``); they are updated on each call while ``update_stats`` is True (set it with
:func:`set_update_stats`, e.g. False for evaluation). The estimators' learned parameters (LSQ steps, PACT clips) are ``nnx.Param``, created on the first call. Stochastic rounding needs
``rngs=nnx.Rngs(quant=...)`` at construction.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from lpnum.nn.conv import conv_call
from lpnum.nn.ptq import is_packed
from lpnum.qdot import DotConfig, OperandState, Scaling, amax, dot_general, rotated_operands, scale_from_amax

__all__ = ["QuantStat", "QuantDotGeneral", "QuantConv", "set_update_stats"]


class QuantStat(nnx.Variable):
  """Quantizer statistics (amax history, calibrated amax): not trained, updated in the forward pass."""


class _Quantizer(nnx.Module):
  def __init__(self, config: DotConfig, *, rngs: nnx.Rngs | None = None) -> None:
    if not isinstance(config, DotConfig):
      raise TypeError(f"config must be a DotConfig, got {type(config).__name__}")
    if config.needs_key and rngs is None:
      raise ValueError("config rounds stochastically: pass rngs=nnx.Rngs(quant=...)")
    self.config = config
    self.update_stats = True
    self.rngs = rngs
    for role, tq in (("lhs", config.lhs), ("rhs", config.rhs)):
      if tq is not None and tq.scaling is Scaling.DELAYED:
        setattr(self, f"{role}_amax_history", QuantStat(jnp.zeros((tq.history,), jnp.float32)))
      if tq is not None and tq.scaling is Scaling.STATIC:
        setattr(self, f"{role}_amax", QuantStat(jnp.zeros((), jnp.float32)))
      if tq is not None and tq.estimator.learned is not None:
        setattr(self, f"{role}_{tq.estimator.learned}", None)

  def _state(self, lhs, rhs) -> OperandState:
    out = {}
    for role, tq, x in (("lhs", self.config.lhs, lhs), ("rhs", self.config.rhs, rhs)):
      if tq is None or is_packed(x):
        continue
      current = jax.lax.stop_gradient(amax(x))
      if tq.scaling is Scaling.DELAYED:
        hist = getattr(self, f"{role}_amax_history")
        past = jnp.max(hist[...])
        out[f"{role}_scale"] = scale_from_amax(jnp.where(past > 0, past, current), tq)
        if self.update_stats:
          hist[...] = jnp.roll(hist[...], 1).at[0].set(current)
      elif tq.scaling is Scaling.STATIC:
        stat = getattr(self, f"{role}_amax")
        if self.update_stats:
          stat[...] = jnp.maximum(stat[...], current)
        value = stat[...]
        out[f"{role}_scale"] = scale_from_amax(jnp.where(value > 0, value, current), tq)
      if tq.estimator.learned is not None:
        name = f"{role}_{tq.estimator.learned}"
        if getattr(self, name) is None:
          setattr(self, name, nnx.Param(tq.estimator.init_param(x, tq.element)))
        out[f"{role}_param"] = getattr(self, name)[...]
    return OperandState(**out)

  def _key(self):
    return self.rngs.quant() if self.config.needs_key else None


class QuantDotGeneral(_Quantizer):
  """A quantized ``dot_general`` for ``nnx.Linear(..., dot_general=...)`` and ``nnx.LinearGeneral``.

  Example:
    >>> import jax.numpy as jnp, lpnum
    >>> from flax import nnx
    >>> from lpnum import nn as lnn
    >>> cfg = lpnum.DotConfig(lhs=lpnum.OperandQuant("int8", scaling="static"), rhs="int8")
    >>> layer = nnx.Linear(4, 3, dot_general=lnn.nnx.QuantDotGeneral(cfg), rngs=nnx.Rngs(0))
    >>> _ = layer(jnp.full((2, 4), 3.0))
    >>> layer.dot_general.lhs_amax[...].item()
    3.0
  """

  def __call__(self, lhs, rhs, dimension_numbers, precision=None, preferred_element_type=None, **kwargs):
    state = self._state(*rotated_operands(lhs, rhs, dimension_numbers, self.config))
    return dot_general(lhs, rhs, dimension_numbers, self.config, state=state,
                            key=self._key(), preferred_element_type=preferred_element_type)


class QuantConv(_Quantizer):
  """A quantized ``conv_general_dilated`` for ``nnx.Conv(..., conv_general_dilated=...)``: granularities and engines
  as :class:`lpnum.nn.linen.QuantConv` (``engine='int'`` convolves int8 codes forward and backward)."""

  def __call__(self, lhs, rhs, *args, **kwargs):
    return conv_call(self.config, lhs, rhs, self._state, self._key, args, kwargs)


def set_update_stats(model: nnx.Module, value: bool) -> None:
  """Turns the update of quantizer statistics (delayed histories, static calibration) on or off in a model."""
  if not isinstance(value, bool):
    raise TypeError(f"value={value!r} must be a bool")
  for _, node in nnx.iter_graph(model):
    if isinstance(node, _Quantizer):
      node.update_stats = value
