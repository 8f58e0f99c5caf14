"""Unit-scaled linen layers: unit-variance initialization, the layers against the core ops and against
independent float64 / ml_dtypes references, and which matmuls the FP8 config casts."""

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest

from lpnum import unit_scaling as us
from lpnum.nn.unit_scaling import UnitDense, UnitEmbed, UnitLayerNorm, UnitSelfAttention
from testing import data


def test_unit_dense_initializes_unit_variance_and_matches_linear():
  x = data((64, 128), 0)
  layer = UnitDense(256)
  variables = jax.jit(layer.init)(jax.random.key(0), x)
  kernel, bias = variables["params"]["kernel"], variables["params"]["bias"]
  assert float(jnp.std(kernel)) == pytest.approx(1.0, abs=0.02) and not np.any(bias)
  np.testing.assert_allclose(layer.apply(variables, x), (128 * 256) ** -0.25 * (x.astype(np.float64) @ kernel),
                             rtol=1e-5, atol=1e-5)
  head = UnitDense(256, constraint=None)
  np.testing.assert_allclose(head.apply(variables, x), 128 ** -0.5 * (x.astype(np.float64) @ kernel), rtol=1e-5,
                             atol=1e-5)


def test_unit_dense_with_fp8_cast_matches_ml_dtypes():
  x, g = data((8, 16), 1), data((8, 4), 2)
  layer = UnitDense(4, use_bias=False, config=us.FP8_CAST)
  variables = layer.init(jax.random.key(1), x)
  kernel = np.asarray(variables["params"]["kernel"])
  y, pull = jax.vjp(lambda v: layer.apply(variables, v), x)
  e4m3 = lambda t: np.asarray(t).astype(ml_dtypes.float8_e4m3fn).astype(np.float64)
  e5m2 = lambda t: np.asarray(t).astype(ml_dtypes.float8_e5m2).astype(np.float64)
  scale = (16 * 4) ** -0.25
  np.testing.assert_allclose(y, scale * e4m3(x) @ e4m3(kernel), rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(pull(jnp.asarray(g))[0], scale * e5m2(g) @ e4m3(kernel).T, rtol=1e-5, atol=1e-6)


def test_unit_layer_norm_and_embed():
  x = data((4, 6), 3) * 3 + 2
  ln = UnitLayerNorm()
  variables = ln.init(jax.random.key(0), x)
  assert set(variables["params"]) == {"scale", "bias"}
  x64 = x.astype(np.float64)
  np.testing.assert_allclose(ln.apply(variables, x), (x64 - x64.mean(-1, keepdims=True)) / np.sqrt(
      x64.var(-1, keepdims=True) + 1e-6), rtol=1e-5, atol=1e-5)
  embed = UnitEmbed(100, 64)
  ids = jnp.arange(100).reshape(4, 25)
  variables = embed.init(jax.random.key(0), ids)
  table = variables["params"]["embedding"]
  assert float(jnp.std(table)) == pytest.approx(1.0, abs=0.03)
  np.testing.assert_array_equal(embed.apply(variables, ids), np.asarray(table)[np.asarray(ids)])


def test_unit_self_attention_is_projections_around_the_unit_scaled_op():
  x = data((2, 5, 8), 4)
  layer = UnitSelfAttention(num_heads=2)
  variables = layer.init(jax.random.key(0), x)
  p = variables["params"]
  assert set(p) == {"qkv", "out"} and p["qkv"]["kernel"].shape == (8, 24)
  qkv = us.linear(x, p["qkv"]["kernel"], p["qkv"]["bias"]).reshape(2, 5, 3, 2, 4)
  heads = us.scaled_dot_product_attention(qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]).reshape(2, 5, 8)
  expected = us.linear(heads, p["out"]["kernel"], p["out"]["bias"])
  np.testing.assert_allclose(layer.apply(variables, x), expected, rtol=1e-6, atol=1e-6)
  with pytest.raises(ValueError, match="num_heads=3 must divide the model width 8"):
    UnitSelfAttention(num_heads=3).init(jax.random.key(0), x)


def test_fp8_config_casts_the_attention_input():
  """With FP8_CAST the qkv projection's input is cast to E4M3: nudging E4M3 values by less than half an E4M3 step
  leaves the output unchanged, and changes it without the cast."""
  x = jnp.asarray(np.asarray(data((1, 4, 8), 5)).astype(ml_dtypes.float8_e4m3fn).astype(np.float32))
  layer = UnitSelfAttention(num_heads=2, config=us.FP8_CAST)
  variables = layer.init(jax.random.key(0), x)
  nudged = x * (1 + 2.0 ** -6)                  # an E4M3 step is 2^-3 relative: every value rounds back
  np.testing.assert_array_equal(layer.apply(variables, nudged), layer.apply(variables, x))
  plain = UnitSelfAttention(num_heads=2)
  assert not np.array_equal(plain.apply(variables, nudged), plain.apply(variables, x))
