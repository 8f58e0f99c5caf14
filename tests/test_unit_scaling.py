"""Unit-scaled ops (lpnum.unit_scaling) against closed-form float64 references of the paper's scaled ops, the
scales against their analytic expectations on large Gaussian inputs, the FP8 casts against ml_dtypes, and bad
inputs.

References are written here apart from the module: each op's value and gradients in NumPy float64 from its plain
formula times the paper's scales (computed here from the shapes), or, for attention, ``jax.vjp`` of a plain
attention multiplied by its scale. The GELU constants are integrated with scipy.
"""

import math

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
from scipy import integrate, special

from lpnum import unit_scaling as us
from testing import TRANSFORMS, data

E = math.e
CONSTRAINTS = [None, "gmean"]


def vjp(f, *args, g):
  y, pull = jax.vjp(jax.jit(f), *args)
  return np.asarray(y, np.float64), [np.asarray(t, np.float64) for t in pull(jnp.asarray(g))]


def gmean(constraint, *scales):
  """The paper's constraint, written here: the geometric mean for all, or the scales as they are."""
  return scales if constraint is None else (math.prod(scales) ** (1 / len(scales)),) * len(scales)


def close(a, b, rtol=2e-5, atol=2e-5):
  np.testing.assert_allclose(a, b, rtol=rtol, atol=atol)


# ---- the scaled identity ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("transform", TRANSFORMS.values(), ids=TRANSFORMS.keys())
def test_scaled_matches_a_stop_gradient_reference(transform):
  x, g = data((3, 5), 0), data((3, 5), 1)
  ref = lambda v: 0.25 * v + jax.lax.stop_gradient((3.0 - 0.25) * v)   # value 3 x, gradient 0.25 g
  y, (dx,) = vjp(transform(lambda v: us.scaled(v, 3.0, 0.25)), x, g=g)
  y_ref, (dx_ref,) = vjp(ref, x, g=g)
  close(y, y_ref)
  close(dx, dx_ref)
  close(dx, 0.25 * g)


def test_scaled_under_vmap_grad_and_grad_of_grad():
  x = data((4, 3), 2)
  assert np.allclose(jax.vmap(lambda v: us.scaled(v, 2.0, 5.0))(x), 2 * x)
  assert float(jax.grad(lambda v: us.scaled(v, 2.0, 5.0))(1.0)) == 5.0
  # d/dv (scaled(v) v) = 5 v + scaled(v) = 7 v by the rule; differentiating again, each term's v goes through the
  # rule or is the plain v: 5 + 5 (not 7, the derivative of 2 v^2 being 4 v).
  assert float(jax.grad(jax.grad(lambda v: us.scaled(v, 2.0, 5.0) * v))(1.0)) == pytest.approx(10.0)


def test_scaled_keeps_dtype_signs_and_specials():
  x = jnp.array([-0.0, jnp.inf, -jnp.inf, jnp.nan, 1.5], jnp.bfloat16)
  y = us.scaled(x, 2.0, 0.5)
  assert y.dtype == jnp.bfloat16
  assert np.signbit(np.asarray(y[0], np.float32)) and float(y[1]) == np.inf and float(y[2]) == -np.inf
  assert np.isnan(float(y[3])) and float(y[4]) == 3.0
  assert us.scaled(jnp.float32(2), 3.0, 1.0).shape == ()
  assert us.scaled(jnp.zeros((0, 3)), 3.0, 1.0).shape == (0, 3)


