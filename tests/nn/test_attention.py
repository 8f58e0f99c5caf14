"""lpnum.nn.attention and lpnum.nn.a2q_layers against independent numpy references: quantized attention products
(``ref_int``/``ref_fp8`` of test_scaled per batch element and head), flax's float attention, the clipped softmax
formula, gated attention written out in numpy, einsums on independently quantized operands, and A2Q layers whose
integer weights are checked against the A2Q bound and an emulated narrow accumulator."""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
from flax import nnx

import lpnum
from lpnum.nn import attention as att

from scaled_reference import ref_fp8, ref_int
from testing import F32, data, matmul64



def _softmax64(x):
  x = x.astype(np.float64)
  e = np.exp(x - x.max(-1, keepdims=True))
  return e / e.sum(-1, keepdims=True)


def _quant(x, spec, role):
  """The numpy fake quantization of a 2-D matmul operand: spec = (element, granularity) or None."""
  if spec is None:
    return x
  element, gran = spec
  block = x.shape if gran == "tensor" else (1, x.shape[1]) if role == "lhs" else (x.shape[0], 1)
  if element == "int8":
    return ref_int(x, 8, block)[0]
  return ref_fp8(x, ml_dtypes.float8_e4m3fn, block)


def _tq(spec):
  if spec is None:
    return None
  granularity = {"tensor": lpnum.per_tensor(), "channel": lpnum.per_channel()}[spec[1]]
  return lpnum.OperandQuant("int8" if spec[0] == "int8" else "float8_e4m3fn", granularity=granularity)


def _ref_attention(q, k, v, bias, mask, qk_specs, av_specs, softmax="standard", gamma=-0.03, zeta=1.0):
  """Attention per batch element and head with numpy quantizers on q (scaled by 1/sqrt(d)), k^T, the
  probabilities and v; float64 products and softmax."""
  b_, tq, h_, d = q.shape
  out = np.zeros((b_, tq, h_, v.shape[-1]))
  for b in range(b_):
    for h in range(h_):
      qs = (q[b, :, h, :] / np.sqrt(F32(d))).astype(F32)
      logits = matmul64(_quant(qs, qk_specs[0], "lhs"), _quant(k[b, :, h, :].T.copy(), qk_specs[1], "rhs"))
      logits = logits.astype(F32) + bias[b, h]
      logits = np.where(mask[b, h], logits, np.finfo(F32).min)
      p = _softmax64(logits)
      if softmax == "clipped":
        p = np.clip((zeta - gamma) * p + gamma, 0, 1)
      p = p.astype(F32)
      out[b, :, h, :] = matmul64(_quant(p, av_specs[0], "lhs"), _quant(v[b, :, h, :], av_specs[1], "rhs"))
  return out


def _random_params(layer, *args, seed=0, **kwargs):
  """Random float32 params of a linen module's shapes (found by eval_shape: no init is compiled)."""
  shapes = jax.eval_shape(functools.partial(layer.init, **kwargs), jax.random.key(0), *args)["params"]
  rng = np.random.default_rng(seed)
  return jax.tree_util.tree_map(lambda a: (0.4 * rng.standard_normal(a.shape)).astype(F32), shapes)


def _qkv(seed, b=2, tq=5, tk=6, h=3, d=8):
  q, k, v = data((b, tq, h, d), seed), data((b, tk, h, d), seed + 1), data((b, tk, h, d), seed + 2)
  bias = 0.5 * data((b, h, tq, tk), seed + 3)
  mask = np.random.default_rng(seed + 4).random((b, 1, tq, tk)) < 0.7
  mask[..., 0] = True  # every query sees a key
  return q, k, v, bias, np.broadcast_to(mask, (b, h, tq, tk))


# ---- quantized attention --------------------------------------------------------------------------------------------
ATTENTION_CASES = {  # (q, k, probabilities, v) quantizers, backend, softmax
    "int8_tensor": (("int8", "tensor"), ("int8", "tensor"), ("int8", "tensor"), ("int8", "tensor"), "fake",
                    "standard"),
    "int8_channel_fp8_clipped": (("int8", "channel"), ("int8", "channel"), ("e4m3", "channel"),
                                 ("e4m3", "tensor"), "fake", "clipped"),
    "int_backend": (("int8", "channel"), ("int8", "channel"), ("int8", "tensor"), ("int8", "channel"), "int",
                    "standard"),
    "probs_only_clipped": (None, None, ("int8", "tensor"), None, "fake", "clipped"),
}


