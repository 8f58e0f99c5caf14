"""Run an existing Flax model's matmuls with piecewise-affine multiplication (:mod:`lpnum.pam`), forward and backward.

Kosson and Jaggi (NeurIPS 2023) train transformers with every matmul's products replaced by PAM products, in the
forward and both backward matmuls, everything else unchanged. One layer is simply
``nn.Dense(..., dot_general=lpnum.pam.dot_general)`` (``nnx.Linear(..., dot_general=...)`` alike) and one attention
``nn.MultiHeadDotProductAttention(..., attention_fn=functools.partial(nn.dot_product_attention,
einsum_dot_general=lpnum.pam.dot_general))``; :func:`pam_model` does it for a whole model without editing it:

- linen: the returned :class:`PamModel`'s ``init``/``apply`` run the model under ``nn.intercept_methods``; each
  ``Dense``/``DenseGeneral`` whose path matches runs as a clone of itself with ``dot_general=lpnum.pam.dot_general``,
  and each ``MultiHeadDotProductAttention`` whose path matches computes its two products (``q k^T`` and
  ``probabilities v``) with PAM through its ``attention_fn``'s ``einsum_dot_general`` (its projections are
  ``DenseGeneral`` layers, matched by their own paths: ``.../query``, ``.../out``). The params tree is unchanged.
- nnx: the matching ``Linear``/``LinearGeneral`` layers get ``dot_general=lpnum.pam.dot_general``, in place (nnx's
  attention function has no ``einsum_dot_general`` hook: its products stay float).

Convolutions, embeddings (look-ups), normalization, softmax, activations and the loss stay float, as in the
paper's first setting. A pattern that matches no layer is an error (for linen, on the first ``init``/``apply``).
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import re

import flax.linen as nn
from flax import nnx

from lpnum import pam

__all__ = ["PamModel", "pam_model", "pam_attention_fn"]

_LINEN_DOT = (nn.Dense, nn.DenseGeneral)
_NNX_DOT = (nnx.Linear, nnx.LinearGeneral)


def pam_attention_fn(attention_fn=nn.dot_product_attention):
  """``attention_fn`` (flax's ``dot_product_attention`` by default) with both products PAM, for
  ``nn.MultiHeadDotProductAttention(attention_fn=...)``.

  Raises:
    ValueError: an ``attention_fn`` without an ``einsum_dot_general`` parameter.

  Example:
    >>> import jax, jax.numpy as jnp, flax.linen as nn
    >>> from lpnum.nn.pam import pam_attention_fn
    >>> layer = nn.MultiHeadDotProductAttention(num_heads=2, attention_fn=pam_attention_fn())
    >>> x = jnp.ones((1, 3, 4))
    >>> layer.apply(layer.init(jax.random.key(0), x), x).shape
    (1, 3, 4)
  """
  if _is_pam_attention(attention_fn):
    return attention_fn
  if "einsum_dot_general" not in inspect.signature(attention_fn).parameters:
    raise ValueError(f"attention_fn={getattr(attention_fn, '__name__', attention_fn)!r} has no einsum_dot_general "
                     "parameter to run its products with lpnum.pam.dot_general")
  return functools.partial(attention_fn, einsum_dot_general=pam.dot_general)


def _is_pam_attention(fn) -> bool:
  return isinstance(fn, functools.partial) and fn.keywords.get("einsum_dot_general") is pam.dot_general


@dataclasses.dataclass(frozen=True)
class PamModel:
  """A linen model run with the matmuls of its matching layers PAM (see :func:`pam_model`).

  ``init`` and ``apply`` take what the model's take.
  """

  model: nn.Module
  pattern: str

  def _interceptor(self, used: list, next_fun, args, kwargs, context):
    module = context.module
    if context.method_name != "__call__" or not isinstance(module, _LINEN_DOT + (nn.MultiHeadDotProductAttention,)):
      return next_fun(*args, **kwargs)
    if re.fullmatch(self.pattern, "/".join(module.scope.path)) is None:
      return next_fun(*args, **kwargs)
    used.append(module)
    if isinstance(module, nn.MultiHeadDotProductAttention):
      if _is_pam_attention(module.attention_fn):
        return next_fun(*args, **kwargs)
      clone = module.clone(parent=module.scope, attention_fn=pam_attention_fn(module.attention_fn))
    else:
      if module.dot_general is pam.dot_general:
        return next_fun(*args, **kwargs)
      if module.dot_general_cls is not None:
        raise ValueError(f"layer {'/'.join(module.scope.path)!r} has a dot_general_cls; PAM replaces dot_general")
      clone = module.clone(parent=module.scope, dot_general=pam.dot_general)
    return clone(*args, **kwargs)

  def _run(self, method: str, *args, **kwargs):
    used: list = []
    with nn.intercept_methods(functools.partial(self._interceptor, used)):
      out = getattr(self.model, method)(*args, **kwargs)
    if not used:
      raise ValueError(f"pattern={self.pattern!r} matches no Dense, DenseGeneral or MultiHeadDotProductAttention "
                       "layer of the model")
    return out

  def init(self, *args, **kwargs):
    """``model.init`` with the matching layers' matmuls PAM."""
    return self._run("init", *args, **kwargs)

  def apply(self, *args, **kwargs):
    """``model.apply`` with the matching layers' matmuls PAM."""
    return self._run("apply", *args, **kwargs)


def pam_model(model, pattern: str = ".*"):
  """Runs an existing model's matmuls with PAM, forward and backward, without editing its source.

  Args:
    model: a ``flax.linen.Module`` (returns a :class:`PamModel`) or a ``flax.nnx.Module`` (its ``Linear`` and
      ``LinearGeneral`` layers are changed in place; returns the model).
    pattern: a regular expression; the layers whose ``/``-joined path matches it fully run with PAM.

  Raises:
    TypeError: ``model`` is not a Flax module, or ``pattern`` not a string.
    ValueError: ``pattern`` is not a regular expression or matches no layer.

  Example:
    >>> import jax, jax.numpy as jnp, flax.linen as nn
    >>> from lpnum.nn.pam import pam_model
    >>> mlp = nn.Sequential([nn.Dense(8), nn.relu, nn.Dense(2)])
    >>> model = pam_model(mlp, "layers_0")  # the first layer only
    >>> variables = model.init(jax.random.key(0), jnp.ones((1, 4)))
    >>> model.apply(variables, jnp.ones((1, 4))).shape
    (1, 2)
  """
  if not isinstance(pattern, str):
    raise TypeError(f"pattern={pattern!r} must be a str (a regular expression over module paths)")
  try:
    re.compile(pattern)
  except re.error as e:
    raise ValueError(f"pattern={pattern!r} is not a regular expression: {e}") from None
  if isinstance(model, nn.Module):
    return PamModel(model, pattern)
  if isinstance(model, nnx.Module):
    layers = [node for path, node in nnx.iter_graph(model)
              if isinstance(node, _NNX_DOT) and re.fullmatch(pattern, "/".join(map(str, path)))]
    if not layers:
      raise ValueError(f"pattern={pattern!r} matches no Linear or LinearGeneral layer of the model")
    for node in layers:
      node.dot_general = pam.dot_general
    return model
  raise TypeError(f"model must be a flax.linen or flax.nnx Module, got {type(model).__name__}")
