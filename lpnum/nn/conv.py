"""The quantized convolution shared by the linen and nnx conv modules and the plain ``conv_general_dilated`` hook.

A convolution is quantized in the matmul views of :mod:`lpnum.qdot` (``lhs (M, K) @ rhs (K, N)``), chosen so that
per-channel scales sit outside the sums the convolution adds up (layouts follow the call's ``dimension_numbers``;
``(N, spatial..., C)`` for the input, ``(window..., I, O)`` for the kernel below):

- lhs, the input: one row per example, K = the example's pixels x input features, features innermost.
  ``per_channel()`` is one scale per example (a Dense layer's per token), ``per_block(g)`` a scale per g input
  features of one pixel (the last block partial where g does not divide C).
- rhs, the kernel: K = window x input features, N = output features. ``per_channel()`` is one scale per output
  feature, ``per_block(g)`` one per g consecutive rows of K (input features at one window position when g divides
  I).
- the output gradient ``g``: for ``dlhs`` the lhs of ``g @ rhs.T`` (per example; blocks of output features), for
  ``drhs`` the rhs of ``lhs.T @ g`` (per output feature; K = examples x output positions).

``engine='fake'`` quantizes and dequantizes, then convolves in float32; the backward convolutions reuse the
forward-quantized operands (``BackwardQuant(operand='same')``) and may quantize ``g``.

``engine='int'`` (integer or FP8 elements, per-tensor or per-channel scales) convolves the codes, int8 x int8 ->
int32 (FP8 x FP8 -> float32; E5M2 gradients meet E4M3 codes in bfloat16, which holds both exactly), then scales:
``y[n, ..., o] = (acc * s_lhs[n]) * s_rhs[o]``. Its VJP runs both transposed convolutions on codes as well, with
the operands re-quantized in each backward view as :func:`lpnum.dot_general` does for its backward matmuls:
``dlhs`` convolves ``g`` (per example) with the kernel quantized per input feature,
``dx[n, ..., c] = (acc * s_g[n]) * s_w[c]``; ``drhs`` convolves the input quantized per input feature with ``g``
per output feature, ``dw[..., i, o] = (acc * s_x[i]) * s_g[o]`` (with feature groups, ``s_x`` of the input
feature that ``i`` reads in ``o``'s group). Gradients pass straight through the forward quantizers. A backward
convolution without a quantized ``g`` (or operand) runs in float32.
"""

from __future__ import annotations

import dataclasses
import inspect

import jax
import jax.numpy as jnp
import numpy as np

from lpnum.nn.ptq import dequantize_kernel, is_packed
from lpnum.qdot import SAME, DotConfig, Engine, OperandQuant, operand_codes, quantize_operand

__all__ = ["conv_call"]

_SIGNATURE = inspect.signature(jax.lax.conv_general_dilated)


def conv_call(cfg: DotConfig, lhs, rhs, state_fn, key_fn, args, kwargs):
  """The quantized convolution shared by the linen and nnx modules: ``args``/``kwargs`` are those of
  ``lax.conv_general_dilated`` after its two operands."""
  if cfg.engine not in (Engine.FAKE, Engine.INT) or cfg.accumulator is not None:
    raise ValueError(f"QuantConv supports engine='fake' or 'int' without accumulator emulation, got "
                     f"engine={cfg.engine.value!r}, accumulator={cfg.accumulator!r}")
  if is_packed(rhs):  # a PTQ'd kernel is already quantized: multiply by its values (engine='int': its codes)
    rhs = dequantize_kernel(rhs)
    if cfg.engine is Engine.FAKE:
      cfg = dataclasses.replace(cfg, rhs=None)
  conv = _Conv.of(lhs, rhs, args, kwargs)
  lhs_view, rhs_view = conv.lhs_view(), conv.rhs_view()
  state = state_fn(lhs_view.of(lhs), rhs_view.of(rhs))
  keys = [None] * 3
  if cfg.needs_key:
    keys = list(jax.random.split(key_fn(), 3))
  if cfg.engine is Engine.INT:
    return _int_conv(conv, cfg, lhs, rhs, state, keys[0])
  qa = lhs_view.fake(lhs, cfg.lhs, scale=state.lhs_scale, param=state.lhs_param, key=keys[0])
  qb = rhs_view.fake(rhs, cfg.rhs, scale=state.rhs_scale, param=state.rhs_param, key=keys[1])
  if cfg.dlhs is None and cfg.drhs is None:
    return conv(qa, qb)
  return _grad_quantized(conv, qa, qb, cfg, keys[2])