@pytest.mark.parametrize("case", ATTENTION_CASES.values(), ids=ATTENTION_CASES.keys())
def test_quantized_attention_matches_numpy(case):
  ql, kr, pl, vr, backend, softmax = case
  q, k, v, bias, mask = _qkv(0)

  def cfg(lhs, rhs):
    return None if lhs is None and rhs is None else lpnum.DotConfig(lhs=_tq(lhs), rhs=_tq(rhs), engine=backend)

  fn = att.attention_fn(cfg(ql, kr), cfg(pl, vr), softmax=softmax, gamma=-0.05, zeta=1.02)
  y = fn(q, k, v, bias, mask)
  expect = _ref_attention(q, k, v, bias, mask, (ql, kr), (pl, vr), softmax, -0.05, 1.02)
  np.testing.assert_allclose(np.asarray(y), expect, rtol=1e-5, atol=1e-5)


def test_scales_are_per_batch_element_and_head():
  """Scaling one head's keys by 1000 changes no other head's output (per-(batch, head) scales)."""
  q, k, v, bias, mask = _qkv(1)
  cfg = lpnum.DotConfig(lhs="int8", rhs="int8")
  fn = att.attention_fn(cfg, cfg)
  k2 = k.copy()
  k2[1, :, 2, :] *= 1000.0
  y1, y2 = np.asarray(fn(q, k, v, bias, mask)), np.asarray(fn(q, k2, v, bias, mask))
  np.testing.assert_array_equal(y1[0], y2[0])
  np.testing.assert_array_equal(y1[1, :, :2], y2[1, :, :2])
  assert not np.array_equal(y1[1, :, 2], y2[1, :, 2])


@pytest.mark.parametrize("broadcast_dropout", [True, False])
def test_float_attention_equals_flax(broadcast_dropout):
  """qk = av = None is flax's attention: several batch axes, bias, mask, dropout with the same rng."""
  q, k, v = data((2, 2, 4, 2, 8), 2), data((2, 2, 3, 2, 8), 3), data((2, 2, 3, 2, 5), 4)
  bias = data((2, 2, 2, 4, 3), 5)
  mask = np.random.default_rng(6).random((2, 1, 1, 4, 3)) < 0.6
  kw = dict(bias=bias, mask=mask, dropout_rng=jax.random.key(7), dropout_rate=0.3, deterministic=False,
            broadcast_dropout=broadcast_dropout)
  y = att.dot_product_attention(q, k, v, **kw)
  np.testing.assert_allclose(np.asarray(y), np.asarray(nn.dot_product_attention(q, k, v, **kw)), rtol=1e-5,
                             atol=1e-6)


def test_causal_and_grouped_query_attention_equal_nnx():
  q, k, v = data((2, 5, 4, 8), 8), data((2, 5, 2, 8), 9), data((2, 5, 2, 8), 10)
  y = att.dot_product_attention(q, k, v, is_causal=True)
  np.testing.assert_allclose(np.asarray(y), np.asarray(nnx.dot_product_attention(q, k, v, is_causal=True)),
                             rtol=1e-5, atol=1e-6)
  tril = np.tril(np.ones((5, 5), bool))
  np.testing.assert_array_equal(np.asarray(y), np.asarray(att.dot_product_attention(q, k, v, mask=tril)))


# ---- clipped softmax ---------------------------------------------------------------------------------------------
def test_clipped_softmax_formula_zeros_ones_and_gradient():
  x = data((4, 7), 11) * 3
  for gamma, zeta in ((-0.03, 1.0), (-0.2, 1.1), (0.0, 1.0)):
    got = np.asarray(att.clipped_softmax(x, gamma=gamma, zeta=zeta))
    expect = np.clip((zeta - gamma) * _softmax64(x) + gamma, 0, 1)
    np.testing.assert_allclose(got, expect, rtol=1e-6, atol=1e-7)
  got = np.asarray(att.clipped_softmax(x, gamma=-0.2, zeta=1.1))
  assert np.any(got == 0.0) and np.all(got >= 0)
  peaked = np.array([[8.0, 0.0, 0.0, 0.0]], F32)
  assert att.clipped_softmax(peaked, gamma=-0.1, zeta=1.1)[0].tolist() == [1.0, 0.0, 0.0, 0.0]
  g = jax.grad(lambda z: jnp.sum(att.clipped_softmax(z, gamma=-0.1, zeta=1.1) * jnp.arange(4.0)))(peaked)
  np.testing.assert_array_equal(np.asarray(g), np.zeros((1, 4), F32))  # every entry clipped: no gradient
  np.testing.assert_allclose(np.asarray(att.clipped_softmax(x, gamma=0.0, zeta=1.0)),
                             np.asarray(jax.nn.softmax(x)), rtol=1e-6)


