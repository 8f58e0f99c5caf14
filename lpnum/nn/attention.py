"""Quantized attention and einsum: Q.K^T and attention.V through :func:`lpnum.dot_general`, clipped softmax,
gated attention, and two-operand einsums for flax layers.

Attention (Vaswani et al., "Attention Is All You Need", NeurIPS 2017) computes, per batch element and head,
``softmax(q k^T / sqrt(d) + bias) v``. :func:`dot_product_attention` runs both products through
:func:`lpnum.dot_general` with the batch and head axes as batch axes, so every (batch element, head) pair gets
its own scales. Granularities read as in :mod:`lpnum.qdot.config` with these matmuls:

- ``qk``: lhs = the (scaled) queries ``(q_length, depth)``, rhs = the keys transposed ``(depth, kv_length)``:
  ``per_channel()`` means a scale per query token (lhs) and per key token (rhs).
- ``av``: lhs = the probabilities ``(q_length, kv_length)``, rhs = the values ``(kv_length, v_depth)``:
  ``per_channel()`` means a scale per query row (lhs) and per value feature (rhs).

The products have no layer to hold quantizer state, so ``qk`` and ``av`` must be stateless: dynamic (or no)
scaling, no LSQ steps, nearest rounding. :func:`attention_fn` plugs the function into
``flax.linen.MultiHeadDotProductAttention(attention_fn=...)`` and ``flax.nnx.MultiHeadAttention(attention_fn=...)``.

Clipped softmax and gated attention follow Bondarenko, Nagel and Blankevoort, "Quantizable Transformers: Removing
Outliers by Helping Attention Heads Do Nothing", NeurIPS 2023. Heads that learn to "do nothing" push the softmax
towards exact zeros, which needs unbounded logits and creates the activation outliers that break 8-bit
quantization. The clipped softmax ``clip((zeta - gamma) softmax(x) + gamma, 0, 1)`` (``gamma <= 0 <= 1 <= zeta``)
reaches exact zeros (and, for ``zeta > 1``, ones) with finite logits; the paper found ``gamma < 0`` is what
matters (``gamma = -0.03``, ``zeta = 1`` for BERT with T = 128; ``gamma = -alpha / T`` with ``alpha`` in [2, 4]
across sequence lengths). Gated attention multiplies each head's output by ``sigmoid(G_i(x_i))``, where ``G_i`` is
a linear map of the head's slice ``x_i`` of the layer input (``n_heads * (d_head + 1)`` parameters); the gate bias
sets the initial openness ``sigmoid(b_init)`` (the paper's useful range is about [0.1, 0.9]).

:func:`einsum` (and the modules :class:`QuantEinsum` for linen, :class:`QuantEinsumOp` for ``nnx.Einsum``'s
``einsum_op``) computes two-operand ``jnp.einsum`` strings as a quantized ``dot_general`` plus a transpose: the
matmul's K is every contracted index, M the lhs-only indices, N the rhs-only indices, and indices in both operands
and the output are batch axes (per batch element scales).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx as _fnnx
from jax.typing import ArrayLike

from lpnum.nn import linen as _linen
from lpnum.nn import nnx as _nnx
from lpnum.qdot import DotConfig, Engine, OperandState, dot_general

__all__ = ["SOFTMAXES", "clipped_softmax", "dot_product_attention", "attention_fn", "einsum", "QuantEinsum",
           "QuantEinsumOp", "QuantSelfAttention", "NnxQuantSelfAttention"]

SOFTMAXES = ("standard", "clipped")
_GAMMA, _ZETA = -0.03, 1.0
# LeCun normal over each head's d_head inputs of a (heads, d_head) gate kernel.
_GATE_INIT = nn.initializers.variance_scaling(1.0, "fan_in", "truncated_normal", in_axis=-1, out_axis=(),
                                              batch_axis=(0,))


# ---- softmax ------------------------------------------------------------------------------------------------------
def _check_stretch(gamma, zeta) -> tuple[float, float]:
  for name, value in (("gamma", gamma), ("zeta", zeta)):
    if isinstance(value, bool) or not isinstance(value, int | float | np.integer | np.floating) \
        or not math.isfinite(value):
      raise ValueError(f"{name}={value!r} must be a finite number")
  if gamma > 0:
    raise ValueError(f"gamma={gamma!r} must be <= 0 (the lower stretch; < 0 gives exact zeros)")
  if zeta < 1:
    raise ValueError(f"zeta={zeta!r} must be >= 1 (the upper stretch; > 1 gives exact ones)")
  return float(gamma), float(zeta)


def clipped_softmax(x: ArrayLike, *, gamma: float = _GAMMA, zeta: float = _ZETA, axis: int = -1) -> jax.Array:
  """The clipped softmax of Bondarenko et al. (2023): ``clip((zeta - gamma) * softmax(x) + gamma, 0, 1)``.

  Probabilities below ``-gamma / (zeta - gamma)`` become exact zeros and those above
  ``(1 - gamma) / (zeta - gamma)`` exact ones; clipped entries have zero gradient.

  Args:
    x: logits, float.
    gamma: the lower stretch, ``<= 0`` (default -0.03, the paper's BERT value).
    zeta: the upper stretch, ``>= 1`` (default 1: no clipping at one).
    axis: the softmax axis.

  Raises:
    ValueError: ``gamma > 0``, ``zeta < 1`` or non-finite stretches.

  Example:
    >>> import jax.numpy as jnp
    >>> from lpnum.nn.attention import clipped_softmax
    >>> p = clipped_softmax(jnp.log(jnp.array([0.02, 0.08, 0.9])), gamma=-0.1, zeta=1.1)
    >>> [round(float(v), 4) for v in p]  # 1.2 p - 0.1, clipped to [0, 1]
    [0.0, 0.0, 0.98]
  """
  gamma, zeta = _check_stretch(gamma, zeta)
  p = jax.nn.softmax(jnp.asarray(x), axis=axis)
  return jnp.clip((zeta - gamma) * p + gamma, 0.0, 1.0).astype(p.dtype)


# ---- attention ----------------------------------------------------------------------------------------------------
def _check_config(cfg, name: str) -> None:
  if cfg is None:
    return
  if not isinstance(cfg, DotConfig):
    raise TypeError(f"{name} must be a DotConfig or None, got {type(cfg).__name__}")
  for role in ("lhs", "rhs"):
    oq = getattr(cfg, role)
    if oq is not None and oq.needs_state:
      raise ValueError(f"{name}.{role} needs layer state (scaling={oq.scaling.value!r}, estimator={oq.estimator!r}): "
                       "attention products quantize activations with no state; use scaling='dynamic' or 'none'")
  if cfg.needs_key:
    raise ValueError(f"{name} rounds stochastically and needs keys, which attention products do not get: use "
                     "rounding='nearest_even'")
  if cfg.engine is Engine.KERNEL:
    raise ValueError(f"{name}.engine='kernel' multiplies by packed weights; attention has none")


def _check_options(softmax, gamma, zeta) -> None:
  if softmax not in SOFTMAXES:
    raise ValueError(f"softmax={softmax!r}; expected one of {SOFTMAXES}")
  _check_stretch(gamma, zeta)


def _product(a, b, dn, cfg: DotConfig | None, precision):
  if cfg is None:
    return jax.lax.dot_general(a, b, dn, precision=precision)
  return dot_general(a, b, dn, cfg)


def _check_shapes(query, key, value) -> None:
  q, k, v = query.shape, key.shape, value.shape
  if not (len(q) == len(k) == len(v) >= 3):
    raise ValueError(f"query, key and value must be [batch..., length, heads, depth] arrays of one rank, got "
                     f"shapes {q}, {k}, {v}")
  if not (q[:-3] == k[:-3] == v[:-3]):
    raise ValueError(f"query, key and value batch axes differ: shapes {q}, {k}, {v}")
  if k[-3] != v[-3] or k[-2] != v[-2]:
    raise ValueError(f"key {k} and value {v} must have the same length and heads")
  if q[-2] % k[-2]:
    raise ValueError(f"query heads ({q[-2]}) must be a multiple of key heads ({k[-2]})")
  if q[-1] != k[-1]:
    raise ValueError(f"query and key depths differ: shapes {q}, {k}")


def dot_product_attention(query: ArrayLike, key: ArrayLike, value: ArrayLike, bias: ArrayLike | None = None,
                          mask: ArrayLike | None = None, broadcast_dropout: bool = True,
                          dropout_rng: jax.Array | None = None, dropout_rate: float = 0.0,
                          deterministic: bool = False, dtype=None, precision=None, module=None,
                          force_fp32_for_softmax: bool = False, einsum_dot_general=None,
                          qk_attn_weights_einsum=None, attn_weights_value_einsum=None, is_causal: bool = False,
                          *, qk: DotConfig | None = None, av: DotConfig | None = None,
                          softmax: str = "standard", gamma: float = _GAMMA, zeta: float = _ZETA) -> jax.Array:
  """``flax.linen.dot_product_attention`` with both products quantized and an optional clipped softmax.

  The positional arguments are flax's (linen and nnx): ``query`` ``[batch..., q_length, heads, depth]``, ``key``
  ``[batch..., kv_length, kv_heads, depth]``, ``value`` ``[batch..., kv_length, kv_heads, v_depth]`` (query heads a
  multiple of kv heads: grouped-query attention as nnx does it), ``bias`` and ``mask`` broadcastable to
  ``[batch..., heads, q_length, kv_length]``, ``is_causal`` adds a causal mask, dropout as flax (on the
  probabilities, before the second product), ``module`` sows the probabilities as ``attention_weights``. The
  queries are scaled by ``1/sqrt(depth)`` before they are quantized, as flax scales them. ``precision`` applies
  to float products only; flax's einsum overrides (``einsum_dot_general``, ``qk_attn_weights_einsum``,
  ``attn_weights_value_einsum``) must be None, as the products are lpnum's.

  Args:
    qk: the quantization of ``q @ k^T`` (None: float); stateless, see the module docs.
    av: the quantization of ``probabilities @ v`` (None: float).
    softmax: ``"standard"`` or ``"clipped"`` (:func:`clipped_softmax` with ``gamma``, ``zeta``).
    gamma: the clipped softmax's lower stretch (<= 0).
    zeta: the clipped softmax's upper stretch (>= 1).

  Returns:
    ``[batch..., q_length, heads, v_depth]`` in the computation dtype.

  Raises:
    TypeError: a non-DotConfig ``qk``/``av``, non-float inputs or an einsum override.
    ValueError: stateful or stochastic configs, shapes that do not fit, bad softmax options or dropout settings.

  Example:
    >>> import jax.numpy as jnp
    >>> import lpnum
    >>> from lpnum.nn.attention import dot_product_attention
    >>> q = jnp.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]).reshape(1, 3, 1, 2)  # [batch, length, heads, depth]
    >>> v = jnp.array([[1.0, 0.0], [0.0, 1.0], [3.0, -1.0]]).reshape(1, 3, 1, 2)
    >>> cfg = lpnum.DotConfig(lhs="int4", rhs="int4")
    >>> out = dot_product_attention(q, q, v, qk=cfg, av=cfg)
    >>> out.shape, [round(float(x), 3) for x in out[0, :, 0, 0]]
    ((1, 3, 1, 2), [1.665, 1.48, 1.695])
    >>> [round(float(x), 3) for x in dot_product_attention(q, q, v)[0, :, 0, 0]]  # float
    [1.604, 1.401, 1.759]
  """
  for name, override in (("einsum_dot_general", einsum_dot_general),
                         ("qk_attn_weights_einsum", qk_attn_weights_einsum),
                         ("attn_weights_value_einsum", attn_weights_value_einsum)):
    if override is not None:
      raise TypeError(f"{name}={override!r}: lpnum attention computes its products with lpnum.dot_general; "
                      "pass qk=/av= configs instead")
  _check_config(qk, "qk")
  _check_config(av, "av")
  _check_options(softmax, gamma, zeta)
  if isinstance(dropout_rate, bool) or not isinstance(dropout_rate, int | float) or not 0 <= dropout_rate < 1:
    raise ValueError(f"dropout_rate={dropout_rate!r} must be in [0, 1)")
  query, key, value = (jnp.asarray(a) for a in (query, key, value))
  dtype = jnp.result_type(query, key, value) if dtype is None else jnp.dtype(dtype)
  if not jnp.issubdtype(dtype, jnp.floating):
    raise TypeError(f"attention computes in a float dtype, got {dtype}")
  query, key, value = (a.astype(dtype) for a in (query, key, value))
  _check_shapes(query, key, value)
  rep = query.shape[-2] // key.shape[-2]
  if rep > 1:
    key, value = jnp.repeat(key, rep, axis=-2), jnp.repeat(value, rep, axis=-2)
  nb = query.ndim - 3
  batch = (*range(nb), nb + 1)
  query = query / jnp.sqrt(query.shape[-1]).astype(dtype)
  logits = _product(query, key, (((nb + 2,), (nb + 2,)), (batch, batch)), qk, precision)  # [batch..., h, q, k]
  if bias is not None:
    logits = logits + bias
  if is_causal:
    causal = jnp.tril(jnp.ones(logits.shape[-2:], bool))
    mask = causal if mask is None else jnp.logical_and(mask, causal)
  if mask is not None:
    logits = jnp.where(mask, logits, jnp.finfo(dtype).min)
  if force_fp32_for_softmax and dtype != jnp.float32:
    logits = logits.astype(jnp.float32)
  probs = jax.nn.softmax(logits) if softmax == "standard" else clipped_softmax(logits, gamma=gamma, zeta=zeta)
  probs = probs.astype(dtype)
  if module is not None:
    collection = "intermediates" if isinstance(module, nn.Module) else _fnnx.Intermediate
    module.sow(collection, "attention_weights", probs)
  if not deterministic and dropout_rate > 0:
    if dropout_rng is None:
      raise ValueError(f"dropout_rate={dropout_rate} with deterministic=False needs dropout_rng")
    keep_prob = 1.0 - dropout_rate
    shape = (1,) * (key.ndim - 2) + probs.shape[-2:] if broadcast_dropout else probs.shape
    keep = jax.random.bernoulli(dropout_rng, keep_prob, shape)
    probs = probs * (keep.astype(dtype) / jnp.asarray(keep_prob, dtype))
  dn = (((nb + 2,), (nb,)), ((*range(nb), nb), (*range(nb), nb + 1)))
  out = _product(probs, value, dn, av, precision)  # [batch..., h, q, d]
  return jnp.moveaxis(out, -3, -2)


def attention_fn(qk: DotConfig | None, av: DotConfig | None, *, softmax: str = "standard",
                 gamma: float = _GAMMA, zeta: float = _ZETA) -> Callable[..., jax.Array]:
  """A quantized attention function for ``nn.MultiHeadDotProductAttention(attention_fn=...)`` (linen) and
  ``nnx.MultiHeadAttention(attention_fn=...)``: :func:`dot_product_attention` with these options bound.

  Args:
    qk: the quantization of ``q @ k^T`` (None: float); dynamic or no scaling, nearest rounding.
    av: the quantization of ``probabilities @ v`` (None: float).
    softmax: ``"standard"`` or ``"clipped"``.
    gamma: the clipped softmax's lower stretch, <= 0 (default -0.03).
    zeta: the clipped softmax's upper stretch, >= 1 (default 1).

  Raises:
    TypeError: a ``qk`` or ``av`` that is not a DotConfig or None.
    ValueError: stateful, stochastic or ``engine='kernel'`` configs, or bad softmax options (here rather than
      at the first call).

  Example:
    >>> import jax, jax.numpy as jnp, flax.linen as nn
    >>> import lpnum
    >>> from lpnum.nn.attention import attention_fn
    >>> fn = attention_fn(lpnum.DotConfig(lhs="int8", rhs="int8"), lpnum.DotConfig(lhs="int8", rhs="int8"),
    ...                   softmax="clipped")
    >>> layer = nn.MultiHeadDotProductAttention(num_heads=2, qkv_features=4, attention_fn=fn)
    >>> x = jnp.ones((1, 3, 4))
    >>> layer.apply(layer.init(jax.random.key(0), x), x).shape
    (1, 3, 4)
  """
  _check_config(qk, "qk")
  _check_config(av, "av")
  _check_options(softmax, gamma, zeta)
  return functools.partial(dot_product_attention, qk=qk, av=av, softmax=softmax, gamma=gamma, zeta=zeta)


# ---- einsum -------------------------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=256)
def _subscripts(einsum_str: str) -> tuple[str, str, str]:
  """(lhs, rhs, output) index strings of a supported two-operand einsum."""
  s = einsum_str.replace(" ", "")
  if "." in s:
    raise ValueError(f"einsum_str={einsum_str!r}: ellipsis ('...') is not supported; name every axis")
  inputs, arrow, out = s.partition("->")
  if "->" in out:
    raise ValueError(f"einsum_str={einsum_str!r} has more than one '->'")
  terms = inputs.split(",")
  if len(terms) != 2:
    raise ValueError(f"einsum_str={einsum_str!r} must have exactly two operands, got {len(terms)}")
  lhs, rhs = terms
  if not arrow:
    both = lhs + rhs
    out = "".join(sorted(c for c in set(both) if both.count(c) == 1))
  for name, term in (("lhs", lhs), ("rhs", rhs), ("output", out)):
    if not all(c.isascii() and c.isalpha() for c in term):
      raise ValueError(f"einsum_str={einsum_str!r}: {name} indices {term!r} must be letters")
    if len(set(term)) != len(term):
      raise ValueError(f"einsum_str={einsum_str!r}: repeated index in {name} {term!r} (traces, diagonals and "
                       "repeated output axes are not supported)")
  for c in out:
    if c not in lhs and c not in rhs:
      raise ValueError(f"einsum_str={einsum_str!r}: output index {c!r} is in no operand")
  for name, term, other in (("lhs", lhs, rhs), ("rhs", rhs, lhs)):
    for c in term:
      if c not in other and c not in out:
        raise ValueError(f"einsum_str={einsum_str!r}: index {c!r} is only in {name} and not in the output (sums "
                         "over one operand are not supported)")
  return lhs, rhs, out


def _plan(einsum_str: str, lhs_shape: tuple[int, ...], rhs_shape: tuple[int, ...]):
  """The dot_general dimension numbers and the transpose of its result into the einsum's output order."""
  lhs, rhs, out = _subscripts(einsum_str)
  for name, term, shape in (("lhs", lhs, lhs_shape), ("rhs", rhs, rhs_shape)):
    if len(term) != len(shape):
      raise ValueError(f"einsum_str={einsum_str!r}: {name} {term!r} names {len(term)} axes, the {name} has shape "
                       f"{shape}")
  for c in set(lhs) & set(rhs):
    if lhs_shape[lhs.index(c)] != rhs_shape[rhs.index(c)]:
      raise ValueError(f"einsum_str={einsum_str!r}: index {c!r} has size {lhs_shape[lhs.index(c)]} in lhs "
                       f"{lhs_shape} and {rhs_shape[rhs.index(c)]} in rhs {rhs_shape}")
  batch = [c for c in lhs if c in rhs and c in out]
  contract = [c for c in lhs if c in rhs and c not in out]
  result = batch + [c for c in lhs if c not in rhs] + [c for c in rhs if c not in lhs]
  dn = ((tuple(lhs.index(c) for c in contract), tuple(rhs.index(c) for c in contract)),
        (tuple(lhs.index(c) for c in batch), tuple(rhs.index(c) for c in batch)))
  return dn, tuple(result.index(c) for c in out)


