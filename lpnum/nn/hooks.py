"""The plain hooks of flax layers: a stateless quantized ``dot_general`` (``nn.Dense(8, dot_general=...)``,
``nnx.Linear(..., dot_general=...)``) and ``conv_general_dilated``."""

from __future__ import annotations

import functools

from lpnum.nn.conv import conv_call
from lpnum.qdot import DotConfig, OperandState, dot_general

__all__ = ["make_dot_general", "make_conv_general_dilated"]


def make_dot_general(config: DotConfig):
  """A stateless quantized dot_general for the plain ``dot_general=`` hook of flax layers
  (``nn.Dense(8, dot_general=make_dot_general(cfg))``, ``nnx.Linear(..., dot_general=...)``).

  Configs that need state (``delayed``/``static`` scaling, LSQ) or keys (stochastic rounding) need the modules
  of :mod:`lpnum.nn.linen` / :mod:`lpnum.nn.nnx` instead.
  """
  if not isinstance(config, DotConfig):
    raise TypeError(f"config must be a DotConfig, got {type(config).__name__}")
  for role, oq in (("lhs", config.lhs), ("rhs", config.rhs)):
    if oq is not None and oq.needs_state:
      raise ValueError(f"config.{role} needs state (scaling={oq.scaling.value!r}, estimator={oq.estimator!r}): use "
                       "lpnum.nn.linen.QuantDotGeneral (dot_general_cls=) or lpnum.nn.nnx.QuantDotGeneral")
  if config.needs_key:
    raise ValueError("config rounds stochastically and needs keys: use lpnum.nn.linen.QuantDotGeneral or "
                     "lpnum.nn.nnx.QuantDotGeneral")
  return functools.partial(dot_general, config=config)


def make_conv_general_dilated(config: DotConfig):
  """A stateless quantized ``conv_general_dilated`` for the plain hook of flax convolutions
  (``nn.Conv(8, (3, 3), conv_general_dilated=make_conv_general_dilated(cfg))``, ``nnx.Conv(...)``), with the
  semantics of :class:`lpnum.nn.linen.QuantConv`; the same limits as :func:`make_dot_general`."""
  make_dot_general(config)

  def conv(lhs, rhs, *args, **kwargs):
    return conv_call(config, lhs, rhs, lambda a, b: OperandState(), lambda: None, args, kwargs)

  return conv
