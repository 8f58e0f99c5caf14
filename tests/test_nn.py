"""lpnum.nn: configs, the quantized dot_general, linen/nnx hooks, rules and PTQ, against independent numpy
references (``ref_int``/``ref_fp8`` of test_scaled, plain numpy matmuls)."""

from __future__ import annotations

import functools
import os
import re
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
from flax import nnx, serialization

import lpnum
from lpnum import nn as lnn
from lpnum.kernels import accumulate
from lpnum.nn.ptq import PackedKernel

sys.path.insert(0, os.path.dirname(__file__))
from test_scaled import ref_fp8, ref_int  # noqa: E402

F32 = np.float32
DN = (((1,), (0,)), ((), ()))
TRANSFORMS = {"eager": lambda f: f, "jit": jax.jit}


def _data(shape, seed):
  return np.random.default_rng(seed).standard_normal(shape).astype(F32)


def _codes(x, bits, block):
  """ref_int's integer codes and scales, unblocked: codes with x's shape, scales (rows/b0, cols/b1)."""
  _, q, scale = ref_int(x, bits, block)
  return q.reshape(x.shape), scale.reshape(x.shape[0] // block[0], x.shape[1] // block[1])


def _matmul64(a, b):
  return a.astype(np.float64) @ b.astype(np.float64)


# ---- configs ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kwargs,match", [
    (dict(fmt=3), "fmt="), (dict(fmt="int8", granularity="row"), "granularity="),
    (dict(fmt="int8", granularity=0), "granularity="), (dict(fmt="int8", scaling="later"), "scaling="),
    (dict(fmt="int8", scaling="delayed", granularity=lpnum.per_channel()), "granularity="),
    (dict(fmt="int8", history=0), "history="), (dict(fmt="int8", estimator="ste"), "estimator="),
    (dict(fmt="int8", estimator=lpnum.estimators.SignSTE()), "quantizes to binary"), (dict(fmt=None), "fmt=None"),
    (dict(fmt=None, estimator=lpnum.estimators.PACT(), granularity=lpnum.per_channel()), "granularity="),
    (dict(fmt="int8", granularity="channel"), "lpnum.per_channel()"),
    (dict(fmt="float8_e4m3fn", estimator=lpnum.estimators.LSQ()), "integer format"),
    (dict(fmt="int8", estimator=lpnum.estimators.LSQ(), scaling="static"), "LSQ"),
    (dict(fmt="int8", rounding="up"), "rounding="),
    (dict(fmt="nvfp4", granularity=lpnum.per_block(32)), "nvfp4"), (dict(fmt="mxfp4_e2m1", granularity=lpnum.per_channel()), "block"),
    (dict(fmt="int8", scaling="none", granularity=lpnum.per_channel()), "granularity="),
    (dict(fmt="nofmt"), "nofmt"),
])
def test_tensor_quant_rejects(kwargs, match):
  with pytest.raises((ValueError, TypeError), match=match):
    lpnum.OperandQuant(**kwargs)


@pytest.mark.parametrize("kwargs,match", [
    (dict(lhs="int8", rhs="int8", engine="gpu"), "engine="),
    (dict(lhs="int8", rhs="int8", rotate="yes"), "rotate="),
    (dict(lhs=None, rhs="int8", engine="int"), "lhs must be quantized"),
    (dict(lhs="int8", rhs=lpnum.OperandQuant("int8", granularity=lpnum.per_block(32)), engine="int"), "granularity"),
    (dict(lhs="int8", rhs="float8_e4m3fn", engine="int"), "like with like"),
    (dict(lhs="int16", rhs="int16", engine="int"), "int16"),
    (dict(lhs="float8_e4m3fn", rhs="float8_e4m3fn", accumulator=accumulate.IntAccumulator(16)), "IntAccumulator"),
    (dict(rhs="int8", accumulator=accumulate.FloatAccumulator.ieee(5, 6)), "both lhs and rhs"),
    (dict(lhs="int8", accumulator="int16"), "accumulator="),
    (dict(lhs="int8", dlhs="float8_e5m2"), "dlhs="),
    (dict(lhs=3), "lhs="),
])
def test_quant_config_rejects(kwargs, match):
  with pytest.raises((ValueError, TypeError), match=match):
    lpnum.DotConfig(**kwargs)


def test_backward_rejects_stateful_quantizers():
  with pytest.raises(ValueError, match="grad.scaling"):
    lpnum.BackwardQuant(grad=lpnum.OperandQuant("int8", scaling="delayed"))
  with pytest.raises(ValueError, match="operand.estimator"):
    lpnum.BackwardQuant(grad="int8", operand=lpnum.OperandQuant("int8", estimator=lpnum.estimators.ClippedSTE()))


def test_configs_are_hashable_static_values():
  a, b = lpnum.DotConfig.fp8(), lpnum.DotConfig.fp8()
  assert a == b and hash(a) == hash(b)
  assert lpnum.OperandQuant("mxfp4_e2m1").rhs_format == lpnum.mx.format("mxfp4_e2m1", axis=0)
  assert lpnum.OperandQuant("nvfp4").lhs_format == lpnum.nvfp4.format(axis=1)
  assert lpnum.OperandQuant("int8", lpnum.per_block(16)).lhs_format.granularity == lpnum.per_block(16, axis=1)
  assert lpnum.OperandQuant("int8", lpnum.per_channel()).lhs_format.granularity == lpnum.per_channel(0)