# ---- ops against closed-form references -------------------------------------------------------------------------
@pytest.mark.parametrize("constraint", CONSTRAINTS)
def test_linear_against_float64_formulas(constraint):
  x, w, b, g = data((2, 3, 8), 3), data((8, 6), 4), data((6,), 5), data((2, 3, 6), 6)
  fwd, bwd_x = gmean(constraint, 8 ** -0.5, 6 ** -0.5)
  bwd_w = 6 ** -0.5   # 6 rows of x
  y, (dx, dw, db) = vjp(jax.jit(lambda *a: us.linear(*a, constraint=constraint)), x, w, b, g=g)
  x64, w64, g64 = x.astype(np.float64), w.astype(np.float64), g.astype(np.float64)
  close(y, fwd * x64 @ w64 + b)
  close(dx, bwd_x * g64 @ w64.T)
  close(dw, bwd_w * x64.reshape(6, 8).T @ g64.reshape(6, 6))
  close(db, bwd_w * g64.sum((0, 1)))


@pytest.mark.parametrize("constraint", CONSTRAINTS)
def test_matmul_against_float64_formulas(constraint):
  a, b, g = data((2, 4, 8), 7), data((2, 8, 3), 8), data((2, 4, 3), 9)
  fwd, bwd_a, bwd_b = gmean(constraint, 8 ** -0.5, 3 ** -0.5, 4 ** -0.5)
  y, (da, db) = vjp(lambda *t: us.matmul(*t, constraint=constraint), a, b, g=g)
  a64, b64, g64 = (t.astype(np.float64) for t in (a, b, g))
  close(y, fwd * a64 @ b64)
  close(da, bwd_a * g64 @ b64.transpose(0, 2, 1))
  close(db, bwd_b * a64.transpose(0, 2, 1) @ g64)


@pytest.mark.parametrize("constraint", CONSTRAINTS)
def test_gelu_against_the_erf_formula(constraint):
  x, g = data((1000,), 10) * 3, data((1000,), 11)
  fwd, bwd = gmean(constraint, 1 / 0.5879149692126849, 1 / 0.6751672871587366)
  y, (dx,) = vjp(lambda v: us.gelu(v, constraint=constraint), x, g=g)
  x64 = x.astype(np.float64)
  phi = np.exp(-x64 ** 2 / 2) / math.sqrt(2 * math.pi)
  close(y, fwd * x64 * special.ndtr(x64))
  close(dx, bwd * (special.ndtr(x64) + x64 * phi) * g)


def test_gelu_constants_are_the_gaussian_integrals():
  density = lambda z: math.exp(-z * z / 2) / math.sqrt(2 * math.pi)
  gelu = lambda z: z * special.ndtr(z)
  mean = integrate.quad(lambda z: gelu(z) * density(z), -np.inf, np.inf)[0]
  square = integrate.quad(lambda z: gelu(z) ** 2 * density(z), -np.inf, np.inf)[0]
  grad_square = integrate.quad(lambda z: (special.ndtr(z) + z * density(z)) ** 2 * density(z), -np.inf, np.inf)[0]
  assert us.GELU_STD == pytest.approx(math.sqrt(square - mean ** 2), rel=1e-9)
  assert us.GELU_GRAD_RMS == pytest.approx(math.sqrt(grad_square), rel=1e-9)
  assert (us.GELU_STD, us.GELU_GRAD_RMS) == (pytest.approx(0.588, abs=5e-4), pytest.approx(0.675, abs=5e-4))


@pytest.mark.parametrize("constraint", CONSTRAINTS)
def test_softmax_against_float64_formulas(constraint):
  x, g = data((3, 7, 5), 12), data((3, 7, 5), 13)
  s = 7
  fwd, bwd = gmean(constraint, s / math.sqrt(E - 1), s / math.sqrt(E))
  y, (dx,) = vjp(lambda v: us.softmax(v, axis=1, constraint=constraint), x, g=g)
  x64 = x.astype(np.float64)
  p = np.exp(x64 - x64.max(1, keepdims=True))
  p /= p.sum(1, keepdims=True)
  close(y, fwd * p)
  close(dx, bwd * p * (g - (p * g).sum(1, keepdims=True)))


