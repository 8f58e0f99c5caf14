"""Stochastic rounding: deterministic per key, unbiased, up with probability proportional to the distance.

Tolerances: with N draws of a Bernoulli(p), the frequency has standard deviation sqrt(p(1-p)/N); every check
allows 5 standard deviations (a false failure about once in 3.5 million runs), with fixed keys.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import lpnum

N = 200_000
FORMATS = ["float8_e4m3fn", "float4_e2m1fn", "bfloat16", "int8", "posit16", "shift4", "float8_e8m0fnu"]


def _sr(x, fmt, key, **kw):
  return np.asarray(jax.jit(lambda v, k: lpnum.quantize(v, fmt, rounding="stochastic", key=k, **kw))(x, key))


@pytest.mark.parametrize("fmt", FORMATS)
def test_same_key_same_result_and_different_keys_differ(fmt):
  x = jax.random.normal(jax.random.key(5), (4096,)) * 0.7
  a = _sr(x, fmt, jax.random.key(1))
  b = _sr(x, fmt, jax.random.key(1))
  c = _sr(x, fmt, jax.random.key(2))
  np.testing.assert_array_equal(a, b)
  assert (a != c).any()
  np.testing.assert_array_equal(np.asarray(lpnum.encode(x, fmt, rounding="stochastic", key=jax.random.key(1))),
                                np.asarray(lpnum.encode(a, fmt)))


@pytest.mark.parametrize("fmt, lo, hi, fracs", [
    ("float8_e4m3fn", 1.0, 1.125, [0.0, 1 / 64, 0.25, 0.5, 0.9, 63 / 64]),
    ("float4_e2m1fn", 4.0, 6.0, [0.1, 0.5, 0.75]),
    ("int8", 3.0, 4.0, [0.01, 0.3, 0.5, 0.999]),
    ("bfloat16", 1.0, 1.0078125, [0.25, 0.5]),
    ("float8_e4m3fn", 2.0**-9, 2.0**-8, [0.3, 0.5]),  # the subnormal grid
    ("float8_e4m3fn", 0.0, 2.0**-9, [0.1, 0.6]),  # below the smallest step
    ("shift4", 0.25, 0.5, [0.2, 0.5]),
])
def test_rounds_up_with_probability_equal_to_the_distance(fmt, lo, hi, fracs):
  for frac in fracs:
    x = np.float32(lo + frac * (hi - lo))
    p = (float(x) - lo) / (hi - lo)  # exact fraction of the float32 input
    for sign in (1, -1):
      y = _sr(jnp.full((N,), sign * x), fmt, jax.random.key(int(frac * 1000) + 7))
      assert set(np.unique(np.abs(y))) <= {np.float32(lo), np.float32(hi)}
      freq = np.mean(np.abs(y) == np.float32(hi))
      tol = 5 * np.sqrt(max(p * (1 - p), 1e-9) / N) + 1e-9
      assert abs(freq - p) <= tol, (fmt, frac, sign, freq, p)


@pytest.mark.parametrize("fmt", FORMATS)
def test_unbiased_on_random_data(fmt):
  x = jax.random.uniform(jax.random.key(3), (N,), minval=0.01, maxval=0.9)
  y = _sr(x, fmt, jax.random.key(4))
  x64 = np.asarray(x, np.float64)
  err = y.astype(np.float64) - x64
  # Each error is bounded by the local step; its mean must vanish within 5 standard errors.
  assert abs(err.mean()) <= 5 * err.std() / np.sqrt(N) + 1e-12


def test_k_random_bits_bias_is_as_documented():
  # With k bits the probability is floor(f * 2^k) / 2^k: f = 0.3 with k = 2 rounds up with probability 1/4.
  x = jnp.full((N,), 3.3, jnp.float32)
  for k, p in [(2, 0.25), (4, 4 / 16), (1, 0.0), (32, 0.3)]:
    y = _sr(x, "int8", jax.random.key(9), stochastic_bits=k)
    f = float(np.float32(3.3)) - 3.0
    want = np.floor(f * 2**k) / 2**k if k < 32 else f
    assert abs(want - p) < 0.01
    freq = np.mean(y == 4.0)
    assert abs(freq - want) <= 5 * np.sqrt(max(want * (1 - want), 1e-9) / N) + 1e-9, (k, freq, want)


def test_random_bits_are_uniform_and_uncorrelated():
  bits = np.asarray(lpnum.rounding.random_bits(jax.random.key(0), (N,)))
  u = bits / 2.0**32
  assert abs(u.mean() - 0.5) < 5 * np.sqrt(1 / 12 / N)
  hist, _ = np.histogram(u, bins=16, range=(0, 1))
  chi2 = ((hist - N / 16) ** 2 / (N / 16)).sum()
  assert chi2 < 45  # 15 degrees of freedom: p < 1e-4
  corr = np.corrcoef(u[:-1], u[1:])[0, 1]
  assert abs(corr) < 5 / np.sqrt(N)
  for bit in range(32):
    assert abs(((bits >> bit) & 1).mean() - 0.5) < 5 * 0.5 / np.sqrt(N)