def _check_einsum_str(einsum_str) -> None:
  if not isinstance(einsum_str, str):
    raise TypeError(f"einsum_str={einsum_str!r} must be a string")
  _subscripts(einsum_str)


def einsum(einsum_str: str, lhs: ArrayLike, rhs: ArrayLike, config: DotConfig | None, *,
           state: OperandState | None = None, key: jax.Array | None = None,
           preferred_element_type=None) -> jax.Array:
  """``jnp.einsum(einsum_str, lhs, rhs)`` for two operands, through :func:`lpnum.dot_general` with ``config``.

  The contraction is a ``dot_general`` (batch axes: indices in both operands and the output; K: indices in both
  operands only; M, N: indices in one operand) followed by a transpose into the output order; granularities and
  scales follow :func:`lpnum.dot_general` (per batch element). Implicit output (no ``->``) is supported.

  Args:
    einsum_str: e.g. ``"btd,dhk->bthk"``.
    lhs, rhs: float operands.
    config: a :class:`~lpnum.DotConfig` (None: a float ``dot_general``).
    state, key, preferred_element_type: as :func:`lpnum.dot_general`.

  Raises:
    TypeError: a non-string ``einsum_str``.
    ValueError: ellipses, repeated indices, other than two operands, sums over one operand, or shapes that do
      not fit, naming ``einsum_str``.

  Example:
    >>> import jax.numpy as jnp
    >>> import lpnum
    >>> from lpnum.nn.attention import einsum
    >>> x = jnp.array([[[1.0, 2.0, 3.0]], [[0.5, -1.0, 2.0]]])  # (b, t, d) = (2, 1, 3)
    >>> w = jnp.array([[0.5, -1.0], [1.0, 0.25], [0.3, 0.6]])
    >>> y = einsum("btd,df->tbf", x, w, lpnum.DotConfig(lhs="int4", rhs="int4"))
    >>> y.shape, [[round(float(v), 3) for v in row] for row in y[0]]
    ((1, 2, 2), [[3.367, 1.469], [-0.061, 0.551]])
    >>> [[round(float(v), 3) for v in row] for row in jnp.einsum("btd,df->tbf", x, w)[0]]
    [[3.4, 1.3], [-0.15, 0.45]]
  """
  _check_einsum_str(einsum_str)
  lhs, rhs = jnp.asarray(lhs), jnp.asarray(rhs)
  dn, perm = _plan(einsum_str, lhs.shape, rhs.shape)
  if config is None:
    y = jax.lax.dot_general(lhs, rhs, dn, preferred_element_type=preferred_element_type)
  else:
    y = dot_general(lhs, rhs, dn, config, state=state, key=key, preferred_element_type=preferred_element_type)
  return y if perm == tuple(range(y.ndim)) else jnp.transpose(y, perm)


