"""The quantized dot_general behind every lpnum layer: forward and backward matmuls quantized by a QuantConfig.

Any ``dot_general`` is brought to matmuls ``lhs (B, M, K) @ rhs (B, K, N)`` (batch axes first, then the free
axes, the contracting axes last for lhs and first for rhs), so that granularities (``tensor``, ``channel``,
blocks along K) mean the same thing in every layer. Batched matmuls (attention) get their scales per batch
element.

Forward: ``y = Q_lhs(lhs) @ Q_rhs(rhs)``. Backward, for the output gradient ``g``:
``dlhs = Q(g) @ Q(rhs).T`` and ``drhs = Q(lhs).T @ Q(g)``, each quantized by its :class:`~lpnum.nn.Backward`;
the gradient then passes through the forward quantizers' estimators (straight-through by default).

``backend='int'`` runs each quantized matmul on the element codes: ``int8 x int8 -> int32`` (or
``FP8 x FP8 -> float32``) and multiplies by the row and column scales afterwards, so a W8A8 layer really runs an
integer dot in its forward and backward passes.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from lpnum import estimators
from lpnum.formats import IntFormat
from lpnum.kernels import accumulate as _acc
from lpnum.nn.config import LEARNED, QuantConfig, TensorQuant
from lpnum.quantize import decode, quantize
from lpnum.scaled import ScaledFormat, quantize_scaled

__all__ = ["dot_general", "OperandState", "quantize_operand"]


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class OperandState:
  """Per-call inputs of a layer's quantizers: given per-tensor scales (delayed or static scaling) and the
  estimators' learned parameters (the LSQ step, the PACT clip). None where the config does not need them."""

  lhs_scale: jax.Array | None = None
  rhs_scale: jax.Array | None = None
  lhs_param: jax.Array | None = None
  rhs_param: jax.Array | None = None


def _needs_key(cfg: QuantConfig) -> bool:
  tqs = [cfg.lhs, cfg.rhs]
  for bwd in (cfg.dlhs, cfg.drhs):
    if bwd is not None:
      tqs += [bwd.grad, bwd.operand]
  return any(isinstance(t, TensorQuant) and t.rounding == "stochastic" for t in tqs)


def quantize_operand(x: jax.Array, tq: TensorQuant | None, role: str, *, scale: jax.Array | None = None,
                     param: jax.Array | None = None, key: jax.Array | None = None) -> jax.Array:
  """Fake-quantizes a 2-D (or batched 3-D) matmul operand with its estimator's gradient.

  Args:
    x: ``(..., M, K)`` for ``role='lhs'``, ``(..., K, N)`` for ``role='rhs'``.
    tq: the operand's TensorQuant (None: returned unchanged).
    role: ``"lhs"`` or ``"rhs"``.
    scale: the per-tensor scale for ``delayed``/``static`` scaling.
    param: the estimator's learned parameter (the LSQ step, the PACT clip).
    key: for stochastic rounding.
  """
  if tq is None:
    return x
  if tq.estimator not in ("ste", "clipped_ste"):
    params = dict(tq.estimator_params)
    if tq.estimator in LEARNED:
      if param is None:
        raise ValueError(f"estimator={tq.estimator!r} learns its {LEARNED[tq.estimator]}: pass it in the state "
                         f"(OperandState({role}_param=...)) or use a layer")
      params[LEARNED[tq.estimator]] = param
    if tq.estimator == "hadamard_ste":
      params.setdefault("axis", x.ndim - 1 if role == "lhs" else x.ndim - 2)
    return estimators.estimate(x, tq.estimator, tq.estimator_format(role), **params)
  if x.ndim == 3:
    keys = None if key is None else jax.random.split(key, x.shape[0])
    return jax.vmap(lambda v, k: quantize_operand(v, tq, role, scale=scale, key=k))(x, keys)
  fmt = tq.scaled_format(role)
  kwargs = dict(rounding=tq.rounding, key=key)
  if isinstance(fmt, ScaledFormat):
    kwargs.update(scale=scale, pad=True)
  fn = estimators.clipped_ste if tq.estimator == "clipped_ste" else estimators.ste
  return fn(x, fmt, **kwargs)


