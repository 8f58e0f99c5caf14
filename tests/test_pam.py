"""lpnum.pam against the paper's formulas (tests/support/pam_reference.py): exact Fraction and NumPy float64
references of PAM, PAD, exp2 and log2 written from sign, exponent and mantissa, a NumPy loop for the matmul and its
backward rule; error bounds on a dense mantissa grid; jit, vmap, grad; bad inputs."""

import functools
import math
import struct
from fractions import Fraction

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest

import pam_reference as ref
from lpnum import pam
from testing import TRANSFORMS

BF16 = ml_dtypes.bfloat16
#: Edge float32 values: zeros, the subnormal range, the normal boundary, powers of two, carries, the top.
EDGES = np.array([0.0, -0.0, 1e-45, -3e-39, 2.0 ** -126, -(2.0 ** -126), 1.0, -1.0, 1.5, 1.75, 1.25, 3.0, 0.75,
                  2.0 ** 127, 3.4028235e38, -3.4028235e38, 2.0 ** -100, 1.9999999, np.inf, -np.inf, np.nan],
                 np.float32)


def _bits(x):
  x = np.asarray(x)
  return x.view(np.uint32 if x.dtype == np.float32 else np.uint16)


def _assert_same(got, want):
  """Same values bit for bit, any NaN matching any NaN."""
  got = np.asarray(got)
  want = _cast(want, got.dtype)
  nan = np.isnan(got.astype(np.float32))
  np.testing.assert_array_equal(nan, np.isnan(want.astype(np.float32)))
  np.testing.assert_array_equal(_bits(got)[~nan], _bits(want)[~nan])


def _random_patterns(n, seed, dtype=np.uint32):
  """Random bit patterns over every class: exponents uniform over all 256 fields, random mantissas and signs."""
  rng = np.random.default_rng(seed)
  bits = rng.integers(0, 2 ** 32, n, dtype=np.uint64).astype(np.uint32)
  return bits.view(np.float32) if dtype == np.uint32 else (bits >> 16).astype(np.uint16).view(BF16)


def _products_near_one(n, seed, emax=60):
  """Float32 pairs whose products stay in range: exponents in [-emax, emax], random mantissas and signs."""
  rng = np.random.default_rng(seed)
  m = rng.uniform(1, 2, (2, n)) * rng.choice([-1.0, 1.0], (2, n))
  return np.ldexp(m, rng.integers(-emax, emax, (2, n))).astype(np.float32)


def _cast(x, dtype):
  with np.errstate(invalid="ignore", over="ignore"):
    return np.asarray(x).astype(dtype)


# ---- the references agree with each other -------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_numpy_reference_matches_the_exact_reference(dtype):
  a = _cast(np.concatenate([EDGES, _random_patterns(300, 1)]), np.float32 if dtype == "float32" else BF16)
  b = _cast(np.concatenate([EDGES[::-1], _random_patterns(300, 2)]), a.dtype)
  for scalar, vector in ((ref.pam, ref.pam_np), (ref.pad, ref.pad_np)):
    want = [scalar(int(x), int(y), dtype) for x, y in zip(_bits(a), _bits(b), strict=True)]
    want = np.array(want, np.uint32 if dtype == "float32" else np.uint16).view(a.dtype)
    _assert_same(_cast(vector(a, b), a.dtype), want)


# ---- elementwise operations against the exact reference -----------------------------------------------------------
@pytest.mark.parametrize("transform", TRANSFORMS.values(), ids=TRANSFORMS.keys())
@pytest.mark.parametrize("op, scalar", [(pam.multiply, ref.pam), (pam.divide, ref.pad)], ids=["multiply", "divide"])
def test_float32_random_and_edge_patterns(op, scalar, transform):
  a = np.concatenate([np.repeat(EDGES, len(EDGES)), _random_patterns(1500, 3), _products_near_one(500, 4)[0]])
  b = np.concatenate([np.tile(EDGES, len(EDGES)), _random_patterns(1500, 5), _products_near_one(500, 4)[1]])
  want = np.array([scalar(x, y) for x, y in zip(_bits(a).tolist(), _bits(b).tolist(), strict=True)], np.uint32)
  _assert_same(transform(op)(a, b), want.view(np.float32))


@pytest.mark.parametrize("op, vector", [(pam.multiply, ref.pam_np), (pam.divide, ref.pad_np)],
                         ids=["multiply", "divide"])