def _bias_shape(einsum_str: str, kernel_shape) -> tuple[tuple[int, ...], str]:
  """nn.Einsum's bias: the kernel axes kept in the output, and their indices."""
  _, rhs, out = _subscripts(einsum_str)
  kept = "".join(c for c in out if c in rhs)
  return tuple(kernel_shape[rhs.index(c)] for c in kept), kept


class QuantEinsum(nn.Module):
  """A linen einsum layer (``nn.Einsum``'s attributes) quantized by a :class:`~lpnum.DotConfig`.

  ``y = einsum(einsum_str, inputs, kernel) (+ bias)`` with ``kernel`` of shape ``shape``; the product runs through
  :class:`lpnum.nn.linen.QuantDotGeneral` (a submodule ``QuantDotGeneral_0``), so delayed/static scaling, LSQ and
  stochastic rounding work as in ``nn.Dense``. The bias, as ``nn.Einsum``'s, has the kernel axes that the output
  keeps.

  Attributes:
    shape: the kernel shape.
    einsum_str: a two-operand einsum, the input first and the kernel second (see :func:`einsum`).
    config: the quantization (None: float).
    use_bias: add a bias.
    kernel_init, bias_init: initializers.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> import lpnum
    >>> from lpnum.nn.attention import QuantEinsum
    >>> layer = QuantEinsum((4, 2, 3), "btd,dhk->bthk", lpnum.DotConfig(lhs="int8", rhs="int8"), use_bias=True)
    >>> variables = layer.init(jax.random.key(0), jnp.ones((1, 5, 4)))
    >>> variables["params"]["bias"].shape, layer.apply(variables, jnp.ones((1, 5, 4))).shape
    ((2, 3), (1, 5, 2, 3))
  """

  shape: tuple[int, ...]
  einsum_str: str
  config: DotConfig | None = None
  use_bias: bool = False
  kernel_init: Callable = nn.initializers.lecun_normal()
  bias_init: Callable = nn.initializers.zeros_init()

  def __post_init__(self) -> None:
    _check_einsum_str(self.einsum_str)
    if self.config is not None and not isinstance(self.config, DotConfig):
      raise TypeError(f"config must be a DotConfig or None, got {type(self.config).__name__}")
    super().__post_init__()

  @nn.compact
  def __call__(self, inputs: jax.Array) -> jax.Array:
    kernel = self.param("kernel", self.kernel_init, tuple(self.shape), jnp.float32)
    dn, perm = _plan(self.einsum_str, jnp.shape(inputs), kernel.shape)
    if self.config is None:
      y = jax.lax.dot_general(inputs, kernel, dn)
    else:
      y = _linen.QuantDotGeneral(self.config)(inputs, kernel, dn)
    y = y if perm == tuple(range(y.ndim)) else jnp.transpose(y, perm)
    if self.use_bias:
      shape, kept = _bias_shape(self.einsum_str, kernel.shape)
      bias = self.param("bias", self.bias_init, shape, jnp.float32)
      out = _subscripts(self.einsum_str)[2]
      y = y + bias.reshape(tuple(bias.shape[kept.index(c)] if c in kept else 1 for c in out))
    return y


