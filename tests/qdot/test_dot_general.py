"""lpnum.dot_general, forward and backward, against NumPy references (ref_int/ref_fp8, float64 matmuls) and the integer engine against int64 arithmetic."""

from __future__ import annotations


import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest

import lpnum
from lpnum import nn as lnn
from lpnum.kernels import accumulate

from scaled_reference import ref_fp8, ref_int
from testing import DN, F32, TRANSFORMS, data, dots_in, int_codes, matmul64, ramp


# ---- the quantized dot_general, forward --------------------------------------------------------------------------
@pytest.mark.parametrize("transform", TRANSFORMS.values(), ids=TRANSFORMS.keys())
@pytest.mark.parametrize("gran", ["tensor", "channel", 16])
def test_fake_int8_matches_numpy(gran, transform):
  a, b = data((6, 48), 1), data((48, 5), 2)
  g = {"tensor": lpnum.per_tensor(), "channel": lpnum.per_channel(), 16: lpnum.per_block(16)}[gran]
  cfg = lpnum.DotConfig(lhs=lpnum.OperandQuant("int8", granularity=g), rhs=lpnum.OperandQuant("int8", granularity=g))
  y = transform(lambda x, w: lpnum.dot_general(x, w, DN, cfg))(a, b)
  blk_a = {"tensor": a.shape, "channel": (1, 48), 16: (1, 16)}[gran]
  blk_b = {"tensor": b.shape, "channel": (48, 1), 16: (16, 1)}[gran]
  qa, qb = ref_int(a, 8, blk_a)[0], ref_int(b, 8, blk_b)[0]
  np.testing.assert_allclose(np.asarray(y), matmul64(qa, qb), rtol=2e-6, atol=2e-6)


def test_fake_fp8_and_mx_match_numpy():
  a, b = data((4, 64), 3), data((64, 8), 4)
  cfg = lpnum.DotConfig(lhs=lpnum.OperandQuant("float8_e4m3fn", granularity=lpnum.per_channel()), rhs="mxfp8_e4m3")
  y = lpnum.dot_general(a, b, DN, cfg)
  import mx_reference
  qb = mx_reference.mx_quantize(b, "mxfp8_e4m3", axis=0)[2]
  qa = ref_fp8(a, ml_dtypes.float8_e4m3fn, (1, 64))
  np.testing.assert_allclose(np.asarray(y), matmul64(qa, qb), rtol=2e-6, atol=2e-6)


@pytest.mark.parametrize("transform", TRANSFORMS.values(), ids=TRANSFORMS.keys())
def test_int_backend_is_exact_integer_arithmetic(transform):
  a, b = data((5, 40), 5), data((40, 7), 6)
  y = transform(lambda x, w: lpnum.dot_general(x, w, DN, lpnum.DotConfig.w8a8()))(a, b)
  ca, sa = int_codes(a, 8, (1, 40))
  cb, sb = int_codes(b, 8, (40, 1))
  acc = ca.astype(np.int64) @ cb.astype(np.int64)
  expect = (acc.astype(F32) * sa.reshape(5, 1)).astype(F32) * sb.reshape(1, 7)
  np.testing.assert_array_equal(np.asarray(y), expect.astype(F32))


def test_w8a8_runs_int8_dots_forward_and_backward():
  """No silent fallback: every matmul of a W8A8 layer, forward and both backward, is int8 x int8 -> int32."""
  model = lnn.quantize_model(nn.Dense(16), lpnum.DotConfig.w8a8())
  x = data((4, 32), 7)
  params = model.init(jax.random.key(0), x)["params"]
  loss = lambda p, v: jnp.sum(model.apply({"params": p}, v) ** 2)
  dots = dots_in(jax.grad(loss, argnums=(0, 1)), params, x)
  assert len(dots) == 3
  for lhs, rhs, out in dots:
    assert lhs.endswith("xi8>") and rhs.endswith("xi8>") and out.endswith("xi32>"), (lhs, rhs, out)