def test_bfloat16_every_pattern_against_a_sample(op, vector):
  a = np.arange(2 ** 16, dtype=np.uint16).view(BF16)[:, None]
  b = np.concatenate([_cast(EDGES, BF16), _random_patterns(11, 6, np.uint16)])[None, :]
  got = jax.jit(op)(a, b)
  assert got.dtype == jnp.bfloat16
  _assert_same(got, _cast(vector(a, b), BF16))


def test_specials_and_ranges():
  big, tiny = np.float32(2.0 ** 100), np.float32(2.0 ** -100)
  cases = [  # (a, b, PAM, PAD)
      (0.0, 5.0, 0.0, 0.0), (-0.0, 5.0, -0.0, -0.0), (0.0, -5.0, -0.0, -0.0), (5.0, 0.0, 0.0, np.inf),
      (-5.0, 0.0, -0.0, -np.inf), (0.0, 0.0, 0.0, np.nan), (np.inf, 0.0, np.nan, np.inf), (np.inf, np.inf, np.inf,
                                                                                         np.nan),
      (np.inf, -2.0, -np.inf, -np.inf), (2.0, np.inf, np.inf, 0.0), (-2.0, np.inf, -np.inf, -0.0),
      (np.nan, 1.0, np.nan, np.nan), (1.0, np.nan, np.nan, np.nan),
      (1e-40, 1e30, 0.0, 0.0), (1.5, -1e-40, -0.0, -np.inf),  # subnormals are zero
      (big, big, np.inf, 1.0), (tiny, tiny, 0.0, 1.0), (-big, big, -np.inf, -1.0), (-tiny, tiny, -0.0, -1.0),
      (big, tiny, 1.0, np.inf), (tiny, -big, -1.0, -0.0),
      (2.0 ** -63, 2.0 ** -63, 2.0 ** -126, 1.0), (2.0 ** 63, 2.0 ** 64, 2.0 ** 127, 0.5),
  ]
  a, b, want_pam, want_pad = (np.array(c, np.float32) for c in zip(*cases, strict=True))
  _assert_same(pam.multiply(a, b), want_pam)
  _assert_same(pam.divide(a, b), want_pad)


def test_powers_of_two_are_exact():
  rng = np.random.default_rng(7)
  p = np.ldexp(1.0, np.arange(-60, 61)).astype(np.float32) * rng.choice([-1, 1], 121).astype(np.float32)
  x = _products_near_one(121, 8)[0]
  np.testing.assert_array_equal(pam.multiply(p, x), p * x)
  np.testing.assert_array_equal(pam.multiply(x, p), p * x)
  np.testing.assert_array_equal(pam.divide(x, p), x / p)
  np.testing.assert_array_equal(pam.square(p), p * p)
  np.testing.assert_array_equal(pam.reciprocal(p), 1 / p)