class QuantEinsumOp(_nnx.QuantDotGeneral):
  """A quantized ``einsum_op`` for ``nnx.Einsum(..., einsum_op=QuantEinsumOp(cfg))``: :func:`einsum` with the
  state handling of :class:`lpnum.nn.nnx.QuantDotGeneral` (delayed/static statistics, LSQ steps, ``rngs`` for
  stochastic rounding).

  Example:
    >>> import jax.numpy as jnp
    >>> from flax import nnx
    >>> import lpnum
    >>> from lpnum.nn.attention import QuantEinsumOp
    >>> cfg = lpnum.DotConfig(lhs=lpnum.OperandQuant("int8", scaling="static"), rhs="int8")
    >>> layer = nnx.Einsum("btd,dhk->bthk", (4, 2, 3), einsum_op=QuantEinsumOp(cfg), rngs=nnx.Rngs(0))
    >>> layer(jnp.full((1, 5, 4), 2.0)).shape, layer.einsum_op.lhs_amax[...].item()
    ((1, 5, 2, 3), 2.0)
  """

  def __call__(self, einsum_str, lhs, rhs, precision=None, preferred_element_type=None, out_sharding=None):
    if out_sharding is not None:
      raise ValueError(f"out_sharding={out_sharding!r} is not supported by QuantEinsumOp")
    _check_einsum_str(einsum_str)
    dn, perm = _plan(einsum_str, jnp.shape(lhs), jnp.shape(rhs))
    y = super().__call__(lhs, rhs, dn, preferred_element_type=preferred_element_type)
    return y if perm == tuple(range(y.ndim)) else jnp.transpose(y, perm)