def test_fp8_int_backend_runs_fp8_dots():
  e4m3 = lpnum.OperandQuant("float8_e4m3fn", granularity=lpnum.per_channel())
  grad = lpnum.BackwardQuant(grad=lpnum.OperandQuant("float8_e5m2", granularity=lpnum.per_channel()), operand=e4m3)
  cfg = lpnum.DotConfig(lhs=e4m3, rhs=e4m3, dlhs=grad, drhs=grad, engine="int")
  a, b = data((4, 32), 8), data((32, 8), 9)
  dots = dots_in(jax.grad(lambda x, w: jnp.sum(lpnum.dot_general(x, w, DN, cfg) ** 2), argnums=(0, 1)), a, b)
  assert len(dots) == 3
  for lhs, rhs, out in dots:
    assert "f8E" in lhs and "f8E" in rhs and out.endswith("xf32>"), (lhs, rhs, out)
  y = lpnum.dot_general(a, b, DN, cfg)
  qa, qb = ref_fp8(a, ml_dtypes.float8_e4m3fn, (1, 32)), ref_fp8(b, ml_dtypes.float8_e4m3fn, (32, 1))
  np.testing.assert_allclose(np.asarray(y), matmul64(qa, qb), rtol=2e-6, atol=2e-6)


def test_batched_and_multi_axis_contractions():
  """Attention-shaped (batch axes) and DenseGeneral-shaped (two contracting axes) products."""
  q, k = data((2, 3, 5, 8), 10), data((2, 3, 6, 8), 11)
  cfg = lpnum.DotConfig(lhs="int8", rhs="int8")
  y = lpnum.dot_general(q, k, (((3,), (3,)), ((0, 1), (0, 1))), cfg)
  assert y.shape == (2, 3, 5, 6)
  for i in range(2):
    for h in range(3):
      expect = matmul64(ref_int(q[i, h], 8, (5, 8))[0], ref_int(k[i, h].T, 8, (8, 6))[0])
      np.testing.assert_allclose(np.asarray(y[i, h]), expect, rtol=2e-6, atol=2e-6)
  x, w = data((4, 3, 5), 12), data((3, 5, 7), 13)
  y = lpnum.dot_general(x, w, (((1, 2), (0, 1)), ((), ())), cfg)
  expect = matmul64(ref_int(x.reshape(4, 15), 8, (4, 15))[0], ref_int(w.reshape(15, 7), 8, (15, 7))[0])
  np.testing.assert_allclose(np.asarray(y), expect, rtol=2e-6, atol=2e-6)


@pytest.mark.parametrize("acc", [accumulate.IntAccumulator(12, "saturate"), accumulate.IntAccumulator(14, "wrap")])
def test_integer_accumulator_emulation(acc):
  a, b = data((3, 64), 14) * 4, data((64, 5), 15) * 4
  cfg = lpnum.DotConfig(lhs=lpnum.OperandQuant("int8", granularity=lpnum.per_channel()),
                        rhs=lpnum.OperandQuant("int8", granularity=lpnum.per_channel()), engine="int", accumulator=acc)
  y = lpnum.dot_general(a, b, DN, cfg)
  ca, sa = int_codes(a, 8, (1, 64))
  cb, sb = int_codes(b, 8, (64, 1))
  lo, hi = -2 ** (acc.bits - 1), 2 ** (acc.bits - 1) - 1
  s = np.zeros((3, 5), np.int64)
  for kk in range(64):  # sequential along K, the accumulator's documented order
    s = s + ca[:, kk:kk + 1].astype(np.int64) * cb[kk:kk + 1, :].astype(np.int64)
    s = np.clip(s, lo, hi) if acc.overflow == "saturate" else (s - lo) % 2 ** acc.bits + lo
  expect = (s.astype(F32) * sa.reshape(3, 1)).astype(F32) * sb.reshape(1, 5)
  np.testing.assert_array_equal(np.asarray(y), expect)
  exact = matmul64(ca, cb)
  assert np.any(s != exact), "the test data must overflow the narrow accumulator"