@pytest.mark.parametrize("kwargs,match", [
    (dict(gamma=0.1), "gamma="), (dict(zeta=0.9), "zeta="), (dict(gamma=float("nan")), "gamma="),
    (dict(zeta=True), "zeta="),
])
def test_clipped_softmax_rejects(kwargs, match):
  with pytest.raises(ValueError, match=match):
    att.clipped_softmax(np.zeros((2, 3), F32), **kwargs)


# ---- masks, flax modules ---------------------------------------------------------------------------------------------
def test_masked_probabilities_are_exact_zeros_under_quantization():
  cfg = lpnum.DotConfig(lhs="int8", rhs="int8")
  layer = nn.MultiHeadDotProductAttention(num_heads=2, qkv_features=8, attention_fn=att.attention_fn(cfg, cfg))
  x = data((1, 5, 8), 12)
  causal = nn.make_causal_mask(np.ones((1, 5)))
  variables = layer.init(jax.random.key(0), x)
  _, inter = layer.apply(variables, x, mask=causal, sow_weights=True, mutable=["intermediates"])
  w = np.asarray(inter["intermediates"]["attention_weights"][0])
  assert w.shape == (1, 2, 5, 5)
  assert np.all(w[..., ~np.tril(np.ones((5, 5), bool))] == 0.0)
  np.testing.assert_allclose(w.sum(-1), 1.0, rtol=1e-6)


def test_linen_multihead_attention_jit_and_grad():
  qk = lpnum.DotConfig(lhs=lpnum.OperandQuant("int8", granularity=lpnum.per_channel()), rhs="int8",
                       dlhs=lpnum.BackwardQuant(grad="float8_e5m2"), drhs=lpnum.BackwardQuant(grad="float8_e5m2"))
  av = lpnum.DotConfig.fp8()
  layer = nn.MultiHeadDotProductAttention(num_heads=2, qkv_features=8, dropout_rate=0.1,
                                          attention_fn=att.attention_fn(qk, av, softmax="clipped"))
  x = data((2, 4, 8), 13)
  params = _random_params(layer, x, deterministic=True)

  loss = jax.jit(jax.value_and_grad(
      lambda p, key: jnp.sum(layer.apply({"params": p}, x, deterministic=False, rngs={"dropout": key}) ** 2)))
  value, grads = loss(params, jax.random.key(1))
  for path, g in jax.tree_util.tree_leaves_with_path(grads):
    assert np.all(np.isfinite(g)) and np.any(g != 0), path
  assert value != loss(params, jax.random.key(2))[0]  # dropout is on


def test_nnx_multihead_attention_jit_and_grad():
  cfg = lpnum.DotConfig(lhs="int8", rhs="int8")
  layer = nnx.MultiHeadAttention(num_heads=2, in_features=8, qkv_features=8, decode=False,
                                 attention_fn=att.attention_fn(cfg, cfg), rngs=nnx.Rngs(0))
  x = data((2, 4, 8), 14)
  grads = nnx.jit(nnx.grad(lambda m: jnp.sum(m(x) ** 2)))(layer)
  leaves = jax.tree_util.tree_leaves(nnx.state(grads, nnx.Param))
  assert leaves and all(np.all(np.isfinite(g)) and np.any(g != 0) for g in leaves)


