"""Quantize a whole existing model by module-path rules, without editing its source.

A :class:`Rule` pairs a regular expression over module paths (``"Dense_0"``, ``"block1/Conv_1"``,
``"MultiHeadDotProductAttention_0/query"``) with a :class:`~lpnum.DotConfig`; the first rule that matches a
layer's path (``re.fullmatch``) decides, and ``config=None`` keeps a layer float. Quantizable layers: linen
``Dense``, ``DenseGeneral``, ``Conv`` and lpnum's expert bank :class:`~lpnum.nn.grouped.GroupedDense`; nnx
``Linear``, ``LinearGeneral``, ``Conv`` and :class:`~lpnum.nn.grouped.NnxGroupedDense`.

linen: :func:`quantize_model` returns a :class:`QuantizedModel` whose ``init``/``apply`` run the stock model
under ``nn.intercept_methods``: each matched layer runs as a clone of itself with lpnum's dot_general (or conv)
in its injection hook, in the same scope, so the params tree is unchanged and quantizer state appears under the
layer (``quant_stats/<path>/QuantDotGeneral_0/...``). nnx: the matched modules' ``dot_general`` (or
``conv_general_dilated``) attribute is replaced by an lpnum module, in place.

A rule that matches no quantizable layer is an error naming the rule, raised on the first trace.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Iterable, Sequence
from typing import Any

import flax.linen as nn
import jax
from flax import nnx
from flax.linen import dtypes as linen_dtypes

from lpnum.nn import linen as _linen
from lpnum.nn import nnx as _nnx
from lpnum.nn.grouped import GroupedDense, NnxGroupedDense, check_grouped_config
from lpnum.nn.ptq import EXPERTS, PackedKernel, QuantizedKernel, check_rule, ptq
from lpnum.nn.rule import Rule, as_rules, match

__all__ = ["Rule", "QuantizedModel", "quantize_model", "promote_dtype", "kernel_views", "ptq_nnx"]

_LINEN_DOT = (nn.Dense, nn.DenseGeneral)
_LINEN_CONV = (nn.Conv,)
_LINEN_GROUPED = (GroupedDense,)
_NNX_DOT = (nnx.Linear, nnx.LinearGeneral)
_NNX_CONV = (nnx.Conv,)
_NNX_GROUPED = (NnxGroupedDense,)


def promote_dtype(*args, dtype=None, inexact: bool = True) -> list[Any]:
  """flax's ``promote_dtype`` that passes packed kernels through untouched (for the ``promote_dtype`` hook)."""
  floats = [a for a in args if a is not None and not isinstance(a, PackedKernel)]
  promoted = iter(linen_dtypes.promote_dtype(*floats, dtype=dtype, inexact=inexact))
  return [a if a is None or isinstance(a, PackedKernel) else next(promoted) for a in args]


def _nnx_promote_dtype(args, /, *, dtype=None, inexact: bool = True):
  return tuple(promote_dtype(*args, dtype=dtype, inexact=inexact))