def test_float_accumulator_emulation_matches_its_reference():
  a, b = data((3, 32), 16), data((32, 4), 17)
  acc = accumulate.FloatAccumulator.ieee(5, 3)
  cfg = lpnum.DotConfig(lhs="float8_e4m3fn", rhs="float8_e4m3fn", accumulator=acc)
  y = lpnum.dot_general(a, b, DN, cfg)
  qa, qb = ref_fp8(a, ml_dtypes.float8_e4m3fn, a.shape), ref_fp8(b, ml_dtypes.float8_e4m3fn, b.shape)
  s = np.zeros((3, 4), F32)
  for kk in range(32):  # round to E5M3 (float16 with 3 mantissa bits) after every addition
    s = _round_e5m3(s + qa[:, kk:kk + 1] * qb[kk:kk + 1, :])
  np.testing.assert_array_equal(np.asarray(y), s)


def _round_e5m3(v: np.ndarray) -> np.ndarray:
  """Round float32 to IEEE-style E5M3 (bias 15, subnormals, inf), ties to even, by exact float64 scaling."""
  v = v.astype(np.float64)
  e = np.floor(np.log2(np.maximum(np.abs(v), 2.0 ** -14)))
  ulp = 2.0 ** (e - 3)
  r = np.round(v / ulp) * ulp  # np.round is half-to-even
  return np.where(np.abs(r) > 240.0, np.sign(r) * np.inf, r).astype(F32)


def test_stochastic_rounding_needs_and_uses_key():
  tq = lpnum.OperandQuant("int4", rounding="stochastic")
  cfg = lpnum.DotConfig(lhs=tq, rhs="int8")
  a, b = data((4, 16), 18), data((16, 3), 19)
  with pytest.raises(ValueError, match="key="):
    lpnum.dot_general(a, b, DN, cfg)
  y1 = lpnum.dot_general(a, b, DN, cfg, key=jax.random.key(1))
  assert np.array_equal(y1, lpnum.dot_general(a, b, DN, cfg, key=jax.random.key(1)))
  assert not np.array_equal(y1, lpnum.dot_general(a, b, DN, cfg, key=jax.random.key(2)))


def test_dot_general_bad_inputs():
  cfg = lpnum.DotConfig(lhs="int8")
  with pytest.raises(TypeError, match="config"):
    lpnum.dot_general(np.ones((2, 2), F32), np.ones((2, 2), F32), DN, "int8")
  with pytest.raises(TypeError, match="lhs"):
    lpnum.dot_general(np.ones((2, 2), np.int32), np.ones((2, 2), F32), DN, cfg)
  with pytest.raises(TypeError, match="rhs"):
    lpnum.dot_general(np.ones((2, 2), F32), np.ones((2, 2), np.int8), DN, cfg)
  with pytest.raises(ValueError, match="dimension_numbers"):
    lpnum.dot_general(np.ones((2, 2), F32), np.ones((2, 2), F32), ((1, 0), ()), cfg)
  with pytest.raises(ValueError, match="contracting sizes"):
    lpnum.dot_general(np.ones((2, 3), F32), np.ones((2, 2), F32), DN, cfg)
  with pytest.raises(ValueError, match="engine='kernel'"):
    lpnum.dot_general(np.ones((2, 2), F32), np.ones((2, 2), F32), DN, lpnum.DotConfig(rhs="int8", engine="kernel"))
  with pytest.raises(ValueError, match="needs state"):
    lnn.make_dot_general(lpnum.DotConfig(lhs=lpnum.OperandQuant("int8", scaling="delayed")))
  with pytest.raises(ValueError, match="stochastic"):
    lnn.make_dot_general(lpnum.DotConfig(lhs=lpnum.OperandQuant("int8", rounding="stochastic")))


def test_empty_and_zero_inputs():
  cfg = lpnum.DotConfig(lhs=lpnum.OperandQuant("int8", granularity=lpnum.per_channel()), rhs="float8_e4m3fn")
  y = lpnum.dot_general(np.zeros((0, 8), F32), data((8, 3), 20), DN, cfg)
  assert y.shape == (0, 3)
  y = lpnum.dot_general(np.zeros((2, 8), F32), np.zeros((8, 3), F32), DN, cfg)
  assert np.all(np.isfinite(y)) and not np.any(y)