@pytest.mark.parametrize("kwargs,exc,match", [
    (dict(qk=lpnum.DotConfig(lhs=lpnum.OperandQuant("int8", scaling="delayed"))), ValueError, "qk.lhs needs layer"),
    (dict(av=lpnum.DotConfig(rhs=lpnum.OperandQuant("int4", estimator=lpnum.estimators.LSQ()))), ValueError, "av.rhs needs layer"),
    (dict(qk=lpnum.DotConfig(lhs=lpnum.OperandQuant("int8", rounding="stochastic"))), ValueError, "qk rounds"),
    (dict(av=lpnum.DotConfig(rhs="int8", engine="kernel")), ValueError, "av.engine"),
    (dict(qk="int8"), TypeError, "qk must be"),
    (dict(softmax="sparsemax"), ValueError, "softmax="),
    (dict(softmax="clipped", gamma=0.5), ValueError, "gamma="),
    (dict(zeta=0.5), ValueError, "zeta="),
])
def test_attention_fn_rejects(kwargs, exc, match):
  kwargs = dict(kwargs)
  qk, av = kwargs.pop("qk", None), kwargs.pop("av", None)
  with pytest.raises(exc, match=match):
    att.attention_fn(qk, av, **kwargs)


def test_dot_product_attention_rejects():
  q = np.ones((1, 3, 2, 4), F32)
  with pytest.raises(ValueError, match="depths differ"):
    att.dot_product_attention(q, np.ones((1, 3, 2, 5), F32), np.ones((1, 3, 2, 4), F32))
  with pytest.raises(ValueError, match="multiple of key heads"):
    att.dot_product_attention(np.ones((1, 3, 3, 4), F32), q, q)
  with pytest.raises(ValueError, match="one rank"):
    att.dot_product_attention(q[0], q, q)
  with pytest.raises(ValueError, match="dropout_rng"):
    att.dot_product_attention(q, q, q, dropout_rate=0.5)
  with pytest.raises(ValueError, match="dropout_rate="):
    att.dot_product_attention(q, q, q, dropout_rate=1.0)
  with pytest.raises(TypeError, match="qk_attn_weights_einsum="):
    att.dot_product_attention(q, q, q, qk_attn_weights_einsum=jnp.einsum)
  with pytest.raises(TypeError, match="float dtype"):
    att.dot_product_attention(q.astype(np.int32), q.astype(np.int32), q.astype(np.int32))


# ---- self-attention modules, gating ----------------------------------------------------------------------------------
def _ref_self_attention(p, x, num_heads, gated):
  """Float multi-head self-attention with per-head sigmoid gates on the head slices of x, in numpy."""
  x64 = x.astype(np.float64)

  def proj(name):
    return np.einsum("btf,fhd->bthd", x64, p[name]["kernel"]) + p[name]["bias"]

  q, k, v = proj("query"), proj("key"), proj("value")
  logits = np.einsum("bqhd,bkhd->bhqk", q / np.sqrt(q.shape[-1]), k)
  y = np.einsum("bhqk,bkhd->bqhd", _softmax64(logits), v)
  if gated:
    xh = x64.reshape(*x.shape[:-1], num_heads, -1)
    gate = np.einsum("bthd,hd->bth", xh, p["gate"]["kernel"]) + p["gate"]["bias"]
    y = y / (1 + np.exp(-gate))[..., None]
  return np.einsum("bthd,hdf->btf", y, p["out"]["kernel"]) + p["out"]["bias"]


def test_gated_self_attention_matches_numpy_and_gates_per_head():
  layer = att.QuantSelfAttention(num_heads=2, qkv_features=6, gated=True, gate_bias_init=-1.0)
  x = data((2, 3, 4), 15)
  params = jax.jit(layer.init)(jax.random.key(0), x)["params"]
  assert params["gate"]["kernel"].shape == (2, 2) and params["gate"]["bias"].tolist() == [-1.0, -1.0]
  run = jax.jit(jax.value_and_grad(lambda q: (jnp.sum(layer.apply({"params": q}, x) ** 2),
                                              layer.apply({"params": q}, x)), has_aux=True))
  (_, y), grads = run(params)
  p = jax.tree_util.tree_map(np.asarray, params)
  np.testing.assert_allclose(np.asarray(y), _ref_self_attention(p, x, 2, True), rtol=1e-5, atol=1e-5)
  for path, g in jax.tree_util.tree_leaves_with_path(grads):
    assert np.all(np.isfinite(g)) and np.any(g != 0), path
  # Closing head 0's gate (and opening head 1's) is the ungated layer with head 0's values zeroed.
  (_, y_closed), _ = run({**params, "gate": {**params["gate"], "bias": jnp.array([-1e4, 1e4])}})
  zeroed = {**p, "value": {"kernel": p["value"]["kernel"].copy(), "bias": p["value"]["bias"].copy()}}
  zeroed["value"]["kernel"][:, 0] = 0.0
  zeroed["value"]["bias"][0] = 0.0
  np.testing.assert_allclose(np.asarray(y_closed), _ref_self_attention(zeroed, x, 2, False), rtol=1e-5, atol=1e-5)