# ---- self-attention modules -----------------------------------------------------------------------------------------
def _check_heads(num_heads, qkv: int, features: int, gated: bool) -> int:
  if isinstance(num_heads, bool) or not isinstance(num_heads, int) or num_heads < 1:
    raise ValueError(f"num_heads={num_heads!r} must be a positive int")
  if qkv % num_heads:
    raise ValueError(f"qkv_features={qkv} must be divisible by num_heads={num_heads}")
  if gated and features % num_heads:
    raise ValueError(f"gated=True gives each of the num_heads={num_heads} heads a gate on its slice of the "
                     f"input's {features} features: they must divide evenly")
  return qkv // num_heads


def _check_module(config, qk, av, softmax, gamma, zeta, gated, gate_bias_init, dropout_rate) -> None:
  if config is not None and not isinstance(config, DotConfig):
    raise TypeError(f"config must be a DotConfig or None, got {type(config).__name__}")
  _check_config(qk, "qk")
  _check_config(av, "av")
  _check_options(softmax, gamma, zeta)
  if not isinstance(gated, bool):
    raise TypeError(f"gated={gated!r} must be a bool")
  if isinstance(gate_bias_init, bool) or not isinstance(gate_bias_init, int | float) \
      or not math.isfinite(gate_bias_init):
    raise ValueError(f"gate_bias_init={gate_bias_init!r} must be a finite number")
  if isinstance(dropout_rate, bool) or not isinstance(dropout_rate, int | float) or not 0 <= dropout_rate < 1:
    raise ValueError(f"dropout_rate={dropout_rate!r} must be in [0, 1)")