# ---- the quantized dot_general, forward --------------------------------------------------------------------------
@pytest.mark.parametrize("transform", TRANSFORMS.values(), ids=TRANSFORMS.keys())
@pytest.mark.parametrize("gran", ["tensor", "channel", 16])
def test_fake_int8_matches_numpy(gran, transform):
  a, b = _data((6, 48), 1), _data((48, 5), 2)
  g = {"tensor": lpnum.per_tensor(), "channel": lpnum.per_channel(), 16: lpnum.per_block(16)}[gran]
  cfg = lpnum.DotConfig(lhs=lpnum.OperandQuant("int8", granularity=g), rhs=lpnum.OperandQuant("int8", granularity=g))
  y = transform(lambda x, w: lpnum.dot_general(x, w, DN, cfg))(a, b)
  blk_a = {"tensor": a.shape, "channel": (1, 48), 16: (1, 16)}[gran]
  blk_b = {"tensor": b.shape, "channel": (48, 1), 16: (16, 1)}[gran]
  qa, qb = ref_int(a, 8, blk_a)[0], ref_int(b, 8, blk_b)[0]
  np.testing.assert_allclose(np.asarray(y), _matmul64(qa, qb), rtol=2e-6, atol=2e-6)


def test_fake_fp8_and_mx_match_numpy():
  a, b = _data((4, 64), 3), _data((64, 8), 4)
  cfg = lpnum.DotConfig(lhs=lpnum.OperandQuant("float8_e4m3fn", granularity=lpnum.per_channel()), rhs="mxfp8_e4m3")
  y = lpnum.dot_general(a, b, DN, cfg)
  import mx_reference
  qb = mx_reference.mx_quantize(b, "mxfp8_e4m3", axis=0)[2]
  qa = ref_fp8(a, ml_dtypes.float8_e4m3fn, (1, 64))
  np.testing.assert_allclose(np.asarray(y), _matmul64(qa, qb), rtol=2e-6, atol=2e-6)


@pytest.mark.parametrize("transform", TRANSFORMS.values(), ids=TRANSFORMS.keys())
def test_int_backend_is_exact_integer_arithmetic(transform):
  a, b = _data((5, 40), 5), _data((40, 7), 6)
  y = transform(lambda x, w: lpnum.dot_general(x, w, DN, lpnum.DotConfig.w8a8()))(a, b)
  ca, sa = _codes(a, 8, (1, 40))
  cb, sb = _codes(b, 8, (40, 1))
  acc = ca.astype(np.int64) @ cb.astype(np.int64)
  expect = (acc.astype(F32) * sa.reshape(5, 1)).astype(F32) * sb.reshape(1, 7)
  np.testing.assert_array_equal(np.asarray(y), expect.astype(F32))


def _dots(f, *args):
  txt = jax.jit(f).lower(*args).as_text()
  return re.findall(r"dot_general[^\n]*?: \((tensor<[^>]*>), (tensor<[^>]*>)\) -> (tensor<[^>]*>)", txt)


def test_w8a8_runs_int8_dots_forward_and_backward():
  """No silent fallback: every matmul of a W8A8 layer, forward and both backward, is int8 x int8 -> int32."""
  model = lnn.quantize_model(nn.Dense(16), lpnum.DotConfig.w8a8())
  x = _data((4, 32), 7)
  params = model.init(jax.random.key(0), x)["params"]
  loss = lambda p, v: jnp.sum(model.apply({"params": p}, v) ** 2)
  dots = _dots(jax.grad(loss, argnums=(0, 1)), params, x)
  assert len(dots) == 3
  for lhs, rhs, out in dots:
    assert lhs.endswith("xi8>") and rhs.endswith("xi8>") and out.endswith("xi32>"), (lhs, rhs, out)


def test_fp8_int_backend_runs_fp8_dots():
  e4m3 = lpnum.OperandQuant("float8_e4m3fn", granularity=lpnum.per_channel())
  grad = lpnum.BackwardQuant(grad=lpnum.OperandQuant("float8_e5m2", granularity=lpnum.per_channel()), operand=e4m3)
  cfg = lpnum.DotConfig(lhs=e4m3, rhs=e4m3, dlhs=grad, drhs=grad, engine="int")
  a, b = _data((4, 32), 8), _data((32, 8), 9)
  dots = _dots(jax.grad(lambda x, w: jnp.sum(lpnum.dot_general(x, w, DN, cfg) ** 2), argnums=(0, 1)), a, b)
  assert len(dots) == 3
  for lhs, rhs, out in dots:
    assert "f8E" in lhs and "f8E" in rhs and out.endswith("xf32>"), (lhs, rhs, out)
  y = lpnum.dot_general(a, b, DN, cfg)
  qa, qb = ref_fp8(a, ml_dtypes.float8_e4m3fn, (1, 32)), ref_fp8(b, ml_dtypes.float8_e4m3fn, (32, 1))
  np.testing.assert_allclose(np.asarray(y), _matmul64(qa, qb), rtol=2e-6, atol=2e-6)