def test_quantized_self_attention_linen_equals_nnx():
  chan = lpnum.OperandQuant("int8", granularity=lpnum.per_channel())
  kw = dict(qkv_features=8, config=lpnum.DotConfig(lhs=chan, rhs=chan), qk=lpnum.DotConfig(lhs="int8", rhs="int8"),
            av=lpnum.DotConfig(lhs="int8", rhs="int8"), softmax="clipped", gated=True)
  layer = att.QuantSelfAttention(num_heads=2, **kw)
  x = data((2, 4, 6), 16)
  mask = nn.make_causal_mask(np.ones((2, 4)))
  params = _random_params(layer, x)
  y = layer.apply({"params": params}, x, mask)  # eager: nnx below reuses the compiled products
  module = nnx.eval_shape(lambda: att.NnxQuantSelfAttention(6, 2, rngs=nnx.Rngs(1), **kw))  # no init compiled
  for name in ("query", "key", "value", "out", "gate"):
    getattr(module, name).kernel.set_value(jnp.asarray(params[name]["kernel"]))
    getattr(module, name).bias.set_value(jnp.asarray(params[name]["bias"]))
  np.testing.assert_allclose(np.asarray(module(x, mask)), np.asarray(y), rtol=1e-6, atol=1e-6)


def test_self_attention_dropout_and_rejects():
  layer = att.QuantSelfAttention(num_heads=2, dropout_rate=0.5)
  x = data((1, 4, 4), 17)
  v = jax.jit(functools.partial(layer.init, deterministic=True))(jax.random.key(0), x)
  run = jax.jit(lambda key: layer.apply(v, x, deterministic=False, rngs={"dropout": key}))
  assert not np.array_equal(run(jax.random.key(1)), run(jax.random.key(2)))
  with pytest.raises(ValueError, match="num_heads="):
    att.QuantSelfAttention(num_heads=0).init(jax.random.key(0), x)
  with pytest.raises(ValueError, match="qkv_features=6"):
    att.QuantSelfAttention(num_heads=4, qkv_features=6).init(jax.random.key(0), x)
  with pytest.raises(ValueError, match="gated=True"):
    att.QuantSelfAttention(num_heads=3, qkv_features=6, gated=True).init(jax.random.key(0), x)
  with pytest.raises(TypeError, match="config must be"):
    att.QuantSelfAttention(num_heads=2, config="int8")
  with pytest.raises(ValueError, match="qk.lhs needs layer"):
    att.NnxQuantSelfAttention(4, 2, qk=lpnum.DotConfig(lhs=lpnum.OperandQuant("int8", scaling="static")),
                              rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="in_features="):
    att.NnxQuantSelfAttention(0, 2, rngs=nnx.Rngs(0))


# ---- einsum ----------------------------------------------------------------------------------------------------------
def _einsum_reference(einsum_str, x, w):
  """jnp.einsum semantics on operands quantized by ref_int: per row of the (M, K) lhs and per column of the
  (K, N) rhs, the matmul shapes written out by hand for each string."""
  if einsum_str == "bd,df->bf":
    return matmul64(ref_int(x, 8, (1, 8))[0], ref_int(w, 8, (8, 1))[0])
  if einsum_str == "btd,dhk->bthk":
    y = matmul64(ref_int(x.reshape(6, 8), 8, (1, 8))[0], ref_int(w.reshape(8, 8), 8, (8, 1))[0])
    return y.reshape(2, 3, 2, 4)
  if einsum_str == "bthk,hkd->btd":
    y = matmul64(ref_int(x.reshape(6, 8), 8, (1, 8))[0], ref_int(w.reshape(8, 5), 8, (8, 1))[0])
    return y.reshape(2, 3, 5)
  # "nhd,hd->hn": h is a batch axis: per-head matmuls (n, d) @ (d, 1), output transposed to (h, n).
  return np.stack([matmul64(ref_int(x[:, h], 8, (1, 4))[0], ref_int(w[h][:, None], 8, (4, 1))[0])[:, 0]
                   for h in range(3)])


EINSUMS = {"bd,df->bf": ((4, 8), (8, 5)), "btd,dhk->bthk": ((2, 3, 8), (8, 2, 4)),
           "bthk,hkd->btd": ((2, 3, 2, 4), (2, 4, 5)), "nhd,hd->hn": ((6, 3, 4), (3, 4))}