# ---- error bounds over a dense mantissa grid ----------------------------------------------------------------------
def test_relative_error_bounds_on_a_dense_mantissa_grid():
  """Every pair of mantissas on the 2^-7 grid (16,384 pairs), at random exponents: PAM / (a b) in [8/9, 1] with
  8/9 only at Ma = Mb = 1/2 and 1 exactly when a mantissa is zero; PAD / (a / b) in [1, 9/8], 1 exactly when
  Mb = 0 or Ma = Mb."""
  steps = 2 ** 7
  i, j = np.meshgrid(np.arange(steps), np.arange(steps), indexing="ij")
  rng = np.random.default_rng(9)
  ea, eb = rng.integers(-40, 40, i.shape), rng.integers(-40, 40, i.shape)
  a = np.ldexp(1 + i / steps, ea).astype(np.float32)
  b = np.ldexp(1 + j / steps, eb).astype(np.float32)
  products, quotients = np.asarray(pam.multiply(a, b)), np.asarray(pam.divide(a, b))
  ratio_pam = np.array([[Fraction(float(p)) / (Fraction(float(x)) * Fraction(float(y)))
                         for p, x, y in zip(*rows, strict=True)] for rows in zip(products, a, b, strict=True)])
  ratio_pad = np.array([[Fraction(float(q)) * Fraction(float(y)) / Fraction(float(x))
                         for q, x, y in zip(*rows, strict=True)] for rows in zip(quotients, a, b, strict=True)])
  assert ratio_pam.min() == Fraction(8, 9) and ratio_pam.max() == 1
  assert [tuple(v) for v in np.argwhere(ratio_pam == Fraction(8, 9))] == [(steps // 2, steps // 2)]
  np.testing.assert_array_equal(ratio_pam == 1, (i == 0) | (j == 0))
  assert ratio_pad.min() == 1 and ratio_pad.max() <= Fraction(9, 8)
  np.testing.assert_array_equal(ratio_pad == 1, (j == 0) | (i == j))
  # 9/8 is the supremum (Ma -> 1, Mb = 1/2); on this grid the largest ratio is just below it.
  assert ratio_pad.max() == max(ratio_pad[-1, steps // 2], ratio_pad[0, steps // 2])
  assert Fraction(9, 8) - ratio_pad.max() < Fraction(1, 100)


# ---- exp2 and log2 ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("transform", TRANSFORMS.values(), ids=TRANSFORMS.keys())
@pytest.mark.parametrize("op, scalar", [(pam.exp2, ref.exp2), (pam.log2, ref.log2)], ids=["exp2", "log2"])
def test_exp2_log2_float32(op, scalar, transform):
  rng = np.random.default_rng(10)
  x = np.concatenate([EDGES, _random_patterns(1500, 11), rng.uniform(-140, 140, 1500).astype(np.float32),
                      np.float32([127.99999, 128.0, -126.0, -126.00001, -0.5, 0.3, 2.0 ** -24, -(2.0 ** -25)])])
  want = np.array([scalar(v) for v in _bits(x).tolist()], np.uint32)
  _assert_same(transform(op)(x), want.view(np.float32))


@pytest.mark.parametrize("stride", [pytest.param(1, marks=pytest.mark.slow), 7])
@pytest.mark.parametrize("op, scalar", [(pam.exp2, ref.exp2), (pam.log2, ref.log2)], ids=["exp2", "log2"])
def test_exp2_log2_bfloat16_every_pattern(op, scalar, stride):
  """Every bfloat16 pattern with -m slow; every 7th (all exponents and specials' neighbourhoods) by default."""
  codes = np.arange(0, 2 ** 16, stride, dtype=np.uint16)
  x = codes.view(BF16)
  want = np.array([scalar(int(v), "bfloat16") for v in codes], np.uint16).view(BF16)
  got = jax.jit(op)(x)
  assert got.dtype == jnp.bfloat16
  _assert_same(got, want)


def test_exp2_and_log2_meet_the_true_functions_on_the_integers():
  n = np.arange(-126, 128, dtype=np.float32)
  np.testing.assert_array_equal(pam.exp2(n), np.ldexp(np.float32(1), n.astype(int)))
  np.testing.assert_array_equal(pam.log2(np.ldexp(np.float32(1), n.astype(int))), n)


def test_exp_and_log_are_the_papers_compositions():
  x = _products_near_one(200, 12)[0]
  log2e = np.float32(math.log2(math.e))
  _assert_same(pam.exp(x / 2 ** 55), pam.exp2(pam.multiply(x / 2 ** 55, log2e)))
  _assert_same(pam.log(np.abs(x)), pam.divide(pam.log2(np.abs(x)), log2e))
  assert pam.exp(jnp.ones(3, jnp.bfloat16)).dtype == jnp.bfloat16


# ---- gradients of the elementwise operations ----------------------------------------------------------------------
def test_multiply_and_divide_gradients_are_the_exact_piecewise_slopes():
  a, b = _products_near_one(300, 13, emax=20)
  keep = np.abs(np.frexp(a)[0]) != np.abs(np.frexp(b)[0])  # Ma = Mb sits on PAD's borrow boundary
  a, b = a[keep], b[keep]
  da, db = jax.jit(jax.vmap(jax.grad(pam.multiply, argnums=(0, 1))))(a, b)
  qa, qb = jax.jit(jax.vmap(jax.grad(pam.divide, argnums=(0, 1))))(a, b)
  for i, (x, y) in enumerate(zip(a.tolist(), b.tolist(), strict=True)):
    assert Fraction(float(da[i])) == ref.pam_slope(x, y)
    assert Fraction(float(db[i])) == ref.pam_slope(y, x)
    assert (Fraction(float(qa[i])), Fraction(float(qb[i]))) == ref.pad_slopes(x, y)


def test_exp2_and_log2_gradients():
  x = np.float32([-3.75, -1.0, -0.25, 0.0, 0.5, 2.25, 7.5])
  np.testing.assert_array_equal(jax.vmap(jax.grad(pam.exp2))(x), np.exp2(np.floor(x)))
  y = np.float32([0.3, 1.0, 1.5, 6.0, 1000.0])
  np.testing.assert_array_equal(jax.vmap(jax.grad(pam.log2))(y), np.exp2(-np.floor(np.log2(y))))
  assert float(jax.grad(pam.log2)(0.0)) == np.inf and np.isnan(jax.grad(pam.log2)(-1.0))


def test_gradient_at_zero_operands():
  """ReLU zeros: d PAM(0, b) / da = sign(b) 2^Eb (no carry), d PAM(0, b) / db = 0."""
  da, db = jax.grad(pam.multiply, argnums=(0, 1))(0.0, -3.0)
  assert float(da) == -2.0 and float(db) == 0.0


# ---- the matmul ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("transform", TRANSFORMS.values(), ids=TRANSFORMS.keys())
def test_matmul_matches_the_numpy_loop_bit_for_bit(transform):
  rng = np.random.default_rng(14)
  x = rng.standard_normal((5, 37)).astype(np.float32)
  y = rng.standard_normal((37, 6)).astype(np.float32)
  x[1, 3], y[3, 2], x[2, :4] = 0.0, -0.0, 2.0 ** -130
  _assert_same(transform(pam.matmul)(x, y), ref.pam_matmul_np(x, y))


def test_dot_general_batch_and_several_contracting_axes():
  rng = np.random.default_rng(15)
  lhs = rng.standard_normal((3, 4, 2, 5)).astype(np.float32)  # (batch, contract, free, contract)
  rhs = rng.standard_normal((5, 3, 4, 6)).astype(np.float32)  # (contract, batch, contract, free)
  dn = (((1, 3), (2, 0)), ((0,), (1,)))
  got = jax.jit(lambda a, b: pam.dot_general(a, b, dn))(lhs, rhs)
  assert got.shape == jax.lax.dot_general(lhs, rhs, dn).shape == (3, 2, 6)
  for i in range(3):
    x = lhs[i].transpose(1, 0, 2).reshape(2, 20)
    y = rhs[:, i].transpose(1, 0, 2).reshape(20, 6)
    _assert_same(got[i], ref.pam_matmul_np(x, y))


def test_dot_general_through_einsum_and_output_dtypes():
  rng = np.random.default_rng(16)
  q = rng.standard_normal((2, 7, 3, 4)).astype(np.float32)
  k = rng.standard_normal((2, 5, 3, 4)).astype(np.float32)
  got = jnp.einsum("bqhd,bkhd->bhqk", q, k, _dot_general=pam.dot_general)
  for b in range(2):
    for h in range(3):
      _assert_same(got[b, h], ref.pam_matmul_np(q[b, :, h], k[b, :, h].T))
  xb, yb = q[0, :, 0].astype(BF16), k[0, :, 0].T.astype(BF16)
  out = pam.matmul(xb, yb)
  assert out.dtype == jnp.bfloat16
  _assert_same(out, ref.pam_matmul_np(xb.astype(np.float32), yb.astype(np.float32)).astype(BF16))
  wide = pam.dot_general(xb, yb, (((1,), (0,)), ((), ())), preferred_element_type=jnp.float32)
  _assert_same(wide, ref.pam_matmul_np(xb.astype(np.float32), yb.astype(np.float32)))


def test_matmul_vjp_is_pam_matmuls_of_the_cotangent():
  """d lhs = g @ rhs^T and d rhs = lhs^T @ g, each product PAM, summed in float32 in order."""
  rng = np.random.default_rng(17)
  x = rng.standard_normal((6, 9)).astype(np.float32)
  y = rng.standard_normal((9, 4)).astype(np.float32)
  g = rng.standard_normal((6, 4)).astype(np.float32)
  out, vjp = jax.vjp(jax.jit(pam.matmul), x, y)
  dx, dy = vjp(g)
  _assert_same(out, ref.pam_matmul_np(x, y))
  _assert_same(dx, ref.pam_matmul_np(g, y.T))
  _assert_same(dy, ref.pam_matmul_np(x.T, g))
  gx = jax.jit(jax.grad(lambda a, b: jnp.sum(pam.matmul(a, b) * g), argnums=(0, 1)))(x, y)
  _assert_same(gx[0], dx)
  _assert_same(gx[1], dy)


def test_matmul_vmap_shapes_and_empty_contractions():
  rng = np.random.default_rng(18)
  x = rng.standard_normal((3, 2, 5)).astype(np.float32)
  y = rng.standard_normal((3, 5, 4)).astype(np.float32)
  batched = jax.vmap(pam.matmul)(x, y)
  for i in range(3):
    _assert_same(batched[i], ref.pam_matmul_np(x[i], y[i]))
  _assert_same(pam.matmul(x, y), batched)
  np.testing.assert_array_equal(pam.matmul(np.zeros((2, 0), np.float32), np.zeros((0, 3), np.float32)),
                                np.zeros((2, 3)))
  assert pam.matmul(np.ones(5, np.float32), y[0]).shape == (4,)


def test_elementwise_shapes_vmap_and_0d():
  a, b = _products_near_one(12, 19)
  _assert_same(jax.vmap(pam.multiply)(a, b), pam.multiply(a, b))
  assert pam.multiply(np.float32(1.5), 2.0).shape == ()
  assert pam.divide(np.zeros((0, 3), np.float32), 1.0).shape == (0, 3)
  assert pam.multiply(jnp.ones(2, jnp.bfloat16), 3.0).dtype == jnp.bfloat16
  assert pam.multiply(jnp.ones(2, jnp.bfloat16), jnp.ones(2)).dtype == jnp.float32


# ---- bad inputs ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("op", [pam.multiply, pam.divide])
def test_non_float_operands_are_type_errors_naming_them(op):
  with pytest.raises(TypeError, match="b has dtype int32; lpnum.pam takes float32 or bfloat16"):
    op(jnp.ones(2), jnp.ones(2, jnp.int32))
  with pytest.raises(TypeError, match="a has dtype float16"):
    op(jnp.ones(2, jnp.float16), 1.0)
  with pytest.raises(TypeError, match="a has dtype float64"):
    op(np.ones(2), 1.0)
  with pytest.raises(TypeError, match="a=True must be an array of numbers"):
    op(True, 1.0)


@pytest.mark.parametrize("op", [pam.exp2, pam.log2, pam.exp, pam.log, pam.square, pam.reciprocal])
def test_unary_bad_inputs(op):
  with pytest.raises(TypeError, match="x has dtype uint8"):
    op(jnp.ones(2, jnp.uint8))
  with pytest.raises(TypeError, match="x must be an array"):
    op("1.0")


def test_dot_general_and_matmul_bad_inputs():
  x = jnp.ones((2, 3))
  with pytest.raises(TypeError, match="lhs has dtype int8"):
    pam.dot_general(jnp.ones((2, 3), jnp.int8), x.T, (((1,), (0,)), ((), ())))
  with pytest.raises(TypeError, match="dimension_numbers=1 must be"):
    pam.dot_general(x, x.T, 1)
  with pytest.raises(TypeError, match="preferred_element_type=int32 must be a float dtype"):
    pam.dot_general(x, x.T, (((1,), (0,)), ((), ())), preferred_element_type=jnp.int32)
  with pytest.raises(TypeError, match="contracting dimensions"):
    pam.dot_general(x, x, (((1,), (0,)), ((), ())))
  with pytest.raises(ValueError, match="out_sharding=1: lpnum.pam.dot_general takes no output sharding"):
    pam.dot_general(x, x.T, (((1,), (0,)), ((), ())), out_sharding=1)
  with pytest.raises(ValueError, match=r"a of shape \(2, 3\) and b of shape \(2, 3\)"):
    pam.matmul(x, x)
  with pytest.raises(TypeError, match="a has dtype int32"):
    jax.jit(pam.matmul).trace(jnp.ones((2, 3), jnp.int32), x.T)


def test_struct_helpers_round_trip():
  """The reference's own float32 pattern helpers agree with struct (a guard on the oracle)."""
  for v in (1.5, -0.0, 3.4028235e38, 1e-45):
    assert ref.f32_from_bits(ref.f32_bits(v)) == struct.unpack("<f", struct.pack("<f", v))[0]
  assert ref.decode(0x3FC00000, "float32") == (0, Fraction(3, 2))
  assert ref.decode(0x3FC0, "bfloat16") == (0, Fraction(3, 2))
  assert functools.reduce(lambda s, e: s + ref.split(Fraction(2) ** e)[1], range(-5, 5), 0) == 0