def _codes(x: jax.Array, tq: TensorQuant, role: str, scale, key) -> tuple[jax.Array, jax.Array]:
  """The element values as int8 (or the FP8 dtype) and the scales, broadcastable against the matmul output."""
  fmt = tq.scaled_format(role)
  el = tq.element
  code_dtype = jnp.int8 if isinstance(el, IntFormat) else el.dtype
  if not isinstance(fmt, ScaledFormat):
    return quantize(x, fmt, rounding=tq.rounding, key=key).astype(code_dtype), jnp.ones((), jnp.float32)
  q = quantize_scaled(x, fmt, scale=scale, rounding=tq.rounding, key=key)
  values = decode(q.element_codes, el).astype(code_dtype)
  s = decode(q.scales, fmt.scale_format).astype(jnp.float32) * 2.0 ** fmt.element_exponent
  return values, s.reshape((-1, 1) if role == "lhs" else (1, -1)) if s.size > 1 else s.reshape(())


def _int_mm(a, b, ta: TensorQuant, tb: TensorQuant, key, accumulator=None) -> jax.Array:
  ka, kb = (None, None) if key is None else tuple(jax.random.split(key))
  ac, sa = _codes(a, ta, "lhs", None, ka)
  bc, sb = _codes(b, tb, "rhs", None, kb)
  return _scaled_int_dot(ac, bc, sa, sb, accumulator)


def _scaled_int_dot(ac, bc, sa, sb, accumulator):
  if accumulator is not None:
    floats = ac.dtype != jnp.int8
    acc = _acc.matmul(ac.astype(jnp.float32) if floats else ac, bc.astype(jnp.float32) if floats else bc,
                      accumulator)
  else:
    pet = jnp.int32 if ac.dtype == jnp.int8 else jnp.float32
    acc = jax.lax.dot_general(ac, bc, (((1,), (0,)), ((), ())), preferred_element_type=pet)
  return (acc.astype(jnp.float32) * sa) * sb


def _mm(x, y, tx, ty, backend, key):
  """A backward matmul ``x @ y`` (no gradient): quantized by tx, ty, on codes for backend='int'."""
  kx, ky = (None, None) if key is None else tuple(jax.random.split(key))
  if backend == "int" and tx is not None and ty is not None:
    return _int_mm(x, y, tx, ty, key)
  x = quantize_operand(x, tx, "lhs", key=kx)
  y = quantize_operand(y, ty, "rhs", key=ky)
  return jnp.dot(x, y, preferred_element_type=jnp.float32)


@functools.partial(jax.custom_vjp, nondiff_argnums=(6,))
def _qmm(a, b, qa, qb, state, key, cfg):
  return _qmm_forward(a, b, qa, qb, state, key, cfg)


def _qmm_forward(a, b, qa, qb, state, key, cfg):
  if cfg.backend == "int":
    ka, kb = (None, None) if key is None else tuple(jax.random.split(jax.random.fold_in(key, 0)))
    ac, sa = _codes(a, cfg.lhs, "lhs", state.lhs_scale, ka)
    bc, sb = _codes(b, cfg.rhs, "rhs", state.rhs_scale, kb)
    return _scaled_int_dot(ac, bc, sa, sb, cfg.accumulator)
  if cfg.accumulator is not None:
    return _acc.matmul(qa.astype(jnp.float32), qb.astype(jnp.float32), cfg.accumulator)
  return jnp.dot(qa, qb, preferred_element_type=jnp.float32)


def _qmm_fwd(a, b, qa, qb, state, key, cfg):
  return _qmm_forward(a, b, qa, qb, state, key, cfg), (a, b, qa, qb, state, key)


def _qmm_bwd(cfg, res, g):
  a, b, qa, qb, state, key = res
  g = g.astype(jnp.float32)
  k1, k2 = (None, None) if key is None else (jax.random.fold_in(key, 1), jax.random.fold_in(key, 2))
  # dlhs = g @ rhs.T: g is the lhs of that matmul, rhs.T its rhs.
  bwd = cfg.dlhs
  if bwd is None:
    da = jnp.dot(g, qb.T)
  else:
    same = isinstance(bwd.operand, str)
    if same and cfg.backend != "int":
      da = _mm(g, qb.T, bwd.grad, None, "fake", k1)
    else:
      op = cfg.rhs if same else bwd.operand
      da = _mm(g, b.T, bwd.grad, op, cfg.backend, k1)
  bwd = cfg.drhs
  if bwd is None:
    db = jnp.dot(qa.T, g)
  else:
    same = isinstance(bwd.operand, str)
    if same and cfg.backend != "int":
      db = _mm(qa.T, g, None, bwd.grad, "fake", k2)
    else:
      op = cfg.lhs if same else bwd.operand
      db = _mm(a.T, g, op, bwd.grad, cfg.backend, k2)
  zero = jax.tree_util.tree_map(jnp.zeros_like, state)
  if cfg.backend == "int":
    return da.astype(a.dtype), db.astype(b.dtype), jnp.zeros_like(qa), jnp.zeros_like(qb), zero, None
  return jnp.zeros_like(a), jnp.zeros_like(b), da.astype(qa.dtype), db.astype(qb.dtype), zero, None