@pytest.mark.parametrize("einsum_str", EINSUMS)
def test_einsum_matches_numpy_on_quantized_operands(einsum_str):
  xs, ws = EINSUMS[einsum_str]
  x, w = data(xs, 18), data(ws, 19)
  chan = lpnum.OperandQuant("int8", granularity=lpnum.per_channel())
  cfg = lpnum.DotConfig(lhs=chan, rhs=chan)
  expect = _einsum_reference(einsum_str, x, w)
  np.testing.assert_allclose(np.asarray(att.einsum(einsum_str, x, w, cfg)), expect, rtol=2e-6, atol=2e-6)
  layer = att.QuantEinsum(ws, einsum_str, cfg)
  got = layer.apply({"params": {"kernel": w}}, x)
  np.testing.assert_allclose(np.asarray(got), expect, rtol=2e-6, atol=2e-6)
  module = nnx.Einsum(einsum_str, ws, einsum_op=att.QuantEinsumOp(cfg), rngs=nnx.Rngs(0))
  module.kernel[...] = w
  np.testing.assert_allclose(np.asarray(module(x)), expect, rtol=2e-6, atol=2e-6)
  np.testing.assert_allclose(np.asarray(att.einsum(einsum_str, x, w, None)), np.einsum(einsum_str, x, w),
                             rtol=1e-5, atol=1e-5)


def test_quant_einsum_float_equals_flax_einsum_with_bias_and_keeps_state():
  x = data((2, 3, 4), 20)
  layer = att.QuantEinsum((4, 2, 3), "btd,dhk->bthk", use_bias=True, bias_init=nn.initializers.normal(1.0))
  variables = layer.init(jax.random.key(0), x)
  ref = nn.Einsum((4, 2, 3), "btd,dhk->bthk", use_bias=True).apply(variables, x)
  np.testing.assert_allclose(np.asarray(layer.apply(variables, x)), np.asarray(ref), rtol=1e-6, atol=1e-6)
  cfg = lpnum.DotConfig(lhs=lpnum.OperandQuant("float8_e4m3fn", scaling="delayed", history=2), rhs="int8")
  layer = att.QuantEinsum((4, 5), "btd,df->btf", cfg)
  variables = layer.init(jax.random.key(0), x)
  _, stats = layer.apply(variables, x, mutable=["quant_stats"])
  hist = stats["quant_stats"]["QuantDotGeneral_0"]["lhs_amax_history"]
  assert hist.tolist() == [float(np.abs(x).max()), 0.0]


@pytest.mark.parametrize("einsum_str,match", [
    ("...d,df->...f", "ellipsis"), ("ii,ij->j", "repeated index"), ("ab,bc,cd->ad", "exactly two operands"),
    ("ab->ba", "exactly two operands"), ("ab,bc->ax", "output index 'x'"), ("ab,cd->ad", "only in lhs"),
    ("a1,1b->ab", "must be letters"), ("ab,bc->aac", "repeated index"), ("ab,bc->ac->a", "more than one"),
])
def test_einsum_rejects(einsum_str, match):
  x = np.ones((2, 2), F32)
  with pytest.raises(ValueError, match=r"einsum_str=.*" + match):
    att.einsum(einsum_str, x, x, None)
  with pytest.raises(ValueError, match="einsum_str="):
    att.QuantEinsum((2, 2), einsum_str)


def test_einsum_rejects_shapes_and_types():
  with pytest.raises(ValueError, match=r"einsum_str='bd,df->bf'.*names 2 axes"):
    att.einsum("bd,df->bf", np.ones((2, 3, 4), F32), np.ones((4, 5), F32), None)
  with pytest.raises(ValueError, match=r"einsum_str='bd,df->bf'.*index 'd' has size 4"):
    att.einsum("bd,df->bf", np.ones((2, 4), F32), np.ones((3, 5), F32), None)
  with pytest.raises(TypeError, match="einsum_str="):
    att.einsum(3, np.ones((2, 4), F32), np.ones((4, 5), F32), None)
  with pytest.raises(ValueError, match="out_sharding="):
    att.QuantEinsumOp(lpnum.DotConfig(lhs="int8"))("bd,df->bf", np.ones((2, 4), F32), np.ones((4, 5), F32),
                                                   out_sharding="x")