def test_layer_norm_against_float64_formulas():
  x, scale, bias, g = data((4, 3, 6), 14) * 2 + 1, data((6,), 15), data((6,), 16), data((4, 3, 6), 17)
  y, (dx, ds, dbias) = vjp(lambda *a: us.layer_norm(*a, eps=1e-6), x, scale, bias, g=g)
  x64, g64 = x.astype(np.float64), g.astype(np.float64)
  sigma = np.sqrt(x64.var(-1, keepdims=True) + 1e-6)
  xhat = (x64 - x64.mean(-1, keepdims=True)) / sigma
  close(y, xhat * scale + bias)
  gh = g64 * scale
  close(dx, (gh - gh.mean(-1, keepdims=True) - xhat * (gh * xhat).mean(-1, keepdims=True)) / sigma, atol=1e-4)
  close(ds, 12 ** -0.5 * (g64 * xhat).sum((0, 1)))
  close(dbias, 12 ** -0.5 * g64.sum((0, 1)))
  assert us.layer_norm(x).shape == x.shape


def test_embedding_against_a_scatter_add():
  ids = np.array([[0, 2, 2], [4, 2, 0]])
  table, g = data((5, 3), 18), data((2, 3, 3), 19)
  y, (dt,) = vjp(lambda t: us.embedding(ids, t), table, g=g)
  close(y, table[ids])
  expected = np.zeros((5, 3))
  np.add.at(expected, ids.reshape(-1), g.reshape(-1, 3).astype(np.float64))
  close(dt, math.sqrt(5 / 6) * expected)


@pytest.mark.parametrize("tau", [0.1, 0.5, 0.9])
def test_residual_split_and_add_give_exact_input_gradients(tau):
  x, w, g = data((6,), 20), data((6,), 21), data((6,), 22)

  def block(v, weight):
    r, s = us.residual_split(v, tau)
    return us.residual_add(r * weight, s, tau)

  y, (dx, dw) = vjp(block, x, w, g=g)
  close(y, math.sqrt(tau) * w * x + math.sqrt(1 - tau) * x)
  close(dx, (math.sqrt(tau) * w + math.sqrt(1 - tau)) * g)      # the true derivative of the forward
  close(dw, x * g)                                                   # the branch's weight: 1/sqrt(tau) of the true one


def plain_attention(q, k, v):
  logits = jnp.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(q.shape[-1])
  return jnp.einsum("bhqk,bkhd->bqhd", jax.nn.softmax(logits, -1), v)


def test_attention_is_plain_attention_scaled_forward_and_backward():
  q, k, v = data((2, 5, 3, 4), 23), data((2, 7, 3, 4), 24), data((2, 7, 3, 4), 25)
  g = data((2, 5, 3, 4), 26)
  c = math.sqrt(7 / E)
  y, grads = vjp(jax.jit(us.scaled_dot_product_attention), q, k, v, g=g)
  y_ref, grads_ref = vjp(plain_attention, q, k, v, g=g)
  close(y, c * y_ref)
  for t, t_ref in zip(grads, grads_ref):
    close(t, c * t_ref)


def test_cross_entropy_value_and_gradient():
  logits, labels = data((6, 5), 27) * 2, np.array([0, 4, 1, 1, 3, 2])
  y, (dl,) = vjp(lambda t: us.cross_entropy(t, labels), logits, g=np.float32(1))
  l64 = logits.astype(np.float64)
  p = np.exp(l64 - l64.max(-1, keepdims=True))
  p /= p.sum(-1, keepdims=True)
  onehot = np.eye(5)[labels]
  close(y, np.mean(-np.log((p * onehot).sum(-1))))
  close(dl, (p - onehot) * 5 / math.sqrt(4))


def test_cross_entropy_gradient_is_exactly_unit_at_uniform_logits():
  grad = jax.jit(jax.grad(us.cross_entropy))(jnp.zeros((64, 16)), jnp.arange(64) % 16)
  assert float(jnp.sqrt(jnp.mean(grad ** 2))) == pytest.approx(1.0, rel=1e-5)


