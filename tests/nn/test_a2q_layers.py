"""lpnum.nn.a2q_layers: the A2Q Dense layer, against its own integer reference and the accumulator bound."""

from __future__ import annotations


import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from lpnum.kernels import accumulate
from lpnum.nn.a2q_layers import A2QDense

from scaled_reference import ref_int
from testing import F32, data, matmul64



# ---- A2Q layers ------------------------------------------------------------------------------------------------------
def _worst_case_inputs(q: np.ndarray, bits: int) -> np.ndarray:
  """For each output channel, the two signed bits-bit inputs that drive its dot product to the extremes."""
  lo, hi = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
  pos = np.where(q.T > 0, hi, lo)  # (features, K): +hi * q > 0, lo * q < 0 -> the largest sum
  neg = np.where(q.T > 0, lo, hi)
  return np.concatenate([pos, neg]).astype(np.int8)


def _overflows(x_int: np.ndarray, q: np.ndarray, bits: int) -> bool:
  got = np.asarray(accumulate.matmul(jnp.asarray(x_int), jnp.asarray(q.astype(np.int8)),
                                     accumulate.IntAccumulator(bits, "wrap")))
  return not np.array_equal(got, x_int.astype(np.int64) @ q.astype(np.int64))


def test_a2q_dense_training_keeps_the_accumulator_bound():
  n_in, features, wbits, ibits, pbits = 32, 8, 8, 8, 16
  layer = A2QDense(features, weight_bits=wbits, input_bits=ibits, accumulator_bits=pbits)
  rng = np.random.default_rng(21)
  x = rng.standard_normal((64, n_in)).astype(F32)
  target = (x @ (rng.standard_normal((n_in, features)) * 0.5)).astype(F32)
  params = layer.init(jax.random.key(0), x)["params"]
  assert set(params) == {"v", "g", "log2_scale", "bias"}
  opt = optax.adam(3e-2)

  @jax.jit
  def step(p, s):
    loss, g = jax.value_and_grad(lambda q: jnp.mean((layer.apply({"params": q}, x) - target) ** 2))(p)
    updates, s = opt.update(g, s, p)
    return optax.apply_updates(p, updates), s, loss

  state, losses = opt.init(params), []
  for _ in range(25):
    params, state, loss = step(params, state)
    losses.append(float(loss))
  assert losses[-1] < 0.85 * losses[0], losses
  q = np.asarray(layer.apply({"params": params}, method=layer.integer_weights)).astype(np.int64)
  bound = accumulate.a2q_bound(ibits, pbits)
  l1 = np.abs(q).sum(0)
  assert np.all(l1 <= bound), (l1, bound)
  assert l1.max() > 0.9 * bound  # the bound binds: the check is not vacuous
  x_int = _worst_case_inputs(q, ibits)
  assert not _overflows(x_int, q, pbits)
  # The same float kernel quantized per channel to int8 without A2Q does overflow the 16-bit accumulator.
  scale = np.exp2(np.asarray(params["log2_scale"], np.float64)).astype(F32)
  w = scale * q
  plain = ref_int(w, 8, (n_in, 1))[1].reshape(w.shape).astype(np.int64)
  assert _overflows(_worst_case_inputs(plain, ibits), plain, pbits)
  # The layer is the integer matmul of ibits-bit inputs (ref_int, per tensor) with q, scaled.
  xq = ref_int(x, ibits, x.shape)[0]
  expect = matmul64(xq, scale * q) + np.asarray(params["bias"])
  np.testing.assert_allclose(np.asarray(layer.apply({"params": params}, x)), expect, rtol=1e-5, atol=1e-5)


def test_a2q_dense_unsigned_inputs():
  layer = A2QDense(4, weight_bits=4, input_bits=4, accumulator_bits=12, signed_input=False, use_bias=False)
  x = np.abs(data((3, 16), 22))
  params = layer.init(jax.random.key(0), x)["params"]
  assert "bias" not in params
  q = np.asarray(layer.apply({"params": params}, method=layer.integer_weights)).astype(np.int64)
  assert np.all(np.abs(q).sum(0) <= accumulate.a2q_bound(4, 12, signed_input=False))
  scale = F32(np.abs(x).max() / 15)
  xq = np.clip(np.round(x / scale), 0, 15) * scale
  y = layer.apply({"params": params}, np.concatenate([x, -x]))
  scale = np.exp2(np.asarray(params["log2_scale"], np.float64)).astype(F32)
  np.testing.assert_allclose(np.asarray(y[:3]), matmul64(xq, scale * q), rtol=1e-5,
                             atol=1e-5)
  np.testing.assert_array_equal(np.asarray(y[3:]), 0.0)  # negative inputs clip to 0


@pytest.mark.parametrize("kwargs,exc,match", [
    (dict(features=0), ValueError, "features="), (dict(weight_bits=1), ValueError, "weight_bits="),
    (dict(input_bits=17), ValueError, "input_bits="), (dict(input_bits=1), ValueError, "input_bits="),
    (dict(accumulator_bits=1), ValueError, "accumulator_bits="),
    (dict(accumulator_bits=8), ValueError, "accumulator_bits=8"),
    (dict(signed_input="yes"), TypeError, "signed_input="),
])
def test_a2q_dense_rejects(kwargs, exc, match):
  with pytest.raises(exc, match=match):
    A2QDense(**{"features": 4, **kwargs})


def test_a2q_dense_rejects_integer_inputs():
  with pytest.raises(TypeError, match="inputs"):
    A2QDense(2).init(jax.random.key(0), np.ones((1, 4), np.int32))