def _head_slices(x: jax.Array, num_heads: int) -> jax.Array:
  """The input as (tokens, heads, features / heads) for the per-head gates."""
  return x.reshape(-1, num_heads, x.shape[-1] // num_heads)


class QuantSelfAttention(nn.Module):
  """Multi-head self-attention with quantized projections and products, optional clipped softmax and gating.

  ``query``, ``key``, ``value`` (``DenseGeneral`` to ``(num_heads, head_dim)``) and ``out`` (``DenseGeneral``
  from ``(num_heads, head_dim)``) are stock flax layers whose ``dot_general_cls`` is
  :class:`lpnum.nn.linen.QuantDotGeneral` with ``config`` (so any config works, state in ``quant_stats``); the
  attention itself is :func:`dot_product_attention` with ``qk``, ``av`` and ``softmax``. With ``gated=True``
  each head's output is multiplied by ``sigmoid(G_h(x_h))`` (Bondarenko et al., 2023): ``x_h`` is the h-th of
  ``num_heads`` equal slices of the token's input features and ``G_h`` a linear map to one value, a
  :class:`QuantEinsum` named ``gate`` (kernel ``(num_heads, features / num_heads)``, bias ``(num_heads,)``
  initialized to ``gate_bias_init``) quantized by ``config``.

  Attributes:
    num_heads: number of heads.
    qkv_features: the q/k/v width (default: the input features), divisible by ``num_heads``.
    out_features: the output width (default: the input features).
    config: the projections' (and gate's) quantization, None for float.
    qk, av: the attention products' quantization (stateless, see :func:`dot_product_attention`).
    softmax: ``"standard"`` or ``"clipped"``.
    gamma, zeta: the clipped softmax stretches (defaults -0.03 and 1).
    gated: add the per-head gates.
    gate_bias_init: the gates' initial bias (initial openness ``sigmoid(gate_bias_init)``; default 0: 0.5).
    dropout_rate: attention dropout (the ``"dropout"`` RNG stream when not deterministic).
    deterministic: default for the call argument.
    use_bias: biases in the projections.
    kernel_init: the projections' kernel initializer.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> import lpnum
    >>> from lpnum.nn.attention import QuantSelfAttention
    >>> layer = QuantSelfAttention(2, config=lpnum.DotConfig.w8a8(), qk=lpnum.DotConfig(lhs="int8", rhs="int8"),
    ...                            softmax="clipped", gated=True)
    >>> variables = layer.init(jax.random.key(0), jnp.ones((1, 3, 4)))
    >>> variables["params"]["gate"]["kernel"].shape, layer.apply(variables, jnp.ones((1, 3, 4))).shape
    ((2, 2), (1, 3, 4))
  """

  num_heads: int
  qkv_features: int | None = None
  out_features: int | None = None
  config: DotConfig | None = None
  qk: DotConfig | None = None
  av: DotConfig | None = None
  softmax: str = "standard"
  gamma: float = _GAMMA
  zeta: float = _ZETA
  gated: bool = False
  gate_bias_init: float = 0.0
  dropout_rate: float = 0.0
  deterministic: bool | None = None
  use_bias: bool = True
  kernel_init: Callable = nn.initializers.lecun_normal()

  def __post_init__(self) -> None:
    _check_module(self.config, self.qk, self.av, self.softmax, self.gamma, self.zeta, self.gated,
                  self.gate_bias_init, self.dropout_rate)
    super().__post_init__()

  @nn.compact
  def __call__(self, x: jax.Array, mask: jax.Array | None = None, deterministic: bool | None = None) -> jax.Array:
    """Attends ``x`` ``[batch..., length, features]`` to itself; ``mask`` broadcastable to
    ``[batch..., heads, length, length]``."""
    features = x.shape[-1]
    head_dim = _check_heads(self.num_heads, self.qkv_features or features, features, self.gated)
    dg_cls = None if self.config is None else functools.partial(_linen.QuantDotGeneral, config=self.config)
    dense = functools.partial(nn.DenseGeneral, (self.num_heads, head_dim), use_bias=self.use_bias,
                              kernel_init=self.kernel_init, dot_general_cls=dg_cls)
    q, k, v = dense(name="query")(x), dense(name="key")(x), dense(name="value")(x)
    if self.dropout_rate > 0:
      deterministic = nn.merge_param("deterministic", self.deterministic, deterministic)
    else:
      deterministic = True
    rng = None if deterministic else self.make_rng("dropout")
    y = dot_product_attention(q, k, v, mask=mask, dropout_rng=rng, dropout_rate=self.dropout_rate,
                              deterministic=deterministic, qk=self.qk, av=self.av, softmax=self.softmax,
                              gamma=self.gamma, zeta=self.zeta)
    if self.gated:
      gate = QuantEinsum((self.num_heads, features // self.num_heads), "nhd,hd->nh", self.config, use_bias=True,
                         kernel_init=_GATE_INIT, bias_init=nn.initializers.constant(self.gate_bias_init),
                         name="gate")
      y = y * jax.nn.sigmoid(gate(_head_slices(x, self.num_heads))).reshape(*x.shape[:-1], self.num_heads, 1)
    return nn.DenseGeneral(self.out_features or features, axis=(-2, -1), use_bias=self.use_bias,
                           kernel_init=self.kernel_init, dot_general_cls=dg_cls, name="out")(y)


class NnxQuantSelfAttention(_fnnx.Module):
  """The ``flax.nnx`` :class:`QuantSelfAttention`: same computation and parameter shapes, with
  ``nnx.LinearGeneral`` projections whose ``dot_general`` is :class:`lpnum.nn.nnx.QuantDotGeneral` and an
  ``nnx.Einsum`` gate whose ``einsum_op`` is :class:`QuantEinsumOp`.

  Args:
    in_features: the input width.
    num_heads: number of heads.
    qkv_features, out_features, config, qk, av, softmax, gamma, zeta, gated, gate_bias_init, dropout_rate,
      use_bias, kernel_init: as :class:`QuantSelfAttention`.
    deterministic: default for the call argument (dropout needs ``rngs`` with a ``dropout`` stream).
    rngs: parameter (and dropout, stochastic rounding) randomness.

  Example:
    >>> import jax.numpy as jnp
    >>> from flax import nnx
    >>> import lpnum
    >>> from lpnum.nn.attention import NnxQuantSelfAttention
    >>> layer = NnxQuantSelfAttention(4, 2, config=lpnum.DotConfig.w8a8(), gated=True, rngs=nnx.Rngs(0))
    >>> layer(jnp.ones((1, 3, 4))).shape, layer.gate.bias[...].tolist()
    ((1, 3, 4), [0.0, 0.0])
  """

  def __init__(self, in_features: int, num_heads: int, *, qkv_features: int | None = None,
               out_features: int | None = None, config: DotConfig | None = None, qk: DotConfig | None = None,
               av: DotConfig | None = None, softmax: str = "standard", gamma: float = _GAMMA,
               zeta: float = _ZETA, gated: bool = False, gate_bias_init: float = 0.0, dropout_rate: float = 0.0,
               deterministic: bool = False, use_bias: bool = True,
               kernel_init: Callable = nn.initializers.lecun_normal(), rngs: _fnnx.Rngs) -> None:
    _check_module(config, qk, av, softmax, gamma, zeta, gated, gate_bias_init, dropout_rate)
    if isinstance(in_features, bool) or not isinstance(in_features, int) or in_features < 1:
      raise ValueError(f"in_features={in_features!r} must be a positive int")
    head_dim = _check_heads(num_heads, qkv_features or in_features, in_features, gated)
    self.num_heads, self.qk, self.av = num_heads, qk, av
    self.softmax, self.gamma, self.zeta = softmax, gamma, zeta
    self.dropout_rate, self.deterministic = dropout_rate, deterministic
    quant_rngs = rngs if config is not None and config.needs_key else None

    def dot_general():
      return jax.lax.dot_general if config is None else _nnx.QuantDotGeneral(config, rngs=quant_rngs)

    def proj() -> _fnnx.LinearGeneral:
      return _fnnx.LinearGeneral(in_features, (num_heads, head_dim), use_bias=use_bias, kernel_init=kernel_init,
                                 dot_general=dot_general(), rngs=rngs)

    self.query, self.key, self.value = proj(), proj(), proj()
    self.out = _fnnx.LinearGeneral((num_heads, head_dim), out_features or in_features, axis=(-2, -1),
                                   use_bias=use_bias, kernel_init=kernel_init, dot_general=dot_general(), rngs=rngs)
    self.gate = _fnnx.data(None)
    if gated:
      op = jnp.einsum if config is None else QuantEinsumOp(config, rngs=quant_rngs)
      self.gate = _fnnx.Einsum("nhd,hd->nh", (num_heads, in_features // num_heads), (num_heads,),
                               kernel_init=_GATE_INIT, bias_init=nn.initializers.constant(gate_bias_init),
                               einsum_op=op, rngs=rngs)
    self.rngs = rngs.dropout.fork() if dropout_rate > 0 else _fnnx.data(None)

  def __call__(self, x: jax.Array, mask: jax.Array | None = None, deterministic: bool | None = None) -> jax.Array:
    """Attends ``x`` ``[batch..., length, in_features]`` to itself (``mask`` as :class:`QuantSelfAttention`)."""
    deterministic = self.deterministic if deterministic is None else deterministic
    deterministic = deterministic or self.dropout_rate == 0
    rng = None if deterministic else self.rngs()
    y = dot_product_attention(self.query(x), self.key(x), self.value(x), mask=mask, dropout_rng=rng,
                              dropout_rate=self.dropout_rate, deterministic=deterministic, qk=self.qk, av=self.av,
                              softmax=self.softmax, gamma=self.gamma, zeta=self.zeta)
    if self.gate is not None:
      g = self.gate(_head_slices(x, self.num_heads))
      y = y * jax.nn.sigmoid(g).reshape(*x.shape[:-1], self.num_heads, 1)
    return self.out(y)
