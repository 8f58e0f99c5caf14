"""Unit scaling: ops whose outputs and gradients have unit variance at initialization.

Blake, Orr and Luschi, "Unit Scaling: Out-of-the-Box Low-Precision Training", ICML 2023. Each op is multiplied by a
constant in its forward pass and, separately, its input gradients by constants in its backward pass, chosen so that
unit-variance inputs and output gradients give unit-variance outputs and input gradients. Tensors then sit near 1,
the middle of every float format's range, so FP8 training (E4M3 forward, E5M2 backward) needs neither loss scaling
nor per-tensor amax scales: a plain cast.

The scaled identity is :func:`scaled`: ``fwd_scale * x`` forward, ``bwd_scale * g`` backward. The ops (``b`` is the
batch, the number of rows a gradient sums over; ``e`` is Euler's number):

- ``linear(x, w)``, ``w`` of shape ``(K, N)``: forward ``K^-1/2``; backward ``x``: ``N^-1/2``, ``w`` and the
  bias: ``b^-1/2``.
- ``matmul(a, b)``, ``(M, K) @ (K, N)``: forward ``K^-1/2``; backward ``a``: ``N^-1/2``, ``b``: ``M^-1/2``.
- ``gelu``: forward ``1 / 0.5879``; backward ``1 / 0.6752``.
- ``softmax`` over ``s`` entries: forward ``s / sqrt(e - 1)``; backward ``s / sqrt(e)``.
- ``scaled_dot_product_attention`` over ``s`` keys: ``sqrt(s / e)`` forward and backward.
- ``layer_norm``: forward and ``x``'s backward 1; its scale and bias: ``b^-1/2``.
- ``embedding`` of a ``V``-row table: forward 1; the table: ``sqrt(V / b)``.
- ``residual_split(x, tau)``: forward 1; backward ``sqrt(tau)`` (residual branch), ``sqrt(1 - tau)`` (skip).
- ``residual_add(residual, skip, tau)``: forward ``sqrt(tau)`` and ``sqrt(1 - tau)``; backward 1.
- ``cross_entropy`` over ``C`` classes: forward ``1 / b`` (the mean); the logits' backward ``C / sqrt(C - 1)``.

Where they come from: a sum of ``K`` unit-variance products has variance ``K``. GELU of a standard normal has
standard deviation 0.5879 and its derivative an RMS of 0.6752 (both E over N(0, 1)). The softmax of ``s``
unit-normal logits is about ``exp(z) / (s sqrt(e))``: standard deviation ``sqrt(e - 1) / s``, RMS ``sqrt(e) / s``,
its input gradient about ``p * g``. Attention's output ``sum_j p_j v_j`` has variance ``sum_j p_j^2 ~ e / s``. At
initialization the softmax cross-entropy's logit gradient ``p - onehot`` has RMS ``sqrt(C - 1) / C``.

The cut-edge rule (the paper's section 5): scaling an edge's forward and backward differently changes the
gradients of the parameters before it by a constant only if every path from them to the loss crosses that edge (a
cut-edge); otherwise the gradient mixes paths scaled differently and is wrong. Parameter edges and the loss are
cut-edges, so the weight, bias, table and logit scales are free. An activation input (inside a residual block, say)
generally is not: there ``constraint="gmean"`` (the default) uses the geometric mean of the op's forward scale and
its input-gradient scale(s) for both, so the op is an honest scalar multiple of the plain op. ``constraint=None``
keeps them apart, for inputs that are cut-edges. :func:`residual_split` / :func:`residual_add` move the residual
branch's weight ``sqrt(tau)`` from the forward to the backward of the split, which gives the residual stream's input
exact gradients and the branch's parameters gradients multiplied by one constant.

Gradients of the parameters are thereby multiplied by constants, which scale-invariant optimizers (Adam) ignore.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from lpnum.qdot import BackwardQuant, DotConfig, OperandQuant, dot_general
from lpnum.validate import as_array, as_float_array, check_axis, check_number, short

__all__ = ["GELU_STD", "GELU_GRAD_RMS", "CONSTRAINTS", "FP8_CAST", "scaled", "linear", "matmul", "gelu", "softmax",
           "layer_norm", "embedding", "residual_split", "residual_add", "scaled_dot_product_attention",
           "cross_entropy"]

#: Standard deviation of ``gelu(z)`` (the erf form) for ``z ~ N(0, 1)``.
GELU_STD = 0.5879149692126849
#: Root mean square of ``gelu'(z)`` for ``z ~ N(0, 1)``.
GELU_GRAD_RMS = 0.6751672871587366
#: The constraints an op's activation scales accept: ``"gmean"`` (one scale, forward and backward) or None.
CONSTRAINTS = ("gmean", None)
#: The paper's FP8 recipe as a matmul config: both forward operands cast to E4M3 and the output gradient of both
#: backward matmuls to E5M2 (each backward matmul reusing the E4M3 forward operand), round to nearest even,
#: saturating, with no scale of any kind (no loss scaling, no amax): ``scaling="none"`` everywhere.
FP8_CAST = DotConfig(lhs=OperandQuant("float8_e4m3fn", scaling="none"),
                     rhs=OperandQuant("float8_e4m3fn", scaling="none"),
                     dlhs=BackwardQuant(grad=OperandQuant("float8_e5m2", scaling="none")),
                     drhs=BackwardQuant(grad=OperandQuant("float8_e5m2", scaling="none")))


# ---- the scaled identity ----------------------------------------------------------------------------------------
def scaled(x: ArrayLike, fwd_scale: float, bwd_scale: float) -> jax.Array:
  """``fwd_scale * x`` in the forward pass; the cotangent times ``bwd_scale`` in the backward pass.

  The paper's scaled identity, on which every unit-scaled op is built. Scales are positive Python numbers (static:
  they depend on shapes, not values); the result keeps ``x``'s dtype.

  Args:
    x: a float array.
    fwd_scale: the forward multiplier.
    bwd_scale: the backward multiplier.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from lpnum import unit_scaling as us
    >>> y, vjp = jax.vjp(lambda v: us.scaled(v, 2.0, 0.5), jnp.ones(2))
    >>> y.tolist(), vjp(jnp.ones(2))[0].tolist()
    ([2.0, 2.0], [0.5, 0.5])
  """
  x = as_float_array(x, "x")
  return _scaled(x, check_number("fwd_scale", fwd_scale, positive=True),
                 check_number("bwd_scale", bwd_scale, positive=True))


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2))
def _scaled(x, fwd_scale, bwd_scale):
  return (x * fwd_scale).astype(x.dtype)


def _scaled_fwd(x, fwd_scale, bwd_scale):
  return _scaled(x, fwd_scale, bwd_scale), None


def _scaled_bwd(fwd_scale, bwd_scale, _res, g):
  return ((g * bwd_scale).astype(g.dtype),)


_scaled.defvjp(_scaled_fwd, _scaled_bwd)


def _constrain(constraint, fwd: float, *bwd: float) -> tuple[float, ...]:
  """The forward and activation-gradient scales under ``constraint``: their geometric mean for all, or as given."""
  if constraint is None:
    return (fwd, *bwd)
  if constraint != "gmean":
    raise ValueError(f"constraint={short(constraint)}; expected one of {list(CONSTRAINTS)}")
  mean = math.prod((fwd, *bwd)) ** (1 / (1 + len(bwd)))
  return (mean,) * (1 + len(bwd))


def _rows(x: jax.Array, width: int) -> int:
  """How many rows of ``width`` a gradient sums over (at least 1, so empty inputs scale by 1)."""
  return max(x.size // max(width, 1), 1)


# ---- matmuls ----------------------------------------------------------------------------------------------------
def linear(x: ArrayLike, w: ArrayLike, bias: ArrayLike | None = None, *, constraint: str | None = "gmean",
           config: DotConfig | None = None, key: jax.Array | None = None) -> jax.Array:
  """Unit-scaled ``x @ w + bias``, contracting the last axis of ``x`` with the first of ``w`` (Flax's Dense).

  Scales, for ``w`` of shape ``(K, N)`` and ``b`` rows of ``x`` (all its axes but the last): forward
  ``K^-1/2``; ``x``'s gradient ``N^-1/2``; ``w``'s and the bias's gradient ``b^-1/2`` (cut-edges: parameters).
  ``constraint="gmean"`` gives forward and ``x``'s gradient ``(K N)^-1/4`` both. The bias is added after the
  scaled product. Unit-variance ``x`` and ``w`` (weights initialized N(0, 1)) give a unit-variance output.

  Args:
    x: ``(..., K)`` float activations.
    w: ``(K, N)`` float weights.
    bias: ``(N,)`` or None.
    constraint: ``"gmean"`` or None (see the module docs).
    config: quantize the product with :func:`lpnum.dot_general` and this :class:`~lpnum.DotConfig` (its operands
      are the unit-variance ``x`` and ``w``; in the backward pass its gradient is the unit-variance output
      gradient), or None for a float matmul.
    key: for a config that rounds stochastically.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from lpnum import unit_scaling as us
    >>> x, w = jax.random.normal(jax.random.key(0), (256, 64)), jax.random.normal(jax.random.key(1), (64, 32))
    >>> round(float(jnp.std(us.linear(x, w, constraint=None))), 1)
    1.0
  """
  x, w = as_float_array(x, "x"), as_float_array(w, "w")
  if w.ndim != 2 or x.ndim < 1 or x.shape[-1] != w.shape[0]:
    raise ValueError(f"w of shape {w.shape} must be (K, N) with K = x.shape[-1] (x has shape {x.shape})")
  if config is not None and not isinstance(config, DotConfig):
    raise TypeError(f"config={short(config)} must be an lpnum.DotConfig or None")
  fan_in, fan_out = w.shape
  fwd, bwd_x = _constrain(constraint, fan_in ** -0.5, fan_out ** -0.5)
  bwd_w = _rows(x, fan_in) ** -0.5
  x, w = _scaled(x, 1.0, bwd_x), _scaled(w, 1.0, bwd_w)
  dn = (((x.ndim - 1,), (0,)), ((), ()))
  y = jax.lax.dot_general(x, w, dn) if config is None else dot_general(x, w, dn, config, key=key)
  y = _scaled(y, fwd, 1.0)
  if bias is None:
    return y
  bias = as_float_array(bias, "bias")
  if bias.shape != (fan_out,):
    raise ValueError(f"bias of shape {bias.shape} must be ({fan_out},), the columns of w")
  return y + _scaled(bias, 1.0, bwd_w)


def matmul(a: ArrayLike, b: ArrayLike, *, constraint: str | None = "gmean") -> jax.Array:
  """Unit-scaled product of two activations, ``a (..., M, K) @ b (..., K, N)`` (leading axes batch, as ``@``).

  Scales: forward ``K^-1/2``; ``a``'s gradient ``N^-1/2``; ``b``'s gradient ``M^-1/2``. Neither input is a
  parameter, so ``constraint="gmean"`` gives all three ``(K N M)^-1/6``.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from lpnum import unit_scaling as us
    >>> a, b = jax.random.normal(jax.random.key(0), (64, 256)), jax.random.normal(jax.random.key(1), (256, 64))
    >>> round(float(jnp.std(us.matmul(a, b, constraint=None))), 1)
    1.0
  """
  a, b = as_float_array(a, "a"), as_float_array(b, "b")
  if a.ndim < 2 or b.ndim < 2 or a.shape[-1] != b.shape[-2]:
    raise ValueError(f"a of shape {a.shape} and b of shape {b.shape} must be (..., M, K) and (..., K, N)")
  m, k, n = a.shape[-2], a.shape[-1], b.shape[-1]
  fwd, bwd_a, bwd_b = _constrain(constraint, max(k, 1) ** -0.5, max(n, 1) ** -0.5, max(m, 1) ** -0.5)
  return _scaled(jnp.matmul(_scaled(a, 1.0, bwd_a), _scaled(b, 1.0, bwd_b)), fwd, 1.0)


# ---- element-wise and normalizing ops ---------------------------------------------------------------------------
def _elementwise(f, x: jax.Array, fwd: float, bwd: float, constraint) -> jax.Array:
  fwd, bwd = _constrain(constraint, fwd, bwd)
  return _scaled(f(_scaled(x, 1.0, bwd)), fwd, 1.0)


def gelu(x: ArrayLike, *, constraint: str | None = "gmean") -> jax.Array:
  """Unit-scaled GELU (the exact, erf form): forward ``1 / GELU_STD``, backward ``1 / GELU_GRAD_RMS``.

  ``constraint="gmean"``: both ``(GELU_STD * GELU_GRAD_RMS)^-1/2``, about 1.587.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from lpnum import unit_scaling as us
    >>> z = jax.random.normal(jax.random.key(0), (100_000,))
    >>> round(float(jnp.std(us.gelu(z, constraint=None))), 2)
    1.0
  """
  x = as_float_array(x, "x")
  return _elementwise(functools.partial(jax.nn.gelu, approximate=False), x, 1 / GELU_STD, 1 / GELU_GRAD_RMS,
                      constraint)


def softmax(x: ArrayLike, axis: int = -1, *, constraint: str | None = "gmean") -> jax.Array:
  """Unit-scaled softmax over ``axis`` of size ``s``: forward ``s / sqrt(e - 1)``, backward ``s / sqrt(e)``.

  The scales hold for unit-normal inputs and large ``s`` (the paper's assumption). ``constraint="gmean"``: both
  ``s / (e (e - 1))^1/4``.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from lpnum import unit_scaling as us
    >>> z = jax.random.normal(jax.random.key(0), (64, 1024))
    >>> round(float(jnp.std(us.softmax(z, constraint=None))), 1)
    1.0
  """
  x = as_float_array(x, "x")
  axis = check_axis("axis", axis, x.ndim)
  s = max(x.shape[axis], 1)
  return _elementwise(functools.partial(jax.nn.softmax, axis=axis), x, s / math.sqrt(math.e - 1),
                      s / math.sqrt(math.e), constraint)


def layer_norm(x: ArrayLike, scale: ArrayLike | None = None, bias: ArrayLike | None = None, *,
               eps: float = 1e-6) -> jax.Array:
  """Layer normalization over the last axis, ``(x - mean) / sqrt(var + eps) * scale + bias``, unit-scaled.

  The normalized output already has unit variance and, for unit-variance ``x``, so has its input gradient: forward
  and ``x``'s backward scales are 1. ``scale`` and ``bias`` (each ``(D,)``, initialized to ones and zeros) get
  gradient scale ``b^-1/2`` for ``b`` rows.

  Example:
    >>> import jax.numpy as jnp
    >>> from lpnum import unit_scaling as us
    >>> us.layer_norm(jnp.array([[1.0, 3.0]])).round(3).tolist()
    [[-1.0, 1.0]]
  """
  x = as_float_array(x, "x")
  if x.ndim < 1:
    raise ValueError(f"x of shape {x.shape} needs a last axis to normalize")
  eps = check_number("eps", eps, positive=True)
  width = x.shape[-1]
  bwd = _rows(x, width) ** -0.5
  mean = jnp.mean(x, axis=-1, keepdims=True)
  var = jnp.mean(jnp.square(x - mean), axis=-1, keepdims=True)
  y = (x - mean) * jax.lax.rsqrt(var + eps)
  for name, p, op in (("scale", scale, jnp.multiply), ("bias", bias, jnp.add)):
    if p is not None:
      p = as_float_array(p, name)
      if p.shape != (width,):
        raise ValueError(f"{name} of shape {p.shape} must be ({width},), the last axis of x")
      y = op(y, _scaled(p, 1.0, bwd))
  return y.astype(x.dtype)


def embedding(ids: ArrayLike, table: ArrayLike) -> jax.Array:
  """Unit-scaled look-up ``table[ids]``: forward 1; the table's gradient ``sqrt(V / b)`` for ``V`` rows and ``b``
  ids (a row is looked up about ``b / V`` times, its gradient the sum of as many unit-variance rows).

  Example:
    >>> import jax.numpy as jnp
    >>> from lpnum import unit_scaling as us
    >>> us.embedding(jnp.array([1, 0]), jnp.array([[0.0, 1.0], [2.0, 3.0]])).tolist()
    [[2.0, 3.0], [0.0, 1.0]]
  """
  ids = as_array(ids, "ids")
  if not jnp.issubdtype(ids.dtype, jnp.integer):
    raise TypeError(f"ids must be an integer array, got dtype {ids.dtype}")
  table = as_float_array(table, "table")
  if table.ndim != 2:
    raise ValueError(f"table of shape {table.shape} must be (V, D)")
  table = _scaled(table, 1.0, (table.shape[0] / max(ids.size, 1)) ** 0.5)
  return jnp.take(table, ids, axis=0)


# ---- residual connections ---------------------------------------------------------------------------------------
def _tau(tau) -> float:
  tau = check_number("tau", tau)
  if not 0 < tau < 1:
    raise ValueError(f"tau={tau} must lie in (0, 1): the residual branch's share of the variance")
  return tau


def residual_split(x: ArrayLike, tau: float) -> tuple[jax.Array, jax.Array]:
  """Splits ``x`` into ``(residual, skip)`` before a residual block: forward identities; the backward scales the
  residual branch's gradient by ``sqrt(tau)`` and the skip's by ``sqrt(1 - tau)``.

  Use with :func:`residual_add` and the same ``tau``. The pair computes ``sqrt(tau) f(x) + sqrt(1 - tau) x``,
  whose variance is 1 for unit-variance ``x`` and ``f(x)``, with exact gradients for ``x``.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from lpnum import unit_scaling as us
    >>> f = lambda v: us.residual_add(*us.residual_split(v, 0.36), 0.36)   # f = identity branch
    >>> round(float(jax.grad(lambda v: f(v).sum())(jnp.ones(()))), 4)      # 0.6 + 0.8
    1.4
  """
  x = as_float_array(x, "x")
  tau = _tau(tau)
  return _scaled(x, 1.0, math.sqrt(tau)), _scaled(x, 1.0, math.sqrt(1 - tau))


def residual_add(residual: ArrayLike, skip: ArrayLike, tau: float) -> jax.Array:
  """``sqrt(tau) * residual + sqrt(1 - tau) * skip`` in the forward pass; the gradient passes unscaled to both
  (:func:`residual_split` applies the weights in the backward pass).

  Example:
    >>> import jax.numpy as jnp
    >>> from lpnum import unit_scaling as us
    >>> round(float(us.residual_add(jnp.ones(()), jnp.ones(()), 0.36)), 4)
    1.4
  """
  residual, skip = as_float_array(residual, "residual"), as_float_array(skip, "skip")
  if residual.shape != skip.shape:
    raise ValueError(f"residual of shape {residual.shape} and skip of shape {skip.shape} must match")
  tau = _tau(tau)
  return _scaled(residual, math.sqrt(tau), 1.0) + _scaled(skip, math.sqrt(1 - tau), 1.0)


# ---- attention and loss -----------------------------------------------------------------------------------------
def scaled_dot_product_attention(q: ArrayLike, k: ArrayLike, v: ArrayLike) -> jax.Array:
  """Unit-scaled attention ``softmax(q k^T / sqrt(d)) v`` over ``s`` keys, without a mask.

  Shapes as Flax's ``dot_product_attention``: ``q (..., L, H, d)``, ``k`` and ``v`` ``(..., s, H, d)``. Scale
  ``sqrt(s / e)`` forward and backward (the paper's derivation: unit-normal logits, the softmax normalized in
  expectation; the output's and the inputs' gradients then all have variance ``e / s``), so no constraint applies.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from lpnum import unit_scaling as us
    >>> q = k = v = jax.ShapeDtypeStruct((8, 256, 1, 64), jnp.float32)
    >>> jax.eval_shape(us.scaled_dot_product_attention, q, k, v).shape
    (8, 256, 1, 64)
  """
  q, k, v = as_float_array(q, "q"), as_float_array(k, "k"), as_float_array(v, "v")
  if q.ndim < 3 or k.shape != v.shape or k.ndim != q.ndim or q.shape[:-3] != k.shape[:-3] \
      or q.shape[-2:] != k.shape[-2:]:
    raise ValueError(f"q {q.shape}, k {k.shape} and v {v.shape} must be (..., L, H, d), (..., s, H, d), "
                     "(..., s, H, d)")
  s, d = k.shape[-3], q.shape[-1]
  logits = jnp.einsum("...qhd,...khd->...hqk", q, k) / math.sqrt(max(d, 1))
  out = jnp.einsum("...hqk,...khd->...qhd", jax.nn.softmax(logits, axis=-1), v)
  c = math.sqrt(max(s, 1) / math.e)
  return _scaled(out, c, c)


def cross_entropy(logits: ArrayLike, labels: ArrayLike) -> jax.Array:
  """Unit-scaled softmax cross-entropy on integer labels: its value is the mean over examples, as usual; the
  logits' gradient is ``(softmax(logits) - onehot) * C / sqrt(C - 1)`` per example (not divided by the ``b``
  examples), unit-variance at initialization.

  Args:
    logits: ``(..., C)`` float, ``C >= 2``.
    labels: integer class ids of shape ``logits.shape[:-1]``, in ``[0, C)``.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from lpnum import unit_scaling as us
    >>> logits, labels = jnp.zeros((2, 4)), jnp.array([0, 3])
    >>> round(float(us.cross_entropy(logits, labels)), 4)   # log 4
    1.3863
    >>> [round(float(v), 3) for v in jax.grad(us.cross_entropy)(logits, labels)[0]]   # (1/4 - [1, 0, 0, 0]) 4/sqrt(3)
    [-1.732, 0.577, 0.577, 0.577]
  """
  logits, labels = as_float_array(logits, "logits"), as_array(labels, "labels")
  if not jnp.issubdtype(labels.dtype, jnp.integer):
    raise TypeError(f"labels must be an integer array, got dtype {labels.dtype}")
  if logits.ndim < 1 or logits.shape[-1] < 2 or labels.shape != logits.shape[:-1]:
    raise ValueError(f"logits of shape {logits.shape} must be (..., C) with C >= 2 and labels of shape "
                     f"{labels.shape} must be logits.shape[:-1]")
  if labels.size == 0:
    raise ValueError(f"labels of shape {labels.shape} hold no example: the mean loss is undefined")
  c = logits.shape[-1]
  logits = _scaled(logits, 1.0, c / math.sqrt(c - 1)).astype(jnp.float32)
  picked = jnp.take_along_axis(logits, labels[..., None].astype(jnp.int32), axis=-1)[..., 0]
  total = jnp.sum(jax.nn.logsumexp(logits, axis=-1) - picked)
  return _scaled(total, 1 / labels.size, 1.0)