# ---- the backward matmuls ----------------------------------------------------------------------------------------
def test_fp8_recipe_gradients_match_numpy():
  """dlhs = q_e5m2(g) @ q_e4m3(rhs).T and drhs = q_e4m3(lhs).T @ q_e5m2(g), per-tensor scales."""
  cfg = lpnum.DotConfig.fp8()
  a, b, g = data((4, 16), 21), data((16, 6), 22), data((4, 6), 23)
  _, vjp = jax.vjp(lambda x, w: lpnum.dot_general(x, w, DN, cfg), a, b)
  da, db = vjp(jnp.asarray(g))
  qa, qb = ref_fp8(a, ml_dtypes.float8_e4m3fn, a.shape), ref_fp8(b, ml_dtypes.float8_e4m3fn, b.shape)
  qg = ref_fp8(g, ml_dtypes.float8_e5m2, g.shape)
  np.testing.assert_allclose(np.asarray(da), matmul64(qg, qb.T), rtol=2e-6, atol=2e-6)
  np.testing.assert_allclose(np.asarray(db), matmul64(qa.T, qg), rtol=2e-6, atol=2e-6)


def test_int8_backward_matmuls_match_numpy():
  cfg = lpnum.DotConfig.w8a8()
  a, b, g = data((4, 16), 24), data((16, 6), 25), data((4, 6), 26)
  _, vjp = jax.vjp(lambda x, w: lpnum.dot_general(x, w, DN, cfg), a, b)
  da, db = vjp(jnp.asarray(g))
  # dlhs = g (4, 6) @ b.T (6, 16): g per row, b.T per column (= per row of b)
  np.testing.assert_allclose(np.asarray(da), matmul64(ref_int(g, 8, (1, 6))[0], ref_int(b.T, 8, (6, 1))[0]),
                             rtol=2e-6, atol=2e-6)
  np.testing.assert_allclose(np.asarray(db), matmul64(ref_int(a.T, 8, (1, 4))[0], ref_int(g, 8, (4, 1))[0]),
                             rtol=2e-6, atol=2e-6)


def test_clipped_ste_and_lsq_gradients():
  a = np.array([[0.5, -0.25, 0.1, 2.0]], F32)
  b = np.ones((4, 1), F32)
  tq = lpnum.OperandQuant(lpnum.ScaledFormat("int8", calibration=lpnum.percentile(50.0)), estimator=lpnum.estimators.ClippedSTE())
  ga = jax.grad(lambda x: lpnum.dot_general(x, b, DN, lpnum.DotConfig(lhs=tq)).sum())(a)
  clip = np.percentile(np.abs(a), 50.0)
  np.testing.assert_array_equal(np.asarray(ga)[0], (np.abs(a[0]) <= clip).astype(F32))
  cfg = lpnum.DotConfig(lhs=lpnum.OperandQuant("int4", estimator=lpnum.estimators.LSQ()))
  state = lpnum.qdot.OperandState(lhs_param=jnp.float32(0.3))
  gs = jax.grad(lambda s: lpnum.dot_general(a, b, DN, cfg, state=lpnum.qdot.OperandState(lhs_param=s)).sum())(
      jnp.float32(0.3))
  v = a[0] / F32(0.3)  # LSQ step gradient: round(v) - v inside, clamp bound outside, times 1/sqrt(n Qp)
  expect = np.where(v > 7, 7, np.where(v < -8, -8, np.round(v) - v)).sum() / np.sqrt(4 * 7)
  np.testing.assert_allclose(float(gs), expect, rtol=1e-5)
  assert lpnum.dot_general(a, b, DN, cfg, state=state).shape == (1, 1)