# ---- unit variance on large Gaussian inputs ---------------------------------------------------------------------
def stds(f, *args, seed):
  @jax.jit
  def run(*a):
    y, pull = jax.vjp(f, *a)
    return jnp.std(y), [jnp.std(t) for t in pull(jax.random.normal(jax.random.key(seed), y.shape))]

  out, grads = run(*args)
  return float(out), [float(t) for t in grads]


@pytest.mark.parametrize("op, shapes, tol", [
    (lambda x, w: us.linear(x, w, constraint=None), [(2048, 256), (256, 512)], 0.03),
    pytest.param(lambda a, b: us.matmul(a, b, constraint=None), [(512, 256), (256, 512)], 0.03,
                 marks=pytest.mark.slow),
    (lambda x: us.gelu(x, constraint=None), [(200_000,)], 0.02),
    (lambda x: us.softmax(x, constraint=None), [(16, 8192)], 0.05),
    (us.scaled_dot_product_attention, [(4, 512, 1, 32)] * 3, 0.05),
    (lambda x: us.layer_norm(x), [(1024, 256)], 0.03),
], ids=["linear", "matmul", "gelu", "softmax", "attention", "layer_norm"])
def test_unit_inputs_give_unit_outputs_and_gradients(op, shapes, tol):
  args = [jax.random.normal(jax.random.key(i), s) for i, s in enumerate(shapes)]
  out, grads = stds(op, *args, seed=99)
  assert out == pytest.approx(1.0, abs=tol)
  assert grads == pytest.approx([1.0] * len(grads), abs=tol)


def test_gmean_moves_the_scales_to_their_geometric_mean():
  """gmean moves the forward and input-gradient stds from 1 and 1 to (K / N)^1/4 and (N / K)^1/4."""
  x, w = jax.random.normal(jax.random.key(0), (1024, 64)), jax.random.normal(jax.random.key(1), (64, 256))
  out, (dx, _) = stds(lambda a, b: us.linear(a, b, constraint="gmean"), x, w, seed=3)
  assert out == pytest.approx((64 / 256) ** 0.25, rel=0.03)       # sqrt(K) (K N)^-1/4
  assert dx == pytest.approx((256 / 64) ** 0.25, rel=0.03)        # sqrt(N) (K N)^-1/4


def test_residual_add_of_unit_branches_is_unit():
  r, s = jax.random.normal(jax.random.key(0), (2, 100_000))
  assert float(jnp.std(us.residual_add(r, s, 0.3))) == pytest.approx(1.0, abs=0.01)


# ---- the plain FP8 casts ----------------------------------------------------------------------------------------
def test_fp8_cast_linear_matches_ml_dtypes_casts():
  x, w, g = data((16, 32), 30), data((32, 8), 31), data((16, 8), 32)
  fwd, bwd_x = gmean("gmean", 32 ** -0.5, 8 ** -0.5)
  y, (dx, dw) = vjp(jax.jit(lambda a, b: us.linear(a, b, config=us.FP8_CAST)), x, w, g=g)
  e4m3 = lambda t: t.astype(ml_dtypes.float8_e4m3fn).astype(np.float64)
  e5m2 = lambda t: t.astype(ml_dtypes.float8_e5m2).astype(np.float64)
  close(y, fwd * e4m3(x) @ e4m3(w), rtol=1e-5)
  close(dx, bwd_x * e5m2(g) @ e4m3(w).T, rtol=1e-5)
  close(dw, 16 ** -0.5 * e4m3(x).T @ e5m2(g), rtol=1e-5)


# ---- transforms -------------------------------------------------------------------------------------------------
def test_ops_under_vmap_are_the_per_example_ops():
  x, w = data((4, 6, 8), 40), data((8, 8), 41)
  close(jax.vmap(us.gelu)(x), us.gelu(x))
  close(jax.vmap(lambda v: us.linear(v, w))(x), us.linear(x, w))      # the same forward scale for any batch