def test_batched_and_multi_axis_contractions():
  """Attention-shaped (batch axes) and DenseGeneral-shaped (two contracting axes) products."""
  q, k = _data((2, 3, 5, 8), 10), _data((2, 3, 6, 8), 11)
  cfg = lpnum.DotConfig(lhs="int8", rhs="int8")
  y = lpnum.dot_general(q, k, (((3,), (3,)), ((0, 1), (0, 1))), cfg)
  assert y.shape == (2, 3, 5, 6)
  for i in range(2):
    for h in range(3):
      expect = _matmul64(ref_int(q[i, h], 8, (5, 8))[0], ref_int(k[i, h].T, 8, (8, 6))[0])
      np.testing.assert_allclose(np.asarray(y[i, h]), expect, rtol=2e-6, atol=2e-6)
  x, w = _data((4, 3, 5), 12), _data((3, 5, 7), 13)
  y = lpnum.dot_general(x, w, (((1, 2), (0, 1)), ((), ())), cfg)
  expect = _matmul64(ref_int(x.reshape(4, 15), 8, (4, 15))[0], ref_int(w.reshape(15, 7), 8, (15, 7))[0])
  np.testing.assert_allclose(np.asarray(y), expect, rtol=2e-6, atol=2e-6)


@pytest.mark.parametrize("acc", [accumulate.IntAccumulator(12, "saturate"), accumulate.IntAccumulator(14, "wrap")])
def test_integer_accumulator_emulation(acc):
  a, b = _data((3, 64), 14) * 4, _data((64, 5), 15) * 4
  cfg = lpnum.DotConfig(lhs=lpnum.OperandQuant("int8", granularity=lpnum.per_channel()),
                        rhs=lpnum.OperandQuant("int8", granularity=lpnum.per_channel()), engine="int", accumulator=acc)
  y = lpnum.dot_general(a, b, DN, cfg)
  ca, sa = _codes(a, 8, (1, 64))
  cb, sb = _codes(b, 8, (64, 1))
  lo, hi = -2 ** (acc.bits - 1), 2 ** (acc.bits - 1) - 1
  s = np.zeros((3, 5), np.int64)
  for kk in range(64):  # sequential along K, the accumulator's documented order
    s = s + ca[:, kk:kk + 1].astype(np.int64) * cb[kk:kk + 1, :].astype(np.int64)
    s = np.clip(s, lo, hi) if acc.overflow == "saturate" else (s - lo) % 2 ** acc.bits + lo
  expect = (s.astype(F32) * sa.reshape(3, 1)).astype(F32) * sb.reshape(1, 5)
  np.testing.assert_array_equal(np.asarray(y), expect)
  exact = _matmul64(ca, cb)
  assert np.any(s != exact), "the test data must overflow the narrow accumulator"


def test_float_accumulator_emulation_matches_its_reference():
  a, b = _data((3, 32), 16), _data((32, 4), 17)
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
  a, b = _data((4, 16), 18), _data((16, 3), 19)
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
  y = lpnum.dot_general(np.zeros((0, 8), F32), _data((8, 3), 20), DN, cfg)
  assert y.shape == (0, 3)
  y = lpnum.dot_general(np.zeros((2, 8), F32), np.zeros((8, 3), F32), DN, cfg)
  assert np.all(np.isfinite(y)) and not np.any(y)


# ---- the backward matmuls ----------------------------------------------------------------------------------------
def test_fp8_recipe_gradients_match_numpy():
  """dlhs = q_e5m2(g) @ q_e4m3(rhs).T and drhs = q_e4m3(lhs).T @ q_e5m2(g), per-tensor scales."""
  cfg = lpnum.DotConfig.fp8()
  a, b, g = _data((4, 16), 21), _data((16, 6), 22), _data((4, 6), 23)
  _, vjp = jax.vjp(lambda x, w: lpnum.dot_general(x, w, DN, cfg), a, b)
  da, db = vjp(jnp.asarray(g))
  qa, qb = ref_fp8(a, ml_dtypes.float8_e4m3fn, a.shape), ref_fp8(b, ml_dtypes.float8_e4m3fn, b.shape)
  qg = ref_fp8(g, ml_dtypes.float8_e5m2, g.shape)
  np.testing.assert_allclose(np.asarray(da), _matmul64(qg, qb.T), rtol=2e-6, atol=2e-6)
  np.testing.assert_allclose(np.asarray(db), _matmul64(qa.T, qg), rtol=2e-6, atol=2e-6)