def test_vmap_matches_loop():
  cfg = lpnum.DotConfig(lhs=lpnum.OperandQuant("int8", granularity=lpnum.per_channel()), rhs="int4")
  a, b = data((3, 4, 16), 27), data((16, 5), 28)
  y = jax.vmap(lambda x: lpnum.dot_general(x, b, DN, cfg))(a)
  for i in range(3):
    np.testing.assert_array_equal(np.asarray(y[i]), np.asarray(lpnum.dot_general(a[i], b, DN, cfg)))


# ---- gradient quantization and raw-cast configs -----------------------------------------------------------------------------------
def test_quantize_grad_rounds_the_cotangent():
  x = jnp.asarray(data((4, 32), 0) * 1.5)
  w = ramp(x) * 0.37
  g = jax.grad(lambda v: jnp.sum(lpnum.quantize_grad(v, "float8_e5m2") * w))(x)
  np.testing.assert_array_equal(g, lpnum.quantize(w, "float8_e5m2"))
  mx = lpnum.mx.format("mxfp6_e3m2")
  g = jax.grad(lambda v: jnp.sum(lpnum.quantize_grad(v, mx) * w))(x)
  np.testing.assert_array_equal(g, lpnum.fake_quantize(w, mx))
  k = jax.random.key(3)
  f = lambda v, key: jnp.sum(lpnum.quantize_grad(v, "int4", rounding="stochastic", key=key) * w)
  a, b, c = (jax.grad(f)(x, key) for key in (k, k, jax.random.key(4)))
  np.testing.assert_array_equal(a, b)
  assert np.any(np.asarray(a) != np.asarray(c))
  assert np.all(np.asarray(a) == np.round(np.asarray(a)))


def test_quantized_dot_general_forward_and_backward():
  rng = np.random.default_rng(5)
  a = jnp.asarray(rng.standard_normal((8, 64)).astype(np.float32))
  b = jnp.asarray(rng.standard_normal((64, 16)).astype(np.float32))
  dn = (((1,), (0,)), ((), ()))
  lhs, rhs = lpnum.mx.format("mxfp8_e4m3", axis=1), lpnum.mx.format("mxfp8_e4m3", axis=0)
  e5m2 = lpnum.OperandQuant("float8_e5m2", scaling="none")
  cfg = lpnum.DotConfig(lhs=lpnum.OperandQuant(lhs), rhs=lpnum.OperandQuant(rhs),
                        dlhs=lpnum.BackwardQuant(grad=e5m2, operand=lpnum.OperandQuant("bfloat16", scaling="none")),
                        drhs=lpnum.BackwardQuant(grad=e5m2))
  assert cfg.lhs.lhs_format is lhs and cfg.rhs.rhs_format is rhs  # a ScaledFormat with its own blocks, as it is
  qa = lpnum.fake_quantize(a, lhs)
  qb = lpnum.fake_quantize(b, rhs)
  np.testing.assert_allclose(lpnum.dot_general(a, b, dn, cfg), qa @ qb, rtol=1e-6)
  gw = jnp.asarray(rng.standard_normal((8, 16)).astype(np.float32))
  da, db = jax.grad(lambda x, y: jnp.sum(lpnum.dot_general(x, y, dn, cfg) * gw), argnums=(0, 1))(a, b)
  gq = lpnum.quantize(gw, "float8_e5m2")
  np.testing.assert_allclose(da, gq @ lpnum.quantize(b, "bfloat16").T, rtol=1e-6)
  np.testing.assert_allclose(db, qa.T @ gq, rtol=1e-6)
  # Stochastic gradient rounding with an explicit key.
  int4 = lpnum.OperandQuant("int4", scaling="none", rounding="stochastic")
  scfg = lpnum.DotConfig(lhs=lpnum.OperandQuant("int8", scaling="none"), dlhs=lpnum.BackwardQuant(grad=int4),
                         drhs=lpnum.BackwardQuant(grad=int4))
  f = lambda x, k: jnp.sum(lpnum.dot_general(x, b, dn, scfg, key=k) * gw)
  np.testing.assert_array_equal(jax.grad(f)(a, jax.random.key(1)), jax.grad(f)(a, jax.random.key(1)))
