"""Estimators and quantized backward passes against independent jnp expressions of the published formulas."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.test_util import check_grads

import lpnum
from testing import ramp
from tiers import default_share
from lpnum import estimators as E

X = jnp.asarray(np.random.default_rng(0).standard_normal((4, 32)).astype(np.float32) * 1.5)


def _grad(f, *args, argnums=0):
  return jax.grad(lambda *a: jnp.sum(f(*a) * jnp.arange(1, a[0].size + 1, dtype=jnp.float32).reshape(a[0].shape)),
                  argnums=argnums)(*args)


# ---- forward values ---------------------------------------------------------------------------------------------
def test_forward_values_follow_the_papers():
  x = X
  np.testing.assert_array_equal(E.ste(x, "int4"), lpnum.quantize(x, "int4"))
  np.testing.assert_array_equal(E.sign_ste(x), np.where(np.asarray(x) >= 0, 1.0, -1.0))
  s = 0.25
  np.testing.assert_allclose(E.lsq(x, s, "int4"), s * np.clip(np.round(np.asarray(x) / s), -8, 7))
  a = 1.2
  np.testing.assert_allclose(E.pact(x, a, 3), np.round(np.clip(np.asarray(x), 0, a) / (a / 7)) * (a / 7),
                             rtol=1e-6)
  t = np.tanh(np.asarray(x, np.float64))
  r = t / (2 * np.abs(t).max()) + 0.5
  np.testing.assert_allclose(E.dorefa_weight(x, 3), 2 * np.round(r * 7) / 7 - 1, atol=1e-6)
  np.testing.assert_allclose(E.dorefa_activation(x, 2), np.round(np.clip(np.asarray(x), 0, 1) * 3) / 3, atol=1e-7)
  alpha = np.abs(np.asarray(x)).mean(axis=1, keepdims=True)
  np.testing.assert_allclose(E.xnor(x, axis=0), alpha * np.where(np.asarray(x) >= 0, 1, -1), rtol=1e-6)
  np.testing.assert_array_equal(E.biper(x, 2.0), np.where(np.sin(2.0 * np.asarray(x)) >= 0, 1.0, -1.0))
  g = np.abs(np.asarray(x)).mean()
  np.testing.assert_allclose(E.bitnet_ternary(x), np.clip(np.round(np.asarray(x) / (g + 1e-5)), -1, 1) * g,
                             rtol=1e-6)
  gm = np.median(np.abs(np.asarray(x)))
  np.testing.assert_allclose(E.bitnet_ternary(x, "median"),
                             np.clip(np.round(np.asarray(x) / (gm + 1e-5)), -1, 1) * gm, rtol=1e-6)
  y = np.asarray(E.denseshift(x, bits=3))
  scale = 2.0 ** np.floor(np.log2(np.abs(np.asarray(x)).max()))
  mags = np.abs(y) / scale
  assert set(np.unique(mags)) <= {1.0, 0.5, 0.25, 0.125}  # p in [-3, 0], no zero
  np.testing.assert_array_equal(np.sign(y), np.where(np.asarray(x) >= 0, 1, -1))


# ---- gradients against the published formulas ------------------------------------------------------------------
def test_ste_and_clipped_ste_gradients():
  x = X
  w = ramp(x)
  np.testing.assert_array_equal(_grad(lambda v: E.ste(v, "int2"), x), w)
  inside = (np.asarray(x) >= -2) & (np.asarray(x) <= 1)
  np.testing.assert_array_equal(_grad(lambda v: E.clipped_ste(v, "int2"), x), np.where(inside, w, 0))


def test_clipped_ste_on_a_scaled_format_uses_the_block_range():
  x = X
  fmt = lpnum.mx.format("mxfp4_e2m1")
  lo, hi = lpnum.scaled.clip_range(x, fmt)
  # FLOOR scales saturate the top of each block: those elements get no gradient.
  g = np.asarray(_grad(lambda v: E.clipped_ste(v, fmt), x))
  inside = (np.asarray(x) >= np.asarray(lo)) & (np.asarray(x) <= np.asarray(hi))
  np.testing.assert_array_equal(g, np.where(inside, ramp(x), 0))
  assert 0 < inside.sum() < x.size
  amax = np.abs(np.asarray(x)).reshape(4, 32).max(1, keepdims=True)
  np.testing.assert_array_equal(np.asarray(hi), 6 * 2.0 ** (np.floor(np.log2(amax)) - 2) * np.ones((1, 32)))


def test_lsq_gradients():
  x, s = X, jnp.float32(0.3)
  qn, qp = -8, 7
  v = np.asarray(x) / 0.3
  w = np.asarray(ramp(x))
  inside = (v > qn) & (v < qp)
  np.testing.assert_allclose(_grad(lambda a: E.lsq(a, s, "int4"), x), np.where(inside, w, 0))
  g = 1 / math.sqrt(x.size * qp)
  ds = np.where(v <= qn, qn, np.where(v >= qp, qp, np.round(v) - v)) * g
  got = _grad(lambda a, b: E.lsq(a, b, "int4"), x, s, argnums=1)
  np.testing.assert_allclose(got, np.sum(w * ds), rtol=1e-5)
  # Per-channel steps: one gradient per row.
  steps = jnp.full((4, 1), 0.3)
  per = _grad(lambda a, b: E.lsq(a, b, "int4", grad_scale=1.0), x, steps, argnums=1)
  want = np.sum(w * np.where(v <= qn, qn, np.where(v >= qp, qp, np.round(v) - v)), axis=1, keepdims=True)
  np.testing.assert_allclose(per, want, rtol=1e-5)


def test_pact_gradients():
  x, a = X, jnp.float32(1.0)
  w = np.asarray(ramp(x))
  xs = np.asarray(x)
  np.testing.assert_array_equal(_grad(lambda v: E.pact(v, a, 4), x), np.where((xs >= 0) & (xs < 1), w, 0))
  np.testing.assert_allclose(_grad(lambda v, b: E.pact(v, b, 4), x, a, argnums=1), np.sum(w * (xs >= 1)))


def test_dorefa_gradients():
  x = X
  w = ramp(x)
  xs = np.asarray(x)
  np.testing.assert_array_equal(_grad(lambda v: E.dorefa_activation(v, 2), x),
                                np.where((xs >= 0) & (xs <= 1), w, 0))
  # Weights: quantize_k is straight-through, so the gradient is that of 2 * (tanh(w) / (2 max|tanh|) + 1/2) - 1.
  smooth = lambda v: 2 * (jnp.tanh(v) / (2 * jnp.max(jnp.abs(jnp.tanh(v)))) + 0.5) - 1
  np.testing.assert_allclose(_grad(lambda v: E.dorefa_weight(v, 4), x), _grad(smooth, x), rtol=1e-4, atol=1e-4)


def test_binary_gradients():
  x = X
  w = np.asarray(ramp(x))
  xs = np.asarray(x)
  np.testing.assert_array_equal(_grad(E.sign_ste, x), np.where(np.abs(xs) <= 1, w, 0))
  alpha = np.abs(xs).mean(axis=1, keepdims=True)
  np.testing.assert_allclose(_grad(lambda v: E.xnor(v, axis=0), x), w * (1 / 32 + alpha * (np.abs(xs) <= 1)),
                             rtol=1e-6)
  o, cap = 3.0, 10.0
  d = np.minimum(np.where(np.abs(xs) > 0, np.abs(xs) ** (1 / o - 1) / o, cap), cap)
  np.testing.assert_allclose(_grad(lambda v: E.reste(v, o, cap), x), np.where(np.abs(xs) <= 1, w * d, 0),
                             rtol=1e-5)
  np.testing.assert_allclose(_grad(lambda v: E.biper(v, 2.0), x), w * 2.0 * np.cos(2.0 * xs), rtol=1e-5,
                             atol=1e-5)


def test_smooth_surrogates_match_finite_differences():
  # ReSTE's backward is the derivative of sign(x)|x|^(1/o) inside (0.05, 1); BiPer's that of sin(omega x).
  x = jnp.asarray(np.random.default_rng(1).uniform(0.05, 0.95, 16).astype(np.float32))
  x = x * jnp.where(jnp.arange(16) % 2 == 0, 1.0, -1.0)
  surrogate = lambda v: jnp.sign(v) * jnp.abs(v) ** (1 / 3)
  np.testing.assert_allclose(jax.grad(lambda v: E.reste(v, 3.0, 1e9).sum())(x), jax.grad(lambda v: surrogate(v).sum())(x),
                             rtol=1e-5)
  check_grads(lambda v: surrogate(v), (x.astype(jnp.float64) if jax.config.jax_enable_x64 else x,), order=1,
              modes=["rev"], atol=2e-2, rtol=2e-2)
  np.testing.assert_allclose(jax.grad(lambda v: E.biper(v, 3.0).sum())(x), jax.grad(lambda v: jnp.sin(3.0 * v).sum())(x),
                             rtol=1e-5)
  # Grad of grad: the second derivative of the sine surrogate.
  gg = jax.grad(lambda v: jax.grad(lambda u: E.biper(u, 3.0).sum())(v).sum())(x)
  np.testing.assert_allclose(gg, -9.0 * np.sin(3.0 * np.asarray(x)), rtol=1e-4, atol=1e-5)


def test_ternary_and_shift_are_straight_through():
  x = X
  for f in (E.bitnet_ternary, lambda v: E.bitnet_ternary(v, "median"), E.denseshift):
    np.testing.assert_array_equal(_grad(f, x), ramp(x))


def test_jit_and_vmap():
  x = X
  for f in (lambda v: E.lsq(v, 0.3, "int4"), lambda v: E.xnor(v, 0), E.sign_ste, lambda v: E.reste(v),
            lambda v: E.pact(v, 1.0, 4), lambda v: E.clipped_ste(v, "int4")):
    np.testing.assert_array_equal(jax.jit(f)(x), f(x))
    np.testing.assert_array_equal(jax.vmap(f)(x), np.stack([f(r) for r in x]))
    np.testing.assert_array_equal(jax.jit(jax.grad(lambda v: f(v).sum()))(x), jax.grad(lambda v: f(v).sum())(x))


def test_bad_inputs():
  with pytest.raises(TypeError, match="x must be a float array"):
    E.sign_ste(jnp.arange(3))
  with pytest.raises(ValueError, match="fmt=float8_e4m3fn must be an integer format"):
    E.lsq(X, 0.1, "float8_e4m3fn")
  with pytest.raises(ValueError, match="bits=0"):
    E.pact(X, 1.0, 0)
  with pytest.raises(ValueError, match="variant='mean'"):
    E.bitnet_ternary(X, "mean")
  with pytest.raises(ValueError, match="o=0.5"):
    E.reste(X, 0.5)
  with pytest.raises(ValueError, match="omega=0"):
    E.biper(X, 0)
  with pytest.raises(ValueError, match="unknown format fmt="):
    E.ste(X, "int99x")
  with pytest.raises(ValueError, match="needs key"):
    lpnum.quantize_grad(X, "int8", rounding="stochastic")
  with pytest.raises(ValueError, match="rounding='up'"):
    lpnum.OperandQuant("int8", rounding="up")
  with pytest.raises(ValueError, match="dimension_numbers="):
    lpnum.dot_general(X, X, ((1, 0)), lpnum.DotConfig())


# ---- end to end: a 2-layer MLP trains with every estimator --------------------------------------------------------
ESTIMATED = {
    "ste_int4": lambda w: E.ste(w, lpnum.ScaledFormat("int4", lpnum.per_channel(-1))),
    "clipped_ste_int4": lambda w: E.clipped_ste(w, lpnum.ScaledFormat("int4", lpnum.per_channel(-1))),
    "mxfp4": lambda w: E.ste(w, lpnum.mx.format("mxfp4_e2m1", axis=0), pad=True),
    "dorefa_w2": lambda w: E.dorefa_weight(w, 2),
    "xnor": lambda w: E.xnor(w, axis=-1),
    "sign_ste": lambda w: E.sign_ste(w) * 0.1,
    "reste": lambda w: E.reste(w) * 0.1,
    "biper": lambda w: E.biper(w, math.pi) * 0.1,
    "bitnet": E.bitnet_ternary,
    "bitnet_median": lambda w: E.bitnet_ternary(w, "median"),
    "denseshift": E.denseshift,
}


def _task(seed=0, n=256, d=16, classes=4):
  rng = np.random.default_rng(seed)
  centers = rng.standard_normal((classes, d)) * 2
  y = rng.integers(0, classes, n)
  x = centers[y] + rng.standard_normal((n, d))
  return jnp.asarray(x, jnp.float32), jnp.asarray(y)


def _train(wq, aq=None, lsq_step=False, steps=300):
  x, y = _task()
  k1, k2 = jax.random.split(jax.random.key(0))
  params = {"w1": jax.random.normal(k1, (16, 64)) * 0.25, "w2": jax.random.normal(k2, (64, 4)) * 0.125,
            "s1": jnp.full((1, 64), 0.05), "s2": jnp.full((1, 4), 0.05), "alpha": jnp.float32(3.0)}

  def loss(p):
    w1 = E.lsq(p["w1"], p["s1"], "int4") if lsq_step else wq(p["w1"])
    w2 = E.lsq(p["w2"], p["s2"], "int4") if lsq_step else wq(p["w2"])
    h = jax.nn.relu(x @ w1)
    if aq == "pact":
      h = E.pact(h, p["alpha"], 4)
    elif aq == "dorefa":
      h = E.dorefa_activation(h / 4, 4) * 4
    return optax.softmax_cross_entropy_with_integer_labels(h @ w2, y).mean()

  opt = optax.adam(1e-2)
  state = opt.init(params)

  @jax.jit
  def step(p, s):
    value, g = jax.value_and_grad(loss)(p)
    upd, s = opt.update(g, s, p)
    return optax.apply_updates(p, upd), s, value

  first = None
  for _ in range(steps):
    params, state, value = step(params, state)
    first = value if first is None else first
  return float(first), float(loss(params))


#: Trained in the default run; the others under ``-m slow``.
DEFAULT_TRAINED = ("ste_int4", "xnor")


@pytest.mark.parametrize("name", default_share(sorted(ESTIMATED), keep=DEFAULT_TRAINED))
def test_mlp_trains_with_each_estimator(name):
  first, last = _train(ESTIMATED[name])
  assert last < 0.35 * first, (name, first, last)


@pytest.mark.parametrize("kind", default_share(["lsq", "pact", "dorefa"], keep=["lsq"]))
def test_mlp_trains_with_learned_scales_and_activation_quantizers(kind):
  if kind == "lsq":
    first, last = _train(None, lsq_step=True)
  else:
    first, last = _train(lambda w: E.ste(w, lpnum.ScaledFormat("int8", lpnum.per_channel(-1))), aq=kind)
  assert last < 0.35 * first, (kind, first, last)


def test_estimator_values_and_bad_combinations():
  x = X
  int4, binary = lpnum.get_format("int4"), lpnum.get_format("binary")
  np.testing.assert_array_equal(E.BiPer(omega=2.0)(x), E.biper(x, 2.0))
  np.testing.assert_array_equal(E.SignSTE()(x, binary), E.sign_ste(x))
  np.testing.assert_array_equal(E.LSQ()(x, int4, param=jnp.float32(0.3)), E.lsq(x, 0.3, "int4"))
  np.testing.assert_array_equal(E.BitNetTernary()(x, lpnum.get_format("ternary")), E.bitnet_ternary(x))
  np.testing.assert_array_equal(E.STE()(x, int4), E.ste(x, "int4"))
  np.testing.assert_array_equal(E.XNOR(axis=0)(x), E.xnor(x, axis=0))
  np.testing.assert_array_equal(E.PACT(bits=3)(x, param=jnp.float32(1.5)), E.pact(x, 1.5, 3))
  assert E.ESTIMATORS["lsq"] is E.LSQ and E.LSQ(grad_scale=0.5) == E.LSQ(grad_scale=0.5)
  assert hash(E.ReSTE(o=2.0)) == hash(E.ReSTE(o=2.0)) and E.ReSTE(o=2.0) != E.ReSTE()
  with pytest.raises(ValueError, match="quantizes to binary; fmt=int8 is not"):
    E.BiPer().check_format(lpnum.get_format("int8"))
  with pytest.raises(ValueError, match="quantizes to ternary; fmt=int4 is not"):
    E.BitNetTernary().check_format(int4)
  with pytest.raises(ValueError, match="fmt must not be None"):
    E.STE().check_format(None)
  with pytest.raises(ValueError, match="drop fmt=int4"):
    E.PACT().check_format(int4)
  with pytest.raises(ValueError, match="must be an integer format"):
    E.LSQ().check_format(lpnum.get_format("float8_e4m3fn"))
  with pytest.raises(ValueError, match="bits=40"):
    E.DoReFaWeight(bits=40)
  with pytest.raises(ValueError, match="learns its step"):
    E.LSQ()(x, int4)
  with pytest.raises(ValueError, match="rounds to nearest"):
    E.SignSTE()(x, rounding="stochastic")


def test_hadamard_rotated_quantization():
  from lpnum.hadamard import fwht

  rng = np.random.default_rng(9)
  x = rng.standard_normal((8, 96)).astype(np.float32)
  x[:, 5] = 40.0  # an outlier channel
  fmt = lpnum.ScaledFormat("int4", lpnum.per_channel(0))
  y = np.asarray(E.hadamard_ste(x, fmt, axis=-1, block="auto"))
  want = np.asarray(fwht(lpnum.fake_quantize(fwht(x, -1, block=32), fmt), -1, block=32))
  np.testing.assert_array_equal(y, want)
  plain = np.asarray(lpnum.fake_quantize(x, fmt))
  assert np.sum((y - x) ** 2) < 0.5 * np.sum((plain - x) ** 2)  # rotation spreads the outlier
  np.testing.assert_allclose(E.hadamard_ste(x, "float32"), x, atol=1e-5)  # the inverse is folded in
  g = jax.grad(lambda v: jnp.sum(E.hadamard_ste(v, fmt) * ramp(v)))(jnp.asarray(x))
  np.testing.assert_allclose(g, ramp(x), rtol=1e-5)  # H I H = I
  # In a dot_general the rotation cancels between the operands.
  w = rng.standard_normal((96, 16)).astype(np.float32)
  dn = (((1,), (0,)), ((), ()))
  int8 = lpnum.OperandQuant("int8", scaling="none")
  cfg = lpnum.DotConfig(lhs=int8, rhs=int8, rotate="auto")
  xr, wr = fwht(x, 1, block=32), fwht(w, 0, block=32)
  np.testing.assert_allclose(lpnum.dot_general(x, w, dn, cfg), lpnum.quantize(xr, "int8") @ lpnum.quantize(wr, "int8"),
                             rtol=1e-5, atol=1e-4)
  np.testing.assert_allclose(lpnum.dot_general(x, w, dn, lpnum.DotConfig(rotate="auto")), x @ w, rtol=1e-4, atol=1e-3)
