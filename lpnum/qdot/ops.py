"""The one quantized dot_general: forward and backward matmuls quantized by a :class:`~lpnum.DotConfig`.

Any ``dot_general`` is brought to matmuls ``lhs (B, M, K) @ rhs (B, K, N)`` (batch axes first, then the free
axes, the contracting axes last for lhs and first for rhs), so that granularities mean the same thing in every
layer. Batched matmuls (attention) get their scales per batch element.

Forward: ``y = Q_lhs(lhs) @ Q_rhs(rhs)``. Backward, for the output gradient ``g``:
``dlhs = Q(g) @ Q(rhs).T`` and ``drhs = Q(lhs).T @ Q(g)``, each quantized by its :class:`~lpnum.BackwardQuant`;
the gradient then passes through the forward quantizers' estimators (straight-through by default).

``engine='int'`` runs each quantized matmul on the element codes: ``int8 x int8 -> int32`` (or
``FP8 x FP8 -> float32``) and multiplies by the row and column scales afterwards, so a W8A8 layer really runs an
integer dot in its forward and backward passes.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Protocol, runtime_checkable

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from lpnum import estimators
from lpnum.formats import Format, IntFormat, as_format
from lpnum.hadamard import fwht
from lpnum.qarray import QArray
from lpnum.qdot.config import SAME, DotConfig, Engine, OperandQuant
from lpnum.quantize import decode, quantize
from lpnum.rounding import Rounding, check_rounding_key
from lpnum.scaled import ScaledFormat, fake_quantize, quantize_scaled
from lpnum.scaled.presets import PRESETS, preset
from lpnum.validate import as_float_array, check_axis, short

__all__ = ["dot_general", "OperandState", "PackedOperand", "quantize_operand", "operand_codes", "quantize_grad",
           "normalize_dimension_numbers", "rotated_operands", "amax", "scale_from_amax"]


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class OperandState:
  """Per-call inputs of a matmul's quantizers: given per-tensor scales (delayed or static scaling) and the
  estimators' learned parameters (the LSQ step, the PACT clip). None where the config does not need them."""

  lhs_scale: jax.Array | None = None
  rhs_scale: jax.Array | None = None
  lhs_param: jax.Array | None = None
  rhs_param: jax.Array | None = None


@runtime_checkable
class PackedOperand(Protocol):
  """A weight that multiplies itself: an rhs whose values are packed (``lpnum.nn.ptq`` makes them).
  :func:`dot_general` hands it the whole call."""

  def packed_dot(self, lhs: jax.Array, dimension_numbers, config: DotConfig, state: OperandState,
                 preferred_element_type) -> jax.Array: ...


# ---- operands ---------------------------------------------------------------------------------------------------
def quantize_operand(x: jax.Array, oq: OperandQuant | None, role: str, *, scale: jax.Array | None = None,
                     param: jax.Array | None = None, key: jax.Array | None = None) -> jax.Array:
  """Fake-quantizes a 2-D (or batched 3-D) matmul operand with its estimator's gradient.

  Args:
    x: ``(..., M, K)`` for ``role='lhs'``, ``(..., K, N)`` for ``role='rhs'``.
    oq: the operand's OperandQuant (None: returned unchanged).
    role: ``"lhs"`` or ``"rhs"``.
    scale: the per-tensor scale for ``delayed``/``static`` scaling.
    param: the estimator's learned parameter (the LSQ step, the PACT clip).
    key: for stochastic rounding.
  """
  if oq is None:
    return x
  fmt = oq.format_for(role)
  est = oq.estimator
  key = key if oq.rounding is Rounding.STOCHASTIC else None
  if est.learned is not None and param is None:
    raise ValueError(f"estimator={est!r} learns its {est.learned}: pass it in the state "
                     f"(OperandState({role}_param=...)) or use a layer")
  k_axis = x.ndim - 1 if role == "lhs" else x.ndim - 2
  if not isinstance(est, estimators.STE | estimators.ClippedSTE):  # their own scaling (or a rotation along K)
    return est(x, fmt, param=param, axis=k_axis)
  if x.ndim == 3:
    keys = None if key is None else jax.random.split(key, x.shape[0])
    return jax.vmap(lambda v, k: quantize_operand(v, oq, role, scale=scale, key=k))(x, keys)
  return est(x, fmt, rounding=oq.rounding.value, key=key, scale=scale, pad=True)