@dataclasses.dataclass(frozen=True)
class _View:
  """An operand seen as a 2-D matmul operand of ``role``: axis ``free`` is M (lhs) or N (rhs), the other axes form
  K in their order with ``last`` innermost."""

  role: str
  free: int
  last: int | None

  def _perm(self, ndim: int) -> tuple[int, ...]:
    others = [i for i in range(ndim) if i not in (self.free, self.last)] + ([] if self.last is None else [self.last])
    return (self.free, *others) if self.role == "lhs" else (*others, self.free)

  def of(self, x: jax.Array) -> jax.Array:
    v = jnp.transpose(x, self._perm(x.ndim))
    return v.reshape(x.shape[self.free], -1) if self.role == "lhs" else v.reshape(-1, x.shape[self.free])

  def back(self, v: jax.Array, shape: tuple[int, ...]) -> jax.Array:
    perm = self._perm(len(shape))
    return jnp.transpose(v.reshape([shape[i] for i in perm]), np.argsort(perm))

  def fake(self, x, oq: OperandQuant | None, **kw) -> jax.Array:
    """``x`` quantized and dequantized in this view (with its estimator's gradient). Blocks of lhs run along the
    input features of one pixel, a partial last block where they do not divide the features."""
    if oq is None:
      return x
    if self.role == "lhs" and self.last is not None and oq.granularity.kind == "block":
      v = jnp.moveaxis(x, self.last, -1)
      q = quantize_operand(v.reshape(-1, v.shape[-1]), oq, self.role, **kw)
      return jnp.moveaxis(q.reshape(v.shape), -1, self.last)
    return self.back(quantize_operand(self.of(x), oq, self.role, **kw), x.shape)

  def codes(self, x, oq: OperandQuant, scale=None, key=None) -> tuple[jax.Array, jax.Array]:
    """``x``'s element values in its own layout and its scales along ``free`` (a vector, or a scalar)."""
    values, s = operand_codes(self.of(x), oq, self.role, scale, key)
    return self.back(values, x.shape), s.reshape(-1) if s.ndim else s


