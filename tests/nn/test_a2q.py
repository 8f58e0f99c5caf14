"""A2Q (lpnum.nn.a2q): the integer weights meet the accumulator bound, the emulated P-bit accumulator never
overflows on worst-case inputs (while plain per-channel quantization of the same weights does), and the gradients
match an independent jnp expression of the straight-through formulas."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from lpnum.kernels.accumulate import IntAccumulator, a2q_bound, matmul
from lpnum.nn.a2q import a2q_init, a2q_integer_weights, a2q_limit, a2q_quantize

K = 2048
#: Nonzero inputs per output channel: sparse channels reach the bound with few large weights (so the worst case
#: comes close to the accumulator's range), dense ones are where plain quantization overflows.
NONZERO = (1, 3, 16, 128, 1024, K, K, K)


def _kernel(seed: int = 0) -> jax.Array:
  rng = np.random.default_rng(seed)
  w = rng.uniform(-1, 1, (K, len(NONZERO)))
  for j, n in enumerate(NONZERO):
    w[rng.permutation(K)[n:], j] = 0.0
  return jnp.asarray(w, jnp.float32)


def _kw(n, p, signed=True, m=8):
  return dict(weight_bits=m, input_bits=n, accumulator_bits=p, signed_input=signed)


def _worst_case(q: np.ndarray, n: int, signed: bool) -> np.ndarray:
  """Per channel, inputs that make every product as large (and as small) as the input range allows."""
  hi, lo = (2 ** (n - 1), -(2 ** (n - 1))) if signed else (2**n - 1, 0)
  rows = []
  for j in range(q.shape[1]):
    rows.append(np.where(q[:, j] >= 0, hi, lo))
    rows.append(np.where(q[:, j] >= 0, lo, hi))
  return np.stack(rows)


CASES = [(n, p, True) for n in (4, 8) for p in (12, 16, 20)] + [(8, 16, False), (4, 12, False)]


@pytest.mark.parametrize("n, p, signed", CASES)
def test_integer_l1_norm_within_bound(n, p, signed):
  bound = a2q_bound(n, p, signed_input=signed)
  kw = _kw(n, p, signed)
  w = _kernel(n * 100 + p)
  v, g, s = a2q_init(w, **kw)
  q = np.asarray(a2q_integer_weights(v, g, s, **kw), np.int64)
  assert np.abs(q).sum(0).max() <= bound
  np.testing.assert_array_equal(a2q_quantize(v, g, s, **kw), np.asarray(s) * q.astype(np.float32))
  # Arbitrary parameters: huge and negative norms, a conv-shaped kernel (norms over all axes but the last).
  rng = np.random.default_rng(p)
  v4 = jnp.asarray(rng.standard_normal((3, 3, 16, 6)), jnp.float32)
  g4 = jnp.asarray([1e9, -1e9, 3.0, -0.5, 0.0, 1e4], jnp.float32)
  s4 = jnp.asarray(rng.uniform(0.01, 1, 6), jnp.float32)
  q4 = np.asarray(a2q_integer_weights(v4, g4, s4, **kw), np.int64)
  l1 = np.abs(q4).reshape(-1, 6).sum(0)
  assert l1.max() <= bound
  assert l1[4] == 0


@pytest.mark.parametrize("n, p, signed", CASES)
def test_no_accumulator_overflow_where_plain_quantization_overflows(n, p, signed):
  kw = _kw(n, p, signed)
  w = _kernel(n * 100 + p)
  q = np.asarray(a2q_integer_weights(*a2q_init(w, **kw), **kw))
  wn = np.asarray(w)
  amax = np.abs(wn).max(0)
  plain = np.round(wn / (amax / 127)).astype(np.int8)  # per-channel absmax int8, no accumulator awareness
  rng = np.random.default_rng(p)
  lo, hi = (-(2 ** (n - 1)), 2 ** (n - 1)) if signed else (0, 2**n - 1)
  x = np.concatenate([_worst_case(q, n, signed), _worst_case(plain, n, signed),
                      rng.integers(lo, hi + 1, (8, K))]).astype(np.int16)
  out, stats = matmul(jnp.asarray(x), jnp.asarray(np.concatenate([q, plain], 1)), IntAccumulator(p, "wrap"),
                      return_stats=True)
  c, over, out = q.shape[1], np.asarray(stats.overflowed), np.asarray(out, np.int64)
  a2q_rows = np.r_[0:2 * c, 4 * c:x.shape[0]]
  assert not over[a2q_rows, :c].any()
  np.testing.assert_array_equal(out[a2q_rows, :c], x[a2q_rows].astype(np.int64) @ q.astype(np.int64))
  # The guarantee is not vacuous: some worst case reaches at least half of the accumulator's range.
  assert np.abs(out[:2 * c, :c]).max() >= 2 ** (p - 2)
  dense = [j for j, m in enumerate(NONZERO) if m == K]
  plain_worst = over[2 * c:4 * c, c:]
  assert all(plain_worst[2 * j:2 * j + 2, j].any() for j in dense)


def test_rounds_toward_zero():
  kw = _kw(8, 12)  # L = 15
  v = jnp.full((25, 1), 1.0)
  # 25 weights of 0.6 (sum 15): to nearest they would round to 25 x 1 > 15; toward zero they are 0.
  assert a2q_integer_weights(v, jnp.array([15.0]), jnp.array([1.0]), **kw).sum() == 0
  v = jnp.array([[2.7, -2.7], [-1.9, 1.9], [0.4, -0.4]])
  got = a2q_integer_weights(v, jnp.array([5.0, 2.5]), jnp.array([1.0, 0.5]), **kw)
  assert got.tolist() == [[2, -2], [-1, 1], [0, 0]]


def test_limit():
  assert a2q_limit(64, input_bits=8, accumulator_bits=16) == 255.0
  assert a2q_limit(64, input_bits=8, accumulator_bits=16, signed_input=False) == 127.0
  big = a2q_limit(2**16, input_bits=4, accumulator_bits=32)  # float32 rounding margin binds
  t = math.floor(a2q_bound(4, 32))
  assert t * (1 - 2**-6) < big < t


def _expected_grads(v, g, s, r, qn, qp, limit):
  """dLoss/d(v, g, s) for Loss = sum(a2q_quantize(v, g, s) * r), by the formulas of the module docs."""
  n = jnp.sum(jnp.abs(v), axis=0)
  ratio = g / s
  inside_g = jnp.abs(g) <= limit * s
  c = jnp.clip(ratio, -limit, limit)
  u = v / n
  t = jnp.trunc(c * u)
  m = ((t >= qn) & (t <= qp)).astype(v.dtype)
  q = jnp.clip(t, qn, qp)
  d = r * s * m
  big_s = jnp.sum(d * u, axis=0)
  dg = jnp.where(inside_g, big_s / s, 0.0)
  dv = c * (d - jnp.sign(v) * big_s) / n
  ds = jnp.sum(r * q, axis=0) - jnp.where(inside_g, g / s**2 * big_s, 0.0)
  return dv, dg, ds


def test_gradients_match_the_straight_through_formulas():
  kw = _kw(4, 20, m=4)  # L = 65535: elements beyond the 4-bit range are clipped
  rng = np.random.default_rng(1)
  v = jnp.asarray(rng.standard_normal((12, 5)), jnp.float32)
  g = jnp.asarray([3.0, -2.0, 1e6, 40.0, 0.7], jnp.float32)  # channel 2 is clipped by the bound
  s = jnp.asarray([0.1, 0.3, 0.02, 0.5, 0.05], jnp.float32)
  r = jnp.asarray(rng.standard_normal((12, 5)), jnp.float32)
  limit = a2q_limit(12, input_bits=4, accumulator_bits=20)

  def loss(v, g, s):
    return jnp.sum(a2q_quantize(v, g, s, **kw) * r)

  got = jax.jit(jax.grad(loss, argnums=(0, 1, 2)))(v, g, s)
  want = jax.jit(_expected_grads, static_argnums=(4, 5, 6))(v, g, s, r, -8.0, 7.0, limit)
  t = np.trunc(np.asarray(g / s * v / jnp.abs(v).sum(0)))
  assert ((t > 7) | (t < -8)).any() and ((t <= 7) & (t >= -8)).any()  # both sides of the mask are tested
  assert float(want[1][2]) == 0.0 and float(want[1][0]) != 0.0
  for a, b in zip(got, want):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
  # a2q_init puts g on the limit where the bound binds; it still gets a gradient there.
  kw12 = _kw(8, 12, m=4)  # L = 15 < ||w||_1 / s
  v0, g0, s0 = a2q_init(v, **kw12)
  assert (np.asarray(g0) == 15 * np.asarray(s0)).all()
  dg = jax.jit(jax.grad(lambda g: jnp.sum(a2q_quantize(v0, g, s0, **kw12) * r)))(g0)
  assert (np.asarray(dg) != 0).all()


def test_jit_and_training_stay_within_the_bound():
  """Adam on (v, g, s) fits a target reachable by A2Q weights; every step's integer weights meet the bound."""
  kw = _kw(8, 16)
  rng = np.random.default_rng(2)
  x = jnp.asarray(rng.standard_normal((64, 32)), jnp.float32)
  w = jnp.asarray(rng.standard_normal((32, 4)), jnp.float32)
  y = x @ a2q_quantize(*a2q_init(w, **kw), **kw)
  params = a2q_init(w + jnp.asarray(rng.standard_normal((32, 4)), jnp.float32), **kw)
  quantize = jax.jit(lambda p: a2q_quantize(*p, **kw))
  np.testing.assert_array_equal(quantize(params), a2q_quantize(*params, **kw))
  opt = optax.adam(1e-2)
  state = opt.init(params)

  @jax.jit
  def step(p, state):
    loss, grads = jax.value_and_grad(lambda p: jnp.mean((x @ a2q_quantize(*p, **kw) - y) ** 2))(p)
    updates, state = opt.update(grads, state, p)
    l1 = jnp.abs(a2q_integer_weights(*p, **kw).astype(jnp.int32)).sum(0).max()
    return optax.apply_updates(p, updates), state, loss, l1

  losses, norms = [], []
  for _ in range(100):
    params, state, loss, l1 = step(params, state)
    losses.append(float(loss))
    norms.append(int(l1))
  assert losses[-1] < losses[0] / 3
  assert max(norms) <= a2q_bound(8, 16)


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(weight_bits=1), ValueError, "weight_bits=1"),
    (dict(weight_bits=8.0), ValueError, "weight_bits=8.0"),
    (dict(input_bits=0), ValueError, "input_bits=0"),
    (dict(accumulator_bits=1), ValueError, "accumulator_bits=1"),
    (dict(accumulator_bits=8), ValueError, "accumulator_bits=8"),  # bound < 1 for 8-bit inputs
    (dict(signed_input="yes"), TypeError, "signed_input='yes'"),
])
def test_bad_bits_name_the_argument(kwargs, error, match):
  kw = dict(weight_bits=8, input_bits=8, accumulator_bits=16) | kwargs
  v, g, s = jnp.ones((4, 2)), jnp.ones(2), jnp.ones(2)
  for f in (lambda: a2q_quantize(v, g, s, **kw), lambda: a2q_integer_weights(v, g, s, **kw),
            lambda: a2q_init(v, **kw)):
    with pytest.raises(error, match=match):
      f()


def test_bad_arrays_name_the_argument():
  kw = _kw(8, 16)
  v, g, s = jnp.ones((4, 2)), jnp.ones(2), jnp.ones(2)
  with pytest.raises(TypeError, match="v must be a float array"):
    a2q_quantize(jnp.ones((4, 2), jnp.int32), g, s, **kw)
  with pytest.raises(ValueError, match="v must be a kernel"):
    a2q_quantize(jnp.ones(4), g, s, **kw)
  with pytest.raises(ValueError, match=r"g.shape=\(3,\)"):
    a2q_quantize(v, jnp.ones(3), s, **kw)
  with pytest.raises(ValueError, match=r"scale.shape=\(2, 1\)"):
    a2q_integer_weights(v, g, jnp.ones((2, 1)), **kw)
  with pytest.raises(TypeError, match="scale must be a float array"):
    a2q_quantize(v, g, [1.0, 1.0], **kw)
  with pytest.raises(TypeError, match="w must be a float array"):
    a2q_init(jnp.ones((4, 2), jnp.int8), **kw)
  with pytest.raises(ValueError, match="fan_in=0"):
    a2q_limit(0, input_bits=8, accumulator_bits=16)