def operand_codes(x: jax.Array, oq: OperandQuant, role: str, scale: jax.Array | None = None,
                  key: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
  """A 2-D matmul operand as ``engine='int'`` multiplies it: its element values and their scales.

  Args:
    x: ``(M, K)`` for ``role='lhs'``, ``(K, N)`` for ``role='rhs'``.
    oq: the operand's OperandQuant: integer (at most 8 bits) or FP8 elements, per-tensor or per-channel scales.
    role: ``"lhs"`` or ``"rhs"``.
    scale: the per-tensor scale for ``delayed``/``static`` scaling.
    key: for stochastic rounding.

  Returns:
    The values as int8 (or the FP8 dtype) with x's shape, and the float32 scales: ``(M, 1)`` for lhs, ``(1, N)``
    for rhs, or a scalar (per tensor); ``x ~ values * scales``.

  Example:
    >>> import jax.numpy as jnp, lpnum
    >>> values, scales = lpnum.qdot.operand_codes(jnp.array([[1.0, -0.5], [0.25, 2.0]]),
    ...                                           lpnum.OperandQuant("int8", lpnum.per_channel()), "lhs")
    >>> values.tolist(), (scales * 127).tolist()
    ([[127, -64], [16, 127]], [[1.0], [2.0]])
  """
  fmt = oq.format_for(role)
  el = oq.element
  key = key if oq.rounding is Rounding.STOCHASTIC else None
  code_dtype = jnp.int8 if isinstance(el, IntFormat) else el.dtype
  if not isinstance(fmt, ScaledFormat):
    return quantize(x, fmt, rounding=oq.rounding, key=key).astype(code_dtype), jnp.ones((), jnp.float32)
  q = quantize_scaled(x, fmt, scale=scale, rounding=oq.rounding, key=key)
  values = decode(q.element_codes, el).astype(code_dtype)
  s = decode(q.scales, fmt.scale_format).astype(jnp.float32) * 2.0 ** fmt.element_exponent
  return values, s.reshape((-1, 1) if role == "lhs" else (1, -1)) if s.size > 1 else s.reshape(())


def _int_mm(a, b, ta: OperandQuant, tb: OperandQuant, key, accumulator=None) -> jax.Array:
  ka, kb = (None, None) if key is None else tuple(jax.random.split(key))
  ac, sa = operand_codes(a, ta, "lhs", None, ka)
  bc, sb = operand_codes(b, tb, "rhs", None, kb)
  return _scaled_int_dot(ac, bc, sa, sb, accumulator)


def _scaled_int_dot(ac, bc, sa, sb, accumulator):
  if accumulator is not None:
    floats = ac.dtype != jnp.int8
    acc = accumulator.accumulate(ac.astype(jnp.float32) if floats else ac, bc.astype(jnp.float32) if floats else bc)
  else:
    pet = jnp.int32 if ac.dtype == jnp.int8 else jnp.float32
    acc = jax.lax.dot_general(ac, bc, (((1,), (0,)), ((), ())), preferred_element_type=pet)
  return (acc.astype(jnp.float32) * sa) * sb


def _mm(x, y, tx, ty, engine: Engine, key):
  """A backward matmul ``x @ y`` (no gradient): quantized by tx, ty, on codes for engine='int'."""
  kx, ky = (None, None) if key is None else tuple(jax.random.split(key))
  if engine is Engine.INT and tx is not None and ty is not None:
    return _int_mm(x, y, tx, ty, key)
  x = quantize_operand(x, tx, "lhs", key=kx)
  y = quantize_operand(y, ty, "rhs", key=ky)
  return jnp.dot(x, y, preferred_element_type=jnp.float32)


# ---- the 2-D matmul and its VJP ---------------------------------------------------------------------------------
@functools.partial(jax.custom_vjp, nondiff_argnums=(6,))
def _qmm(a, b, qa, qb, state, key, cfg):
  return _qmm_forward(a, b, qa, qb, state, key, cfg)


def _qmm_forward(a, b, qa, qb, state, key, cfg: DotConfig):
  if cfg.engine is Engine.INT:
    ka, kb = (None, None) if key is None else tuple(jax.random.split(jax.random.fold_in(key, 0)))
    ac, sa = operand_codes(a, cfg.lhs, "lhs", state.lhs_scale, ka)
    bc, sb = operand_codes(b, cfg.rhs, "rhs", state.rhs_scale, kb)
    return _scaled_int_dot(ac, bc, sa, sb, cfg.accumulator)
  if cfg.accumulator is not None:
    return cfg.accumulator.accumulate(qa.astype(jnp.float32), qb.astype(jnp.float32))
  return jnp.dot(qa, qb, preferred_element_type=jnp.float32)


def _qmm_fwd(a, b, qa, qb, state, key, cfg):
  return _qmm_forward(a, b, qa, qb, state, key, cfg), (a, b, qa, qb, state, key)


def _qmm_bwd(cfg: DotConfig, res, g):
  a, b, qa, qb, state, key = res
  g = g.astype(jnp.float32)
  k1, k2 = (None, None) if key is None else (jax.random.fold_in(key, 1), jax.random.fold_in(key, 2))
  # dlhs = g @ rhs.T: g is the lhs of that matmul, rhs.T its rhs.
  bwd = cfg.dlhs
  if bwd is None:
    da = jnp.dot(g, qb.T)
  elif bwd.operand == SAME and cfg.engine is not Engine.INT:
    da = _mm(g, qb.T, bwd.grad, None, Engine.FAKE, k1)
  else:
    da = _mm(g, b.T, bwd.grad, cfg.rhs if bwd.operand == SAME else bwd.operand, cfg.engine, k1)
  bwd = cfg.drhs
  if bwd is None:
    db = jnp.dot(qa.T, g)
  elif bwd.operand == SAME and cfg.engine is not Engine.INT:
    db = _mm(qa.T, g, None, bwd.grad, Engine.FAKE, k2)
  else:
    db = _mm(a.T, g, cfg.lhs if bwd.operand == SAME else bwd.operand, bwd.grad, cfg.engine, k2)
  zero = jax.tree_util.tree_map(jnp.zeros_like, state)
  if cfg.engine is Engine.INT:
    return da.astype(a.dtype), db.astype(b.dtype), jnp.zeros_like(qa), jnp.zeros_like(qb), zero, None
  return jnp.zeros_like(a), jnp.zeros_like(b), da.astype(qa.dtype), db.astype(qb.dtype), zero, None


_qmm.defvjp(_qmm_fwd, _qmm_bwd)


def _matmul(a, b, cfg: DotConfig, state: OperandState, key) -> jax.Array:
  """The quantized 2-D matmul ``a (M, K) @ b (K, N)`` -> float32."""
  keys = [None] * 3 if key is None else list(jax.random.split(key, 3))
  if cfg.engine is Engine.INT:
    qa, qb = a, b
  else:
    qa = quantize_operand(a, cfg.lhs, "lhs", scale=state.lhs_scale, param=state.lhs_param, key=keys[0])
    qb = quantize_operand(b, cfg.rhs, "rhs", scale=state.rhs_scale, param=state.rhs_param, key=keys[1])
  return _qmm(a, b, qa, qb, state, keys[2], cfg)


# ---- dot_general ------------------------------------------------------------------------------------------------
def normalize_dimension_numbers(dimension_numbers, lhs_ndim: int, rhs_ndim: int):
  """``((lhs_contract, rhs_contract), (lhs_batch, rhs_batch))`` as four tuples of non-negative axes; raises
  ValueError naming ``dimension_numbers`` if they are malformed."""
  try:
    (lc, rc), (lb, rb) = dimension_numbers
    dn = tuple(tuple(check_axis("dimension_numbers", i, n) for i in axes)
               for axes, n in ((lc, lhs_ndim), (rc, rhs_ndim), (lb, lhs_ndim), (rb, rhs_ndim)))
  except (TypeError, ValueError) as err:
    raise ValueError(f"dimension_numbers={short(dimension_numbers)} must be ((lhs_contract, rhs_contract), "
                     f"(lhs_batch, rhs_batch)), axes of the {lhs_ndim}-d lhs and {rhs_ndim}-d rhs ({err})") from None
  if len(dn[0]) != len(dn[1]) or len(dn[2]) != len(dn[3]):
    raise ValueError(f"dimension_numbers={dimension_numbers!r}: contracting and batch axes must pair up")
  for side, (contract, batch) in (("lhs", (dn[0], dn[2])), ("rhs", (dn[1], dn[3]))):
    if len(set(contract + batch)) != len(contract) + len(batch):
      raise ValueError(f"dimension_numbers={dimension_numbers!r} name an axis of {side} twice")
  return dn


def dot_general(lhs: ArrayLike, rhs, dimension_numbers, config: DotConfig, *, precision=None,
                preferred_element_type=None, state: OperandState | None = None,
                key: jax.Array | None = None, **unused) -> jax.Array:
  """``lax.dot_general`` with the operands and backward matmuls quantized by ``config``.

  Same signature as ``jax.lax.dot_general`` plus ``config``, ``state`` (scales for delayed/static scaling, LSQ
  steps, PACT clips) and ``key`` (stochastic rounding). ``rhs`` may be a packed weight (a
  :class:`PackedOperand`, as :func:`lpnum.nn.ptq` makes them), which multiplies itself.

  The result has the result dtype of the float operands (or ``preferred_element_type``); the matmuls accumulate
  in float32 (int32 for the integer engine).

  Example:
    >>> import jax.numpy as jnp, lpnum
    >>> cfg = lpnum.DotConfig(lhs=lpnum.OperandQuant("int4"), rhs=lpnum.OperandQuant("int4"))
    >>> lpnum.dot_general(jnp.ones((1, 2)), jnp.array([[0.3], [1.0]]), (((1,), (0,)), ((), ())), cfg).tolist()
    [[1.2857142686843872]]
  """
  del precision, unused
  if not isinstance(config, DotConfig):
    raise TypeError(f"config must be a DotConfig, got {type(config).__name__}")
  state = OperandState() if state is None else state
  if key is None and config.needs_key:
    raise ValueError("config rounds stochastically: pass key=jax.random.key(...)")
  lhs = as_float_array(lhs, "lhs")
  if isinstance(rhs, PackedOperand):
    if config.rotate is not None:
      raise ValueError(f"config.rotate={config.rotate!r} with a packed rhs: packed weights are stored unrotated, so "
                       "the rotation cannot be folded in; quantize the float weights (no ptq) to rotate")
    return rhs.packed_dot(lhs, dimension_numbers, config, state, preferred_element_type)
  if isinstance(rhs, QArray):
    raise TypeError("rhs is a QArray: pass packed kernels as lpnum.nn.ptq makes them, or dequantize it")
  if config.engine is Engine.KERNEL:
    raise ValueError("engine='kernel' multiplies by packed weights (lpnum.nn.ptq); rhs is a float array")
  rhs = as_float_array(rhs, "rhs")
  dn = normalize_dimension_numbers(dimension_numbers, lhs.ndim, rhs.ndim)
  if math.prod(lhs.shape[i] for i in dn[0]) != math.prod(rhs.shape[i] for i in dn[1]):
    raise ValueError(f"contracting sizes differ: lhs {lhs.shape} axes {dn[0]}, rhs {rhs.shape} axes {dn[1]}")
  lhs, rhs = _rotate(lhs, rhs, dn, config.rotate)
  out_dtype = np.dtype(preferred_element_type or jnp.result_type(lhs.dtype, rhs.dtype))
  return _dot_general_jit(lhs, rhs, state, key, dn, config, out_dtype)


def _rotate(lhs: jax.Array, rhs: jax.Array, dn, block) -> tuple[jax.Array, jax.Array]:
  """Both operands rotated along every contracting axis pair by the block Hadamard transform (``block`` as
  :func:`lpnum.hadamard.fwht` takes it, per axis). Over several pairs the rotation of K is the Kronecker product
  of the per-axis transforms, orthonormal and symmetric like each of them, so ``(lhs H)(H rhs) = lhs rhs``."""
  if block is not None:
    for la, ra in zip(dn[0], dn[1]):
      lhs, rhs = fwht(lhs, la, block=block), fwht(rhs, ra, block=block)
  return lhs, rhs


def rotated_operands(lhs: ArrayLike, rhs: ArrayLike, dimension_numbers, config: DotConfig
                     ) -> tuple[jax.Array, jax.Array]:
  """The operands as :func:`dot_general` quantizes them: Hadamard-rotated along the contracting axes when
  ``config.rotate`` is set, else unchanged (a packed rhs too). Layers take their delayed and static amax from
  these."""
  if config.rotate is None or isinstance(rhs, PackedOperand):
    return lhs, rhs
  lhs, rhs = as_float_array(lhs, "lhs"), as_float_array(rhs, "rhs")
  dn = normalize_dimension_numbers(dimension_numbers, lhs.ndim, rhs.ndim)
  return _rotate(lhs, rhs, dn, config.rotate)


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


# ---- per-tensor scales for delayed and static scaling -----------------------------------------------------------
def amax(x: jax.Array) -> jax.Array:
  """The float32 max |x| of a tensor (NaN-free inputs), for delayed and static scaling."""
  return jnp.max(jnp.abs(x)).astype(jnp.float32) if x.size else jnp.zeros((), jnp.float32)


def scale_from_amax(value: jax.Array, oq: OperandQuant) -> jax.Array:
  """The per-tensor scale mapping ``value`` onto the element format's max finite (1 for a zero amax)."""
  top = oq.element.max_finite
  if isinstance(oq.fmt, ScaledFormat) and oq.fmt.element_exponent:
    top *= 2.0 ** oq.fmt.element_exponent
  return jnp.where(value > 0, value / np.float32(top), jnp.ones((), jnp.float32))


# ---- gradient quantization --------------------------------------------------------------------------------------
def _round(x: jax.Array, fmt, rounding: Rounding, key) -> jax.Array:
  key = key if rounding is Rounding.STOCHASTIC else None
  if isinstance(fmt, ScaledFormat):
    return fake_quantize(x, fmt, rounding=rounding, key=key)
  return quantize(x, fmt, rounding=rounding, key=key)


def quantize_grad(x: ArrayLike, fmt: Format | ScaledFormat | str, *, rounding: Rounding | str = "nearest_even",
                  key: jax.Array | None = None) -> jax.Array:
  """Identity in the forward pass; in the backward pass the cotangent is rounded to ``fmt``.

  ``fmt`` is an element format, a ScaledFormat or a preset name (``"mxfp8_e5m2"``). ``rounding='stochastic'`` needs
  ``key`` (DoReFa's stochastic gradient quantization).

  Example:
    >>> import jax, jax.numpy as jnp, lpnum
    >>> f = lambda v: jnp.sum(lpnum.quantize_grad(v, "int4") * jnp.array([0.3, 9.0]))
    >>> jax.grad(f)(jnp.ones(2)).tolist()
    [0.0, 7.0]
  """
  x = as_float_array(x)
  if isinstance(fmt, str) and fmt in PRESETS:
    fmt = preset(fmt)
  elif not isinstance(fmt, ScaledFormat):
    if not isinstance(fmt, Format | str):
      raise TypeError(f"fmt={short(fmt)} must be a format, a ScaledFormat or a format or preset name")
    fmt = as_format(fmt)
  rounding = Rounding.parse(rounding, "rounding")
  check_rounding_key(rounding, key)
  return _quantize_grad(x, key, fmt, rounding)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _quantize_grad(x, key, fmt, rounding):
  return x


def _qg_fwd(x, key, fmt, rounding):
  return x, key


def _qg_bwd(fmt, rounding, key, g):
  return _round(g, fmt, rounding, key), None


_quantize_grad.defvjp(_qg_fwd, _qg_bwd)