@dataclasses.dataclass(frozen=True)
class _Conv:
  """A convolution's arguments, normalized (explicit padding, ConvDimensionNumbers), and its two transposes."""

  lhs_shape: tuple[int, ...]
  rhs_shape: tuple[int, ...]
  strides: tuple[int, ...]
  padding: tuple[tuple[int, int], ...]
  lhs_dilation: tuple[int, ...]
  rhs_dilation: tuple[int, ...]
  dn: jax.lax.ConvDimensionNumbers
  groups: int
  batch_groups: int
  precision: object
  preferred_element_type: object

  @classmethod
  def of(cls, lhs, rhs, args, kwargs) -> _Conv:
    bound = _SIGNATURE.bind(lhs, rhs, *args, **kwargs)
    bound.apply_defaults()
    a = bound.arguments
    nd = lhs.ndim - 2
    dn = jax.lax.conv_dimension_numbers(lhs.shape, rhs.shape, a["dimension_numbers"])
    lhs_dilation = tuple(a["lhs_dilation"] or (1,) * nd)
    rhs_dilation = tuple(a["rhs_dilation"] or (1,) * nd)
    strides = tuple(a["window_strides"])
    padding = a["padding"]
    if isinstance(padding, str):
      window = [(rhs.shape[i] - 1) * d + 1 for i, d in zip(dn.rhs_spec[2:], rhs_dilation)]
      padding = jax.lax.padtype_to_pads([lhs.shape[i] for i in dn.lhs_spec[2:]], window, strides, padding)
    return cls(tuple(lhs.shape), tuple(rhs.shape), strides, tuple(tuple(int(p) for p in pair) for pair in padding),
               lhs_dilation, rhs_dilation, dn, a["feature_group_count"], a["batch_group_count"], a["precision"],
               a["preferred_element_type"])

  def __call__(self, a, b, out_type=None, **kw):
    return jax.lax.conv_general_dilated(
        a, b, kw.get("strides", self.strides), kw.get("padding", self.padding),
        kw.get("lhs_dilation", self.lhs_dilation), kw.get("rhs_dilation", self.rhs_dilation),
        kw.get("dn", self.dn), kw.get("groups", self.groups), kw.get("batch_groups", self.batch_groups),
        precision=self.precision, preferred_element_type=out_type or self.preferred_element_type)

  # ---- the matmul views of the operands ---------------------------------------------------------------------------
  def lhs_view(self) -> _View:
    return _View("lhs", self.dn.lhs_spec[0], self.dn.lhs_spec[1])

  def rhs_view(self) -> _View:
    return _View("rhs", self.dn.rhs_spec[0], self.dn.rhs_spec[1])

  # ---- the transposed convolutions (dlhs, drhs) -------------------------------------------------------------------
  def _dilated(self, g_shape):
    spatial = lambda shape, spec, d: [(shape[i] - 1) * s + 1 for i, s in zip(spec[2:], d)]
    lhs = spatial(self.lhs_shape, self.dn.lhs_spec, self.lhs_dilation)
    window = spatial(self.rhs_shape, self.dn.rhs_spec, self.rhs_dilation)
    out = spatial(g_shape, self.dn.out_spec, self.strides)
    return lhs, window, out

  def transpose_lhs(self, g, w, out_type) -> jax.Array:
    """The input's cotangent for the output's ``g``: a convolution of the strided-dilated ``g`` with the flipped
    kernel, input and output features swapped."""
    lhs_spec, rhs_spec, out_spec = self.dn
    lhs, window, out = self._dilated(g.shape)
    before = [k - lo - 1 for k, (lo, _) in zip(window, self.padding)]
    padding = [(b, h + k - 1 - o - b) for b, h, k, o in zip(before, lhs, window, out)]
    if self.groups > 1:  # the feature groups of the output features move into the (new) output features
      o_axis, i_axis = rhs_spec[0], rhs_spec[1]
      shape = list(w.shape)
      w = w.reshape(shape[:o_axis] + [self.groups, shape[o_axis] // self.groups] + shape[o_axis + 1:])
      w = jnp.moveaxis(w, o_axis, i_axis)
      shape[i_axis] *= self.groups
      shape[o_axis] //= self.groups
      w = w.reshape(shape)
    w = jnp.flip(w, rhs_spec[2:])
    dn = jax.lax.ConvDimensionNumbers(out_spec, (rhs_spec[1], rhs_spec[0], *rhs_spec[2:]), lhs_spec)
    return self(g, w, out_type, strides=self.lhs_dilation, padding=padding, lhs_dilation=self.strides, dn=dn,
                batch_groups=1)

  def transpose_rhs(self, x, g, out_type) -> jax.Array:
    """The kernel's cotangent for the output's ``g``: a convolution of the input with ``g`` as the kernel, examples
    as the contracted features."""
    lhs, window, out = self._dilated(g.shape)
    padding = [(lo, o - h + k - lo - 1) for (lo, _), h, k, o in zip(self.padding, lhs, window, out)]
    swap = lambda spec: (spec[1], spec[0], *spec[2:])
    dn = jax.lax.ConvDimensionNumbers(swap(self.dn.lhs_spec), swap(self.dn.out_spec), swap(self.dn.rhs_spec))
    return self(x, g, out_type, strides=self.rhs_dilation, padding=padding, rhs_dilation=self.strides, dn=dn,
                groups=1, batch_groups=self.groups)


def _along(s: jax.Array, axis: int, ndim: int) -> jax.Array:
  """A scale vector (or scalar) broadcastable along ``axis`` of an ``ndim``-d array."""
  if s.ndim == 0:
    return s
  shape = [1] * ndim
  shape[axis] = -1
  return s.reshape(shape)


def _common(p: jax.Array, q: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Codes of two FP8 formats (E5M2 gradients with E4M3 operands) as bfloat16, which holds both exactly: XLA's
  convolutions take operands of one dtype."""
  if p.dtype == q.dtype:
    return p, q
  return p.astype(jnp.bfloat16), q.astype(jnp.bfloat16)


def _int_conv(conv: _Conv, cfg: DotConfig, lhs, rhs, state, key):
  """The ``engine='int'`` convolution and its VJP, both on codes (see the module docs)."""
  if conv.batch_groups != 1:
    raise ValueError(f"QuantConv engine='int': batch_group_count={conv.batch_groups} must be 1")
  lv, rv = conv.lhs_view(), conv.rhs_view()
  ls, rs, os_ = conv.dn
  out_type = lambda codes: jnp.int32 if codes.dtype == jnp.int8 else jnp.float32

  def forward(a, b, state, key):
    ka, kb = (None, None) if key is None else tuple(jax.random.split(jax.random.fold_in(key, 0)))
    ac, sa = lv.codes(a, cfg.lhs, state.lhs_scale, ka)
    bc, sb = rv.codes(b, cfg.rhs, state.rhs_scale, kb)
    acc = conv(ac, bc, out_type(ac)).astype(jnp.float32)
    return (acc * _along(sa, os_[0], acc.ndim)) * _along(sb, os_[1], acc.ndim)

  def dlhs(a, b, g, key):
    bwd = cfg.dlhs
    if bwd is None or bwd.grad is None or bwd.operand is None:
      gq = g if bwd is None else _View("lhs", os_[0], os_[1]).fake(g, bwd.grad, key=key)
      op = None if bwd is None else cfg.rhs if bwd.operand == SAME else bwd.operand
      bq = _View("rhs", rs[1], rs[0]).fake(b, op)
      return jax.vjp(lambda a_: conv(a_, bq), a)[1](gq)[0]
    op = cfg.rhs if bwd.operand == SAME else bwd.operand
    k1, k2 = (None, None) if key is None else tuple(jax.random.split(key))
    gc, sg = _View("lhs", os_[0], os_[1]).codes(g, bwd.grad, key=k1)
    bc, sb = _View("rhs", rs[1], rs[0]).codes(b, op, key=k2)
    acc = conv.transpose_lhs(*_common(gc, bc), out_type(gc)).astype(jnp.float32)
    if sb.ndim:
      sb = jnp.tile(sb, conv.groups)
    return (acc * _along(sg, ls[0], acc.ndim)) * _along(sb, ls[1], acc.ndim)

  def drhs(a, b, g, key):
    bwd = cfg.drhs
    if bwd is None or bwd.grad is None or bwd.operand is None:
      gq = g if bwd is None else _View("rhs", os_[1], None).fake(g, bwd.grad, key=key)
      op = None if bwd is None else cfg.lhs if bwd.operand == SAME else bwd.operand
      aq = _View("lhs", ls[1], None).fake(a, op)
      return jax.vjp(lambda b_: conv(aq, b_), b)[1](gq)[0]
    op = cfg.lhs if bwd.operand == SAME else bwd.operand
    k1, k2 = (None, None) if key is None else tuple(jax.random.split(key))
    ac, sa = _View("lhs", ls[1], None).codes(a, op, key=k1)
    gc, sg = _View("rhs", os_[1], None).codes(g, bwd.grad, key=k2)
    acc = conv.transpose_rhs(*_common(ac, gc), out_type(ac)).astype(jnp.float32)
    if sa.ndim:  # the input feature that kernel entry (i, o) reads: i in o's feature group
      i_n, o_n = conv.rhs_shape[rs[1]], conv.rhs_shape[rs[0]]
      read = (jnp.arange(o_n)[None, :] // (o_n // conv.groups)) * i_n + jnp.arange(i_n)[:, None]
      sa = jnp.moveaxis(sa[read].reshape(i_n, o_n, *[1] * (acc.ndim - 2)), (0, 1), (rs[1], rs[0]))
    return (acc * sa) * _along(sg, rs[0], acc.ndim)

  @jax.custom_vjp
  def f(a, b, state, key):
    return forward(a, b, state, key)

  def f_fwd(a, b, state, key):
    return forward(a, b, state, key), (a, b, state, key)

  def f_bwd(res, g):
    a, b, state, key = res
    g = g.astype(jnp.float32)
    k1, k2 = (None, None) if key is None else (jax.random.fold_in(key, 1), jax.random.fold_in(key, 2))
    a32, b32 = a.astype(jnp.float32), b.astype(jnp.float32)
    da, db = dlhs(a32, b32, g, k1), drhs(a32, b32, g, k2)
    return da.astype(a.dtype), db.astype(b.dtype), jax.tree_util.tree_map(jnp.zeros_like, state), None

  f.defvjp(f_fwd, f_bwd)
  return f(lhs, rhs, state, key).astype(jnp.result_type(lhs.dtype, rhs.dtype))


def _grad_quantized(conv: _Conv, qa, qb, cfg: DotConfig, key):
  for name in ("dlhs", "drhs"):
    bwd = getattr(cfg, name)
    if bwd is not None and bwd.operand != SAME:
      raise ValueError(f"QuantConv: {name}.operand must be 'same' (the forward-quantized operand) with "
                       "engine='fake'")
  out_spec = conv.dn.out_spec

  @jax.custom_vjp
  def f(a, b, k):
    return conv(a, b)

  def fwd(a, b, k):
    return conv(a, b), (a, b, k)

  def bwd(res, g):
    a, b, k = res
    _, vjp = jax.vjp(conv, a, b)
    k1, k2 = (None, None) if k is None else tuple(jax.random.split(k))
    da = vjp(_View("lhs", out_spec[0], out_spec[1]).fake(g, None if cfg.dlhs is None else cfg.dlhs.grad, key=k1))[0]
    db = vjp(_View("rhs", out_spec[1], None).fake(g, None if cfg.drhs is None else cfg.drhs.grad, key=k2))[1]
    return da, db, None

  f.defvjp(fwd, bwd)
  return f(qa, qb, key)