@dataclasses.dataclass(frozen=True)
class QuantizedModel:
  """A linen model run with its matched layers quantized (see :func:`quantize_model`).

  ``init`` and ``apply`` take what the model's take. Pass ``mutable=["quant_stats"]`` to ``apply`` to update
  delayed-scaling histories or to calibrate static scales, and ``rngs={"quant": key}`` for stochastic rounding.
  """

  model: nn.Module
  rules: tuple[Rule, ...]

  def _interceptor(self, used: set, next_fun, args, kwargs, context):
    module = context.module
    if context.method_name != "__call__" or not isinstance(module, _LINEN_DOT + _LINEN_CONV + _LINEN_GROUPED):
      return next_fun(*args, **kwargs)
    if isinstance(module, _LINEN_GROUPED) and module.config is not None:
      return next_fun(*args, **kwargs)
    if isinstance(module, _LINEN_DOT) and module.dot_general_cls is not None:
      return next_fun(*args, **kwargs)
    if isinstance(module, _LINEN_CONV) and module.conv_general_dilated_cls is not None:
      return next_fun(*args, **kwargs)
    path = "/".join(module.scope.path)
    rule = match(self.rules, path)
    if rule is not None:
      used.add(rule)
    config = None if rule is None else rule.config
    if module.scope.has_variable("params", "kernel"):
      check_rule(path, module.scope.get_variable("params", "kernel"), config)
    if config is None:
      return next_fun(*args, **kwargs)
    if isinstance(module, _LINEN_GROUPED):
      return module.clone(parent=module.scope, config=config)(*args, **kwargs)
    if isinstance(module, _LINEN_DOT):
      hook = dict(dot_general_cls=functools.partial(_linen.QuantDotGeneral, config=config))
    else:
      hook = dict(conv_general_dilated_cls=functools.partial(_linen.QuantConv, config=config))
    clone = module.clone(parent=module.scope, promote_dtype=promote_dtype, **hook)
    return clone(*args, **kwargs)

  def _run(self, method: str, *args, **kwargs):
    used: set = set()
    with nn.intercept_methods(functools.partial(self._interceptor, used)):
      out = getattr(self.model, method)(*args, **kwargs)
    _check_used(self.rules, used)
    return out

  def init(self, *args, **kwargs):
    """``model.init`` with the rules applied."""
    return self._run("init", *args, **kwargs)

  def apply(self, *args, **kwargs):
    """``model.apply`` with the rules applied."""
    return self._run("apply", *args, **kwargs)

  def calibrate(self, variables, batches: Iterable, **kwargs):
    """Runs the model over ``batches`` (each the positional args of one call, or a single array) with
    ``quant_stats`` mutable, recording the amax of every ``static``-scaled operand; returns the variables with
    the calibrated ``quant_stats``."""
    variables = dict(variables)
    step = jax.jit(lambda v, b: self.apply(v, *b, mutable=["quant_stats"], **kwargs)[1])
    seen = False
    for batch in batches:
      batch = batch if isinstance(batch, tuple) else (batch,)
      variables.update(step(variables, batch))
      seen = True
    if not seen:
      raise ValueError("batches is empty: calibration needs at least one batch")
    return variables


def _check_used(rules: Sequence[Rule], used: set) -> None:
  for rule in rules:
    if rule not in used:
      raise ValueError(f"rule {rule.pattern!r} matches no quantizable layer (Dense, DenseGeneral, Conv, GroupedDense; "
                       "nnx Linear, LinearGeneral, Conv, NnxGroupedDense) of the model")


def quantize_model(model, rules):
  """Quantizes an existing model's layers by path rules, without editing its source.

  Args:
    model: a ``flax.linen.Module`` (returns a :class:`QuantizedModel`) or a ``flax.nnx.Module`` (modified in
      place and returned).
    rules: :class:`Rule` values, ``(pattern, config)`` pairs, or one DotConfig for every layer.

  Raises:
    ValueError: a rule that matches no quantizable layer (for linen, on the first ``init``/``apply``).

  Example:
    >>> import jax, jax.numpy as jnp, flax.linen as nn
    >>> import lpnum
    >>> from lpnum import nn as lnn
    >>> mlp = nn.Sequential([nn.Dense(8), nn.relu, nn.Dense(2)])
    >>> qmodel = lnn.quantize_model(mlp, [lnn.Rule("layers_2", None), lnn.Rule(".*", lpnum.DotConfig.fp8())])
    >>> variables = qmodel.init(jax.random.key(0), jnp.ones((1, 4)))
    >>> qmodel.apply(variables, jnp.ones((1, 4))).shape
    (1, 2)
  """
  rules = as_rules(rules)
  if isinstance(model, nn.Module):
    return QuantizedModel(model, rules)
  if isinstance(model, nnx.Module):
    used: set = set()
    for path, node in nnx.iter_graph(model):
      if not isinstance(node, _NNX_DOT + _NNX_CONV + _NNX_GROUPED):
        continue
      where = "/".join(map(str, path))
      rule = match(rules, where)
      if rule is not None:
        used.add(rule)
      config = None if rule is None else rule.config
      check_rule(where, node.kernel[...], config)
      if config is None:
        continue
      if isinstance(node, _NNX_GROUPED):
        check_grouped_config(config)
        node.config = config
        continue
      node.promote_dtype = _nnx_promote_dtype
      if isinstance(node, _NNX_DOT):
        node.dot_general = nnx.data(_nnx.QuantDotGeneral(config))
      else:
        node.conv_general_dilated = nnx.data(_nnx.QuantConv(config))
    _check_used(rules, used)
    return model
  raise TypeError(f"model must be a flax.linen or flax.nnx Module, got {type(model).__name__}")