def test_int8_backward_matmuls_match_numpy():
  cfg = lpnum.DotConfig.w8a8()
  a, b, g = _data((4, 16), 24), _data((16, 6), 25), _data((4, 6), 26)
  _, vjp = jax.vjp(lambda x, w: lpnum.dot_general(x, w, DN, cfg), a, b)
  da, db = vjp(jnp.asarray(g))
  # dlhs = g (4, 6) @ b.T (6, 16): g per row, b.T per column (= per row of b)
  np.testing.assert_allclose(np.asarray(da), _matmul64(ref_int(g, 8, (1, 6))[0], ref_int(b.T, 8, (6, 1))[0]),
                             rtol=2e-6, atol=2e-6)
  np.testing.assert_allclose(np.asarray(db), _matmul64(ref_int(a.T, 8, (1, 4))[0], ref_int(g, 8, (4, 1))[0]),
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
  a, b = _data((3, 4, 16), 27), _data((16, 5), 28)
  y = jax.vmap(lambda x: lpnum.dot_general(x, b, DN, cfg))(a)
  for i in range(3):
    np.testing.assert_array_equal(np.asarray(y[i]), np.asarray(lpnum.dot_general(a[i], b, DN, cfg)))


# ---- linen ---------------------------------------------------------------------------------------------------------
def test_delayed_scaling_history():
  cfg = lpnum.DotConfig(lhs=lpnum.OperandQuant("float8_e4m3fn", scaling="delayed", history=3))
  layer = nn.Dense(2, use_bias=False, dot_general_cls=functools.partial(lnn.linen.QuantDotGeneral, config=cfg))
  x1 = np.full((1, 4), 2.0, F32)
  v = layer.init(jax.random.key(0), x1)
  hist = v["quant_stats"]["QuantDotGeneral_0"]["lhs_amax_history"]
  assert hist.tolist() == [0.0, 0.0, 0.0]
  v = {**v, **layer.apply(v, x1, mutable=["quant_stats"])[1]}
  x2 = np.array([[448.0, 1.0, 3.0, 900.0]], F32)
  y, upd = layer.apply(v, x2, mutable=["quant_stats"])
  assert upd["quant_stats"]["QuantDotGeneral_0"]["lhs_amax_history"].tolist() == [900.0, 2.0, 0.0]
  # x2 was scaled by the history's amax (2.0), not its own: 900 and 448 saturate at 2.0.
  w = np.asarray(v["params"]["kernel"])
  s = F32(2.0) / F32(448.0)
  qx = np.clip(x2 / s, -448, 448).astype(ml_dtypes.float8_e4m3fn).astype(F32) * s
  np.testing.assert_allclose(np.asarray(y), _matmul64(qx, w), rtol=2e-6, atol=2e-6)
  frozen = layer.apply(v, x2)  # quant_stats immutable: no update, same scale
  np.testing.assert_array_equal(np.asarray(frozen), np.asarray(y))


def test_static_calibration_over_batches():
  cfg = lpnum.DotConfig(lhs=lpnum.OperandQuant("int8", scaling="static"), rhs="int8")
  model = lnn.quantize_model(nn.Sequential([nn.Dense(4), nn.Dense(3)]), cfg)
  batches = [_data((2, 5), s) for s in range(3)]
  v = model.init(jax.random.key(0), batches[0])
  v = model.calibrate(v, batches)
  got = v["quant_stats"]["layers_0"]["QuantDotGeneral_0"]["lhs_amax"]
  assert float(got) == max(float(np.abs(b).max()) for b in batches)
  with pytest.raises(ValueError, match="batches is empty"):
    model.calibrate(v, [])


def test_linen_stochastic_rounding_uses_quant_rng():
  cfg = lpnum.DotConfig(lhs=lpnum.OperandQuant("int4", rounding="stochastic"))
  layer = nn.Dense(3, dot_general_cls=functools.partial(lnn.linen.QuantDotGeneral, config=cfg))
  x = _data((2, 8), 29)
  v = layer.init({"params": jax.random.key(0), "quant": jax.random.key(1)}, x)
  y1 = layer.apply(v, x, rngs={"quant": jax.random.key(5)})
  assert np.array_equal(y1, layer.apply(v, x, rngs={"quant": jax.random.key(5)}))
  assert not np.array_equal(y1, layer.apply(v, x, rngs={"quant": jax.random.key(6)}))


def test_plain_dot_general_hook():
  cfg = lpnum.DotConfig(lhs="int8", rhs=lpnum.OperandQuant("int4", granularity=lpnum.per_channel()))
  layer = nn.Dense(3, dot_general=lnn.make_dot_general(cfg))
  x = _data((2, 8), 30)
  v = layer.init(jax.random.key(0), x)
  w, bias = np.asarray(v["params"]["kernel"]), np.asarray(v["params"]["bias"])
  expect = _matmul64(ref_int(x, 8, x.shape)[0], ref_int(w, 4, (8, 1))[0]) + bias
  np.testing.assert_allclose(np.asarray(layer.apply(v, x)), expect, rtol=2e-6, atol=2e-6)


def test_conv_quantized_matches_reference_conv():
  cfg = lpnum.DotConfig(lhs="int8", rhs=lpnum.OperandQuant("int8", granularity=lpnum.per_channel()),
                        dlhs=lpnum.BackwardQuant(grad="float8_e5m2"))
  conv = nn.Conv(4, (3, 3), feature_group_count=2,
                 conv_general_dilated_cls=functools.partial(lnn.linen.QuantConv, config=cfg))
  x = _data((2, 6, 6, 4), 31)
  v = conv.init(jax.random.key(0), x)
  w = np.asarray(v["params"]["kernel"])
  qx = ref_int(x, 8, x.shape)[0]
  qw = ref_int(w.reshape(-1, 4), 8, (w.size // 4, 1))[0].reshape(w.shape)
  ref = nn.Conv(4, (3, 3), feature_group_count=2).apply({"params": {"kernel": qw, "bias": v["params"]["bias"]}}, qx)
  np.testing.assert_allclose(np.asarray(conv.apply(v, x)), np.asarray(ref), rtol=1e-5, atol=1e-5)
  gx = jax.grad(lambda z: conv.apply(v, z).sum())(x)
  # dlhs: the all-ones cotangent is exactly representable in E5M2, so it equals the float conv's transpose.
  gref = jax.grad(lambda z: nn.Conv(4, (3, 3), feature_group_count=2).apply(
      {"params": {"kernel": qw, "bias": v["params"]["bias"]}}, z).sum())(qx)
  np.testing.assert_allclose(np.asarray(gx), np.asarray(gref), rtol=1e-5, atol=1e-5)


def test_conv1d_stateless_hook_matches_reference():
  cfg = lpnum.DotConfig(lhs=lpnum.OperandQuant("float8_e4m3fn", granularity=lpnum.per_channel()),
                        rhs=lpnum.OperandQuant("int4", granularity=lpnum.per_channel()))
  conv = nn.Conv(3, (5,), strides=2, conv_general_dilated=lnn.make_conv_general_dilated(cfg))
  x = _data((2, 12, 4), 36)
  v = conv.init(jax.random.key(0), x)
  w = np.asarray(v["params"]["kernel"])
  qx = ref_fp8(x.reshape(-1, 4), ml_dtypes.float8_e4m3fn, (1, 4)).reshape(x.shape)
  qw = ref_int(w.reshape(-1, 3), 4, (w.size // 3, 1))[0].reshape(w.shape)
  ref = nn.Conv(3, (5,), strides=2).apply({"params": {"kernel": qw, "bias": v["params"]["bias"]}}, qx)
  np.testing.assert_allclose(np.asarray(conv.apply(v, x)), np.asarray(ref), rtol=1e-5, atol=1e-5)
  with pytest.raises(ValueError, match="QuantConv supports engine='fake'"):
    nn.Conv(3, (5,), conv_general_dilated=lnn.make_conv_general_dilated(lpnum.DotConfig.w8a8())).init(
        jax.random.key(0), x)


# ---- rules ---------------------------------------------------------------------------------------------------------
class _Net(nn.Module):
  @nn.compact
  def __call__(self, x):
    x = nn.relu(nn.Dense(16)(x))
    x = nn.relu(nn.Dense(16)(x))
    return nn.Dense(3, name="head")(x)


def _net_reference(params, x, wbits):
  """The same network with numpy matmuls and the first two kernels int-quantized per channel."""
  for name in ("Dense_0", "Dense_1"):
    w = np.asarray(params[name]["kernel"])
    x = np.maximum(_matmul64(x, ref_int(w, wbits, (w.shape[0], 1))[0]) + params[name]["bias"], 0).astype(F32)
  return _matmul64(x, np.asarray(params["head"]["kernel"])) + params["head"]["bias"]


def test_rules_quantize_all_but_last():
  rules = [lnn.Rule("head", None), lnn.Rule("Dense_.*", lpnum.DotConfig.weight_only("int4"))]
  model = lnn.quantize_model(_Net(), rules)
  x = _data((4, 10), 32)
  v = model.init(jax.random.key(0), x)
  y = jax.jit(model.apply)(v, x)
  np.testing.assert_allclose(np.asarray(y), _net_reference(v["params"], x, 4), rtol=1e-5, atol=1e-5)


def test_rule_matching_nothing_is_an_error():
  model = lnn.quantize_model(_Net(), [lnn.Rule("Dense_.*", lpnum.DotConfig.fp8()), lnn.Rule("Conv_0", None)])
  with pytest.raises(ValueError, match="'Conv_0' matches no quantizable layer"):
    model.init(jax.random.key(0), _data((1, 4), 0))
  with pytest.raises(TypeError, match="model must be"):
    lnn.quantize_model(object(), lpnum.DotConfig.fp8())
  with pytest.raises(TypeError, match="rules="):
    lnn.quantize_model(_Net(), "Dense_0")
  with pytest.raises(ValueError, match="pattern="):
    lnn.Rule("(", None)


# ---- nnx -----------------------------------------------------------------------------------------------------------
class _NnxNet(nnx.Module):
  def __init__(self, rngs):
    self.l1 = nnx.Linear(10, 16, rngs=rngs)
    self.l2 = nnx.Linear(16, 16, rngs=rngs)
    self.head = nnx.Linear(16, 3, rngs=rngs)

  def __call__(self, x):
    return self.head(nnx.relu(self.l2(nnx.relu(self.l1(x)))))


def test_nnx_rules_match_linen_reference():
  net = _NnxNet(nnx.Rngs(0))
  params = {"Dense_0": {"kernel": net.l1.kernel[...], "bias": net.l1.bias[...]},
            "Dense_1": {"kernel": net.l2.kernel[...], "bias": net.l2.bias[...]},
            "head": {"kernel": net.head.kernel[...], "bias": net.head.bias[...]}}
  lnn.quantize_model(net, [lnn.Rule("head", None), lnn.Rule("l[12]", lpnum.DotConfig.weight_only("int4"))])
  x = _data((4, 10), 33)
  y = nnx.jit(lambda m, v: m(v))(net, x)
  np.testing.assert_allclose(np.asarray(y), _net_reference(params, x, 4), rtol=1e-5, atol=1e-5)
  with pytest.raises(ValueError, match="'nothing'"):
    lnn.quantize_model(_NnxNet(nnx.Rngs(0)), [lnn.Rule("nothing", None)])


def test_nnx_delayed_scaling_and_grad():
  cfg = lpnum.DotConfig(lhs=lpnum.OperandQuant("float8_e4m3fn", scaling="delayed", history=2), rhs="float8_e4m3fn",
                        dlhs=lpnum.BackwardQuant(grad="float8_e5m2"))
  layer = nnx.Linear(4, 2, dot_general=lnn.nnx.QuantDotGeneral(cfg), rngs=nnx.Rngs(0))
  layer(np.full((1, 4), 3.0, F32))
  layer(np.full((1, 4), 5.0, F32))
  assert layer.dot_general.lhs_amax_history[...].tolist() == [5.0, 3.0]
  lnn.nnx.set_update_stats(layer, False)
  layer(np.full((1, 4), 7.0, F32))
  assert layer.dot_general.lhs_amax_history[...].tolist() == [5.0, 3.0]
  grads = nnx.grad(lambda m: m(np.ones((1, 4), F32)).sum())(layer)
  assert grads["kernel"][...].shape == (4, 2)
  with pytest.raises(ValueError, match="rngs="):
    lnn.nnx.QuantDotGeneral(lpnum.DotConfig(lhs=lpnum.OperandQuant("int8", rounding="stochastic")))
  with pytest.raises(TypeError, match="value="):
    lnn.nnx.set_update_stats(layer, 1)


# ---- PTQ -----------------------------------------------------------------------------------------------------------
def _mlp_params(k=512, hidden=256, out=10):
  model = nn.Sequential([nn.Dense(hidden), nn.relu, nn.Dense(out)])
  return model, model.init(jax.random.key(0), np.ones((1, k), F32))["params"]


@pytest.mark.parametrize("fmt,gran,wbits", [("int8", "channel", 8), ("int4", "channel", 4), ("int4", 128, 4),
                                            ("mxfp4_e2m1", None, 4.25), ("nvfp4", None, 4.5),
                                            ("float8_e4m3fn", "channel", 8)])
def test_ptq_bytes_and_inference(fmt, gran, wbits):
  model, params = _mlp_params()
  cfg = lpnum.DotConfig.weight_only(fmt, {"channel": lpnum.per_channel(), 128: lpnum.per_block(128), None: None}[gran])
  q = lnn.ptq(params, [lnn.Rule("layers_0", cfg), lnn.Rule("layers_2", None)])
  assert isinstance(q["layers_0"]["kernel"], lnn.QuantizedKernel)
  assert not isinstance(q["layers_2"]["kernel"], lnn.QuantizedKernel)
  kernel_bytes = q["layers_0"]["kernel"].nbytes
  n_scales = {"channel": 256, 128: 4 * 256}.get(gran, 0)
  ideal = 512 * 256 * wbits / 8 + 4 * n_scales
  assert kernel_bytes <= 1.01 * ideal, (kernel_bytes, ideal)
  x = _data((3, 512), 34)
  qmodel = lnn.quantize_model(model, [lnn.Rule("layers_0", cfg), lnn.Rule("layers_2", None)])
  y = jax.jit(qmodel.apply)({"params": q}, x)
  wq = np.asarray(lnn.dequantize_kernel(q["layers_0"]["kernel"].unbox()))
  ref = model.apply({"params": {**params, "layers_0": {**params["layers_0"], "kernel": wq}}}, x)
  np.testing.assert_allclose(np.asarray(y), np.asarray(ref), rtol=1e-5, atol=1e-5)


def test_ptq_dequantized_kernel_matches_independent_reference():
  _, params = _mlp_params(64, 32, 8)
  q = lnn.ptq(params, [lnn.Rule(".*", lpnum.DotConfig.weight_only("int8"))], layout="qarray")
  w = np.asarray(params["layers_0"]["kernel"])
  np.testing.assert_array_equal(np.asarray(lnn.dequantize_kernel(q["layers_0"]["kernel"].unbox())),
                                ref_int(w, 8, (64, 1))[0])


def test_ptq_checkpoint_round_trip_is_bit_exact_and_small(tmp_path):
  _, params = _mlp_params()
  rules = [lnn.Rule(".*", lpnum.DotConfig.weight_only("int4"))]
  q = lnn.ptq(params, rules)
  blob = serialization.to_bytes(q)
  assert len(blob) < 1.02 * lnn.params_nbytes(q) < 0.14 * lnn.params_nbytes(params)
  target = jax.eval_shape(lambda p: lnn.ptq(p, rules), params)
  restored = serialization.from_bytes(target, blob)
  for a, b in zip(jax.tree_util.tree_leaves(restored), jax.tree_util.tree_leaves(q)):
    assert a.dtype == b.dtype and np.array_equal(np.asarray(a), np.asarray(b))
  ocp = pytest.importorskip("orbax.checkpoint")
  with ocp.StandardCheckpointer() as ckpt:
    ckpt.save(tmp_path / "ckpt", q)
  with ocp.StandardCheckpointer() as ckpt:
    back = ckpt.restore(tmp_path / "ckpt", target)
  for a, b in zip(jax.tree_util.tree_leaves(back), jax.tree_util.tree_leaves(q)):
    assert np.array_equal(np.asarray(a), np.asarray(b))


def test_ptq_peak_memory_with_donation():
  """ptq holds at most the float tree plus one packed kernel: with donate=True the float kernels are freed as
  they are packed, so live bytes never exceed the float tree's by more than the largest packed kernel."""
  def make():
    model = nn.Sequential([nn.Dense(512), nn.relu, nn.Dense(512), nn.relu, nn.Dense(512)])
    return jax.jit(model.init)(jax.random.key(0), jnp.ones((1, 512)))["params"]

  base = sum(a.nbytes for a in jax.live_arrays())
  params = make()
  float_bytes = lnn.params_nbytes(params)
  peaks = []
  q = lnn.ptq(params, [lnn.Rule(".*", lpnum.DotConfig.weight_only("int8"))], donate=True,
              on_leaf=lambda _: peaks.append(sum(a.nbytes for a in jax.live_arrays()) - base))
  assert len(peaks) == 3
  packed = max(k.nbytes for k in jax.tree_util.tree_leaves(q, is_leaf=lambda a: isinstance(a, lnn.QuantizedKernel))
               if isinstance(k, lnn.QuantizedKernel))
  assert max(peaks) <= float_bytes + packed + 64 * 1024, (peaks, float_bytes)
  assert peaks[-1] < 0.4 * float_bytes  # every float kernel is gone by the end


def test_ptq_w8a8_inference_runs_int8_dots():
  model, params = _mlp_params(256, 128, 8)
  rules = [lnn.Rule(".*", lpnum.DotConfig.w8a8(backward=False))]
  q = lnn.ptq(params, rules)
  x = _data((4, 256), 37)
  qmodel = lnn.quantize_model(model, rules)
  dots = _dots(lambda p, v: qmodel.apply({"params": p}, v), q, x)
  assert len(dots) == 2 and all(d[0].endswith("xi8>") and d[1].endswith("xi8>") and d[2].endswith("xi32>")
                                for d in dots), dots
  y = qmodel.apply({"params": q}, x)
  fake = lnn.quantize_model(model, rules).apply({"params": params}, x)
  np.testing.assert_allclose(np.asarray(y), np.asarray(fake), rtol=1e-5, atol=1e-5)


def test_params_not_matching_the_model_name_the_path():
  model, params = _mlp_params(64, 32, 8)
  rules = [lnn.Rule(".*", lpnum.DotConfig.weight_only("int8"))]
  q = lnn.ptq(params, rules)
  x = _data((2, 64), 38)
  with pytest.raises(ValueError, match="layers_2/kernel hold a packed kernel"):
    lnn.quantize_model(model, [lnn.Rule("layers_0", rules[0].config), lnn.Rule("layers_2", None)]).apply(
        {"params": q}, x)
  bad = {**params, "layers_2": {**params["layers_2"], "kernel": np.ones((31, 8), F32)}}
  with pytest.raises(Exception, match="layers_2"):
    lnn.quantize_model(model, rules).apply({"params": bad}, x)


def test_ptq_conv_multiplies_by_the_packed_values_once():
  """A percentile-calibrated kernel is not idempotent under quantization: the PTQ'd conv must use the packed values
  as they are, not quantize them again."""
  cfg = lpnum.DotConfig(rhs=lpnum.OperandQuant(lpnum.ScaledFormat("int8", calibration=lpnum.percentile(90.0)),
                                            granularity=lpnum.per_channel()))
  conv = nn.Conv(4, (3, 3))
  x = _data((2, 6, 6, 3), 39)
  params = conv.init(jax.random.key(0), x)["params"]
  q = lnn.ptq(params, [lnn.Rule(".*", cfg)])
  wq = np.asarray(lnn.dequantize_kernel(q["kernel"].unbox()))
  got = lnn.quantize_model(conv, [lnn.Rule(".*", cfg)]).apply({"params": q}, x)
  want = conv.apply({"params": {"kernel": wq, "bias": params["bias"]}}, x)
  np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-5)


def test_kernel_views_and_bad_views():
  attention = nn.MultiHeadDotProductAttention(num_heads=2, qkv_features=8)
  x = _data((1, 3, 8), 40)
  assert lnn.kernel_views(attention, x) == {"query": 1, "key": 1, "value": 1, "out": 2}
  assert lnn.kernel_views(nn.Conv(2, (3,)), _data((1, 5, 2), 41)) == {"": 2}
  net = _NnxNet(nnx.Rngs(0))
  assert lnn.kernel_views(net) == {"l1": 1, "l2": 1, "head": 1}
  params = attention.init(jax.random.key(0), x)["params"]
  with pytest.raises(ValueError, match="views"):
    lnn.ptq(params, lpnum.DotConfig.weight_only(), views={"out": 3})
  with pytest.raises(TypeError, match="model must be"):
    lnn.kernel_views("model")


def test_ptq_bad_inputs():
  _, params = _mlp_params(64, 32, 8)
  with pytest.raises(ValueError, match="'nope' matches no kernel"):
    lnn.ptq(params, [lnn.Rule("nope", lpnum.DotConfig.weight_only())])
  with pytest.raises(ValueError, match="layout="):
    lnn.ptq(params, lpnum.DotConfig.weight_only(), layout="tiles")
  bad = {"dense": {"kernel": np.ones((3,), F32)}}
  with pytest.raises(ValueError, match="dense/kernel"):
    lnn.ptq(bad, lpnum.DotConfig.weight_only())


def test_ptq_nnx_runs_from_packed_weights():
  net = _NnxNet(nnx.Rngs(0))
  x = _data((2, 10), 35)
  w1 = np.asarray(net.l1.kernel[...])
  rules = [lnn.Rule("l1", lpnum.DotConfig.weight_only("int8")), lnn.Rule(".*", None)]
  lnn.ptq_nnx(net, rules)
  assert isinstance(net.l1.kernel[...], PackedKernel)
  y = net(x)
  params = {"Dense_0": {"kernel": w1, "bias": net.l1.bias[...]},
            "Dense_1": {"kernel": net.l2.kernel[...], "bias": net.l2.bias[...]},
            "head": {"kernel": net.head.kernel[...], "bias": net.head.bias[...]}}
  np.testing.assert_allclose(np.asarray(y), _net_reference_first(params, x), rtol=1e-5, atol=1e-5)


def _net_reference_first(params, x):
  w = np.asarray(params["Dense_0"]["kernel"])
  x = np.maximum(_matmul64(x, ref_int(w, 8, (w.shape[0], 1))[0]) + params["Dense_0"]["bias"], 0).astype(F32)
  x = np.maximum(_matmul64(x, np.asarray(params["Dense_1"]["kernel"])) + params["Dense_1"]["bias"], 0).astype(F32)
  return _matmul64(x, np.asarray(params["head"]["kernel"])) + params["head"]["bias"]


# ---- QAT with every estimator ----------------------------------------------------------------------------------
QAT_WEIGHTS = {
    "ste": lpnum.OperandQuant("int4", granularity=lpnum.per_channel()),
    "clipped_ste": lpnum.OperandQuant(lpnum.ScaledFormat("int4", calibration=lpnum.percentile(99.0)),
                                   estimator=lpnum.estimators.ClippedSTE()),
    "hadamard_ste": lpnum.OperandQuant("int4", estimator=lpnum.estimators.HadamardSTE()),
    "lsq": lpnum.OperandQuant("int4", estimator=lpnum.estimators.LSQ()),
    "dorefa_weight": lpnum.OperandQuant(None, estimator=lpnum.estimators.DoReFaWeight(bits=4)),
    "xnor": lpnum.OperandQuant(None, estimator=lpnum.estimators.XNOR()),
    "sign_ste": lpnum.OperandQuant("binary", estimator=lpnum.estimators.SignSTE()),
    "reste": lpnum.OperandQuant(None, estimator=lpnum.estimators.ReSTE()),
    "biper": lpnum.OperandQuant(None, estimator=lpnum.estimators.BiPer()),
    "bitnet_ternary": lpnum.OperandQuant("ternary", estimator=lpnum.estimators.BitNetTernary()),
    "denseshift": lpnum.OperandQuant(None, estimator=lpnum.estimators.DenseShift(bits=4)),
}


def _qat_losses(rules, steps=60):
  import optax

  rng = np.random.default_rng(0)
  x = rng.standard_normal((128, 16)).astype(F32)
  y = (x @ rng.standard_normal((16, 4)) > 0).argmax(-1)
  model = lnn.quantize_model(nn.Sequential([nn.Dense(32), nn.relu, nn.Dense(4)]), rules)
  params = model.init(jax.random.key(0), x)["params"]
  opt = optax.adam(1e-2)

  @jax.jit
  def step(p, s):
    loss, g = jax.value_and_grad(
        lambda q: optax.softmax_cross_entropy_with_integer_labels(model.apply({"params": q}, x), y).mean())(p)
    u, s = opt.update(g, s, p)
    return optax.apply_updates(p, u), s, loss

  state, losses = opt.init(params), []
  for _ in range(steps):
    params, state, loss = step(params, state)
    losses.append(float(loss))
  return params, losses


QAT_QUICK = ("ste", "lsq", "xnor", "bitnet_ternary", "denseshift")


@pytest.mark.parametrize("name", [pytest.param(n, marks=() if n in QAT_QUICK else pytest.mark.slow)
                                  for n in QAT_WEIGHTS])
def test_qat_with_every_weight_estimator_learns(name):
  """Every estimator of lpnum.estimators trains a small classifier with optax (loss falls by a third)."""
  params, losses = _qat_losses(lpnum.DotConfig(rhs=QAT_WEIGHTS[name]))
  assert np.isfinite(losses).all() and losses[-1] < 0.67 * losses[0], losses[::10]
  if name == "lsq":
    assert "rhs_step" in params["layers_0"]["QuantDotGeneral_0"]


def test_qat_with_pact_activations_learns_the_clip():
  hidden = lpnum.DotConfig(lhs=lpnum.OperandQuant(None, estimator=lpnum.estimators.PACT(bits=4, alpha=2.0)))
  params, losses = _qat_losses([lnn.Rule("layers_0", None), lnn.Rule("layers_2", hidden)])
  assert losses[-1] < 0.67 * losses[0]
  assert float(params["layers_2"]["QuantDotGeneral_0"]["lhs_alpha"]) != 2.0