def test_empty_batches_give_empty_outputs_and_zero_gradients():
  x, w = jnp.zeros((0, 4)), data((4, 3), 42)
  y, (dx, dw) = vjp(us.linear, x, w, g=np.zeros((0, 3), np.float32))
  assert y.shape == (0, 3) and dx.shape == (0, 4) and not np.any(dw)
  assert us.gelu(jnp.zeros((0,))).shape == (0,)


# ---- bad inputs -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("call, error, match", [
    (lambda: us.scaled(jnp.ones(2), 0.0, 1.0), ValueError, "fwd_scale=0.0 must be positive"),
    (lambda: us.scaled(jnp.ones(2), 1.0, float("nan")), ValueError, "bwd_scale=nan must be finite"),
    (lambda: us.scaled(jnp.ones(2), True, 1.0), TypeError, "fwd_scale=True must be a real number"),
    (lambda: us.scaled(jnp.ones(2, jnp.int32), 1.0, 1.0), TypeError, "x must be a float array"),
    (lambda: us.linear(jnp.ones((2, 3)), jnp.ones((4, 5))), ValueError, r"w of shape \(4, 5\) must be \(K, N\)"),
    (lambda: us.linear(jnp.ones((2, 3)), jnp.ones((3, 5)), jnp.ones(4)), ValueError, r"bias of shape \(4,\)"),
    (lambda: us.linear(jnp.ones((2, 3)), jnp.ones((3, 5)), constraint="mean"), ValueError, "constraint='mean'"),
    (lambda: us.linear(jnp.ones((2, 3)), jnp.ones((3, 5)), config="fp8"), TypeError, "config='fp8'"),
    (lambda: us.matmul(jnp.ones(3), jnp.ones((3, 2))), ValueError, r"a of shape \(3,\)"),
    (lambda: us.softmax(jnp.ones((2, 3)), axis=2), ValueError, "axis=2 is out of range"),
    (lambda: us.layer_norm(jnp.ones((2, 3)), eps=0.0), ValueError, "eps=0.0 must be positive"),
    (lambda: us.layer_norm(jnp.ones((2, 3)), jnp.ones(2)), ValueError, r"scale of shape \(2,\)"),
    (lambda: us.embedding(jnp.ones(2), jnp.ones((3, 2))), TypeError, "ids must be an integer array"),
    (lambda: us.embedding(jnp.ones(2, jnp.int32), jnp.ones(3)), ValueError, "table of shape"),
    (lambda: us.residual_split(jnp.ones(2), 1.0), ValueError, r"tau=1.0 must lie in \(0, 1\)"),
    (lambda: us.residual_add(jnp.ones(2), jnp.ones(2), 0.0), ValueError, "tau=0.0"),
    (lambda: us.residual_add(jnp.ones(2), jnp.ones(3), 0.5), ValueError, r"residual of shape \(2,\)"),
    (lambda: us.scaled_dot_product_attention(jnp.ones((2, 3, 4)), jnp.ones((2, 3, 5)), jnp.ones((2, 3, 5))),
     ValueError, "must be"),
    (lambda: us.cross_entropy(jnp.ones((2, 3)), jnp.ones(2)), TypeError, "labels must be an integer array"),
    (lambda: us.cross_entropy(jnp.ones((2, 3)), jnp.ones(3, jnp.int32)), ValueError, r"labels of shape \(3,\)"),
    (lambda: us.cross_entropy(jnp.ones((2, 1)), jnp.ones(2, jnp.int32)), ValueError, "C >= 2"),
    (lambda: us.cross_entropy(jnp.ones((0, 3)), jnp.ones(0, jnp.int32)), ValueError, "hold no example"),
])
def test_bad_inputs_name_the_argument(call, error, match):
  with pytest.raises(error, match=match):
    call()