_qmm.defvjp(_qmm_fwd, _qmm_bwd)


def _matmul(a, b, cfg: QuantConfig, state: OperandState, key) -> jax.Array:
  """The quantized 2-D matmul ``a (M, K) @ b (K, N)`` -> float32."""
  keys = [None] * 3 if key is None else list(jax.random.split(key, 3))
  if cfg.backend == "int":
    qa, qb = a, b
  else:
    qa = quantize_operand(a, cfg.lhs, "lhs", scale=state.lhs_scale, param=state.lhs_param, key=keys[0])
    qb = quantize_operand(b, cfg.rhs, "rhs", scale=state.rhs_scale, param=state.rhs_param, key=keys[1])
  return _qmm(a, b, qa, qb, state, keys[2], cfg)


def _normalize_dn(dimension_numbers, lhs_ndim: int, rhs_ndim: int):
  try:
    (lc, rc), (lb, rb) = dimension_numbers
    dn = tuple(tuple(int(i) % n for i in axes) for axes, n in ((lc, lhs_ndim), (rc, rhs_ndim), (lb, lhs_ndim),
                                                                (rb, rhs_ndim)))
  except (TypeError, ValueError, ZeroDivisionError):
    raise ValueError(f"dimension_numbers={dimension_numbers!r} must be ((lhs_contract, rhs_contract), "
                     "(lhs_batch, rhs_batch))") from None
  if len(dn[0]) != len(dn[1]) or len(dn[2]) != len(dn[3]):
    raise ValueError(f"dimension_numbers={dimension_numbers!r}: contracting and batch axes must pair up")
  return dn


def dot_general(lhs: ArrayLike, rhs, dimension_numbers, config: QuantConfig, *, precision=None,
                preferred_element_type=None, state: OperandState | None = None,
                key: jax.Array | None = None, **unused) -> jax.Array:
  """``lax.dot_general`` with the operands and backward matmuls quantized by ``config``.

  Same signature as ``jax.lax.dot_general`` plus ``config``, ``state`` (scales for delayed/static scaling, LSQ
  steps, PACT clips) and ``key`` (stochastic rounding). ``rhs`` may be a packed weight from :func:`lpnum.nn.ptq`
  (Dense-shaped contractions only), which runs through :func:`lpnum.kernels.matmul`.

  The result has the result dtype of the float operands (or ``preferred_element_type``); the matmuls accumulate
  in float32 (int32 for the integer backend).

  Example:
    >>> import jax.numpy as jnp
    >>> from lpnum import nn as lnn
    >>> cfg = lnn.QuantConfig(lhs=lnn.TensorQuant("int4"), rhs=lnn.TensorQuant("int4"))
    >>> lnn.dot_general(jnp.ones((1, 2)), jnp.array([[0.3], [1.0]]), (((1,), (0,)), ((), ())), cfg).tolist()
    [[1.2857142686843872]]
  """
  del precision, unused
  if not isinstance(config, QuantConfig):
    raise TypeError(f"config must be a QuantConfig, got {type(config).__name__}")
  state = OperandState() if state is None else state
  if key is None and _needs_key(config):
    raise ValueError("config rounds stochastically: pass key=jax.random.key(...)")
  lhs = jnp.asarray(lhs)
  if not jnp.issubdtype(lhs.dtype, jnp.floating):
    raise TypeError(f"lhs must be a float array, got dtype {lhs.dtype}")
  from lpnum.nn.ptq import is_packed, packed_matmul

  if is_packed(rhs):
    return packed_matmul(lhs, rhs, dimension_numbers, config, state, preferred_element_type)
  if config.backend == "kernel":
    raise ValueError("backend='kernel' multiplies by packed weights (lpnum.nn.ptq); rhs is a float array")
  rhs = jnp.asarray(rhs)
  if not jnp.issubdtype(rhs.dtype, jnp.floating):
    raise TypeError(f"rhs must be a float array, got dtype {rhs.dtype}")
  dn = _normalize_dn(dimension_numbers, lhs.ndim, rhs.ndim)
  if math.prod(lhs.shape[i] for i in dn[0]) != math.prod(rhs.shape[i] for i in dn[1]):
    raise ValueError(f"contracting sizes differ: lhs {lhs.shape} axes {dn[0]}, rhs {rhs.shape} axes {dn[1]}")
  out_dtype = np.dtype(preferred_element_type or jnp.result_type(lhs.dtype, rhs.dtype))
  return _dot_general_jit(lhs, rhs, state, key, dn, config, out_dtype)


