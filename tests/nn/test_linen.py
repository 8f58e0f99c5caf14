"""lpnum.nn.linen: the quantized dot_general and conv modules in Flax's hooks, with their state."""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import ml_dtypes
import numpy as np
import pytest

import lpnum
from lpnum import nn as lnn

from scaled_reference import ref_fp8, ref_int
from testing import F32, data, matmul64


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
  np.testing.assert_allclose(np.asarray(y), matmul64(qx, w), rtol=2e-6, atol=2e-6)
  frozen = layer.apply(v, x2)  # quant_stats immutable: no update, same scale
  np.testing.assert_array_equal(np.asarray(frozen), np.asarray(y))


def test_static_calibration_over_batches():
  cfg = lpnum.DotConfig(lhs=lpnum.OperandQuant("int8", scaling="static"), rhs="int8")
  model = lnn.quantize_model(nn.Sequential([nn.Dense(4), nn.Dense(3)]), cfg)
  batches = [data((2, 5), s) for s in range(3)]
  v = model.init(jax.random.key(0), batches[0])
  v = model.calibrate(v, batches)
  got = v["quant_stats"]["layers_0"]["QuantDotGeneral_0"]["lhs_amax"]
  assert float(got) == max(float(np.abs(b).max()) for b in batches)
  with pytest.raises(ValueError, match="batches is empty"):
    model.calibrate(v, [])


def test_linen_stochastic_rounding_uses_quant_rng():
  cfg = lpnum.DotConfig(lhs=lpnum.OperandQuant("int4", rounding="stochastic"))
  layer = nn.Dense(3, dot_general_cls=functools.partial(lnn.linen.QuantDotGeneral, config=cfg))
  x = data((2, 8), 29)
  v = layer.init({"params": jax.random.key(0), "quant": jax.random.key(1)}, x)
  y1 = layer.apply(v, x, rngs={"quant": jax.random.key(5)})
  assert np.array_equal(y1, layer.apply(v, x, rngs={"quant": jax.random.key(5)}))
  assert not np.array_equal(y1, layer.apply(v, x, rngs={"quant": jax.random.key(6)}))


def test_plain_dot_general_hook():
  cfg = lpnum.DotConfig(lhs="int8", rhs=lpnum.OperandQuant("int4", granularity=lpnum.per_channel()))
  layer = nn.Dense(3, dot_general=lnn.make_dot_general(cfg))
  x = data((2, 8), 30)
  v = layer.init(jax.random.key(0), x)
  w, bias = np.asarray(v["params"]["kernel"]), np.asarray(v["params"]["bias"])
  expect = matmul64(ref_int(x, 8, x.shape)[0], ref_int(w, 4, (8, 1))[0]) + bias
  np.testing.assert_allclose(np.asarray(layer.apply(v, x)), expect, rtol=2e-6, atol=2e-6)


def test_conv_quantized_matches_reference_conv():
  cfg = lpnum.DotConfig(lhs="int8", rhs=lpnum.OperandQuant("int8", granularity=lpnum.per_channel()),
                        dlhs=lpnum.BackwardQuant(grad="float8_e5m2"))
  conv = nn.Conv(4, (3, 3), feature_group_count=2,
                 conv_general_dilated_cls=functools.partial(lnn.linen.QuantConv, config=cfg))
  x = data((2, 6, 6, 4), 31)
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
  x = data((2, 12, 4), 36)
  v = conv.init(jax.random.key(0), x)
  w = np.asarray(v["params"]["kernel"])
  qx = ref_fp8(x.reshape(2, -1), ml_dtypes.float8_e4m3fn, (1, 48)).reshape(x.shape)  # per_channel: per example
  qw = ref_int(w.reshape(-1, 3), 4, (w.size // 3, 1))[0].reshape(w.shape)
  ref = nn.Conv(3, (5,), strides=2).apply({"params": {"kernel": qw, "bias": v["params"]["bias"]}}, qx)
  np.testing.assert_allclose(np.asarray(conv.apply(v, x)), np.asarray(ref), rtol=1e-5, atol=1e-5)