def _contracted(module) -> int:
  """How many leading kernel axes a quantizable layer contracts."""
  if isinstance(module, _LINEN_CONV + _NNX_CONV):
    size = module.kernel_size
    return (1 if isinstance(size, int) else len(size)) + 1
  if isinstance(module, nn.DenseGeneral):
    return 1 if isinstance(module.axis, int) else len(module.axis)
  if isinstance(module, nnx.LinearGeneral):
    return len(module.axis) if isinstance(module.axis, tuple) else 1
  return 1


def kernel_views(model, *args, **kwargs) -> dict[str, int | str]:
  """For :func:`lpnum.nn.ptq`: each quantizable layer's path -> how many leading kernel axes it contracts
  (:data:`lpnum.nn.ptq.EXPERTS` for a :class:`~lpnum.nn.grouped.GroupedDense`: per expert along K).

  A linen model is traced abstractly (``jax.eval_shape`` of ``model.init(key, *args, **kwargs)``: no params are
  made); an nnx model is read directly (``args`` unused).

  Example:
    >>> import jax.numpy as jnp, flax.linen as nn
    >>> from lpnum import nn as lnn
    >>> attention = nn.MultiHeadDotProductAttention(num_heads=2, qkv_features=8)
    >>> lnn.kernel_views(attention, jnp.ones((1, 3, 8)))
    {'query': 1, 'key': 1, 'value': 1, 'out': 2}
  """
  if isinstance(model, nnx.Module):
    return {"/".join(map(str, path)): EXPERTS if isinstance(node, _NNX_GROUPED) else _contracted(node)
            for path, node in nnx.iter_graph(model) if isinstance(node, _NNX_DOT + _NNX_CONV + _NNX_GROUPED)}
  if not isinstance(model, nn.Module):
    raise TypeError(f"model must be a flax.linen or flax.nnx Module, got {type(model).__name__}")
  views: dict[str, int | str] = {}

  def record(next_fun, args_, kwargs_, context):
    if context.method_name == "__call__" and isinstance(context.module, _LINEN_GROUPED):
      views["/".join(context.module.scope.path)] = EXPERTS
    elif context.method_name == "__call__" and isinstance(context.module, _LINEN_DOT + _LINEN_CONV):
      views["/".join(context.module.scope.path)] = _contracted(context.module)
    return next_fun(*args_, **kwargs_)

  def init():
    with nn.intercept_methods(record):
      return model.init(jax.random.key(0), *args, **kwargs)

  jax.eval_shape(init)
  return views


def ptq_nnx(model: nnx.Module, rules, **kwargs) -> nnx.Module:
  """Post-training quantization of an nnx model in place: the matched layers' kernels become packed
  :class:`~lpnum.nn.QuantizedKernel` values and the layers run lpnum's dot_general (or conv) on them; an
  :class:`~lpnum.nn.grouped.NnxGroupedDense` expert bank is packed per expert and runs the grouped matmul.

  ``kwargs`` go to :func:`lpnum.nn.ptq`. Returns the model.
  """
  rules = as_rules(rules)
  layers = {"/".join(map(str, path)): node for path, node in nnx.iter_graph(model)
            if isinstance(node, _NNX_DOT + _NNX_CONV + _NNX_GROUPED)}
  kernels = {path: {"kernel": node.kernel[...]} for path, node in layers.items()}
  quantized = ptq(kernels, rules, views=kernel_views(model), **kwargs)
  for path, node in layers.items():
    kernel = quantized[path]["kernel"]
    if isinstance(kernel, QuantizedKernel):
      node.kernel = nnx.Param(kernel)
  return quantize_model(model, rules)