@functools.partial(jax.jit, static_argnums=(4, 5, 6))
def _dot_general_jit(lhs, rhs, state, key, dn, config, out_dtype):
  lc, rc, lb, rb = dn
  lf = [i for i in range(lhs.ndim) if i not in lc and i not in lb]
  rf = [i for i in range(rhs.ndim) if i not in rc and i not in rb]
  bshape = [lhs.shape[i] for i in lb]
  m_shape = [lhs.shape[i] for i in lf]
  n_shape = [rhs.shape[i] for i in rf]
  k = math.prod(lhs.shape[i] for i in lc)
  a = jnp.transpose(lhs, (*lb, *lf, *lc)).reshape(math.prod(bshape), math.prod(m_shape), k)
  b = jnp.transpose(rhs, (*rb, *rc, *rf)).reshape(math.prod(bshape), k, math.prod(n_shape))
  a, b = a.astype(jnp.float32), b.astype(jnp.float32)
  if lb:
    keys = None if key is None else jax.random.split(key, a.shape[0])
    y = jax.vmap(lambda x, w, kk: _matmul(x, w, config, state, kk))(a, b, keys)
  else:
    y = _matmul(a[0], b[0], config, state, key)
  return y.reshape(*bshape, *m_shape, *n_shape).astype(out_dtype)


def amax(x: jax.Array) -> jax.Array:
  """The float32 max |x| of a tensor (NaN-free inputs), for delayed and static scaling."""
  return jnp.max(jnp.abs(x)).astype(jnp.float32) if x.size else jnp.zeros((), jnp.float32)


def scale_from_amax(value: jax.Array, tq: TensorQuant) -> jax.Array:
  """The per-tensor scale mapping ``value`` onto the element format's max finite (1 for a zero amax)."""
  top = tq.element.max_finite
  if isinstance(tq.fmt, ScaledFormat) and tq.fmt.element_exponent:
    top *= 2.0 ** tq.fmt.element_exponent
  return jnp.where(value > 0, value / np.float32(top), jnp.ones((), jnp.float32))


def make_dot_general(config: QuantConfig):
  """A stateless quantized dot_general for the plain ``dot_general=`` hook of flax layers
  (``nn.Dense(8, dot_general=make_dot_general(cfg))``, ``nnx.Linear(..., dot_general=...)``).

  Configs that need state (``delayed``/``static`` scaling, LSQ) or keys (stochastic rounding) need the modules
  of :mod:`lpnum.nn.linen` / :mod:`lpnum.nn.nnx` instead.
  """
  if not isinstance(config, QuantConfig):
    raise TypeError(f"config must be a QuantConfig, got {type(config).__name__}")
  for role, tq in (("lhs", config.lhs), ("rhs", config.rhs)):
    if tq is not None and (tq.scaling in ("delayed", "static") or tq.estimator in LEARNED):
      raise ValueError(f"config.{role} needs state (scaling={tq.scaling!r}, estimator={tq.estimator!r}): use "
                       "lpnum.nn.linen.QuantDotGeneral (dot_general_cls=) or lpnum.nn.nnx.QuantDotGeneral")
  if _needs_key(config):
    raise ValueError("config rounds stochastically and needs keys: use lpnum.nn.linen.QuantDotGeneral or "
                     "lpnum.nn.nnx.QuantDotGeneral")
  return functools.partial(dot_general, config=config)


def make_conv_general_dilated(config: QuantConfig):
  """A stateless quantized ``conv_general_dilated`` for the plain hook of flax convolutions
  (``nn.Conv(8, (3, 3), conv_general_dilated=make_conv_general_dilated(cfg))``, ``nnx.Conv(...)``), with the
  semantics of :class:`lpnum.nn.linen.QuantConv`; the same limits as :func:`make_dot_general`."""
  make_dot_general(config)
  from lpnum.nn.linen import conv_call

  def conv(lhs, rhs, *args, **kwargs):
    return conv_call(config, lhs, rhs, lambda a, b: OperandState(), lambda: None, args, kwargs)

  return conv
