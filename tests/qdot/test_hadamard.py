"""The fast Walsh–Hadamard transform against dense float64 NumPy references.

The reference is the obvious one: move the axis last, multiply by ``scipy.linalg.hadamard(n) / sqrt(n)`` (or the
block-diagonal matrix from ``scipy.linalg.block_diag``) in float64, move the axis back. Without SciPy the test
builds the Sylvester matrix itself with Kronecker products. Tolerance for float32 inputs: every element within
``1e-6 * max|reference|`` (observed errors are about 1e-7 for n up to 1024).
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lpnum.hadamard import fwht, hadamard_matrix, largest_block

try:
  import scipy.linalg as sla
except ImportError:  # pragma: no cover - SciPy is present in the dev environment
  sla = None

RTOL32 = 1e-6
POW2 = [2 ** k for k in range(11)]  # 1 ... 1024


def dense_hadamard(n: int) -> np.ndarray:
  """Unnormalized Sylvester matrix of order n (entries +-1), from SciPy or by Kronecker products."""
  if sla is not None:
    return sla.hadamard(n).astype(np.float64)
  h = np.ones((1, 1))
  for _ in range(n.bit_length() - 1):
    h = np.kron(np.array([[1.0, 1.0], [1.0, -1.0]]), h)
  return h


def dense_matrix(n: int, block: int) -> np.ndarray:
  """The orthonormal block-diagonal rotation diag(H_b, ..., H_b) / sqrt(b) of order n."""
  hb = dense_hadamard(block) / math.sqrt(block)
  blocks = [hb] * (n // block)
  return sla.block_diag(*blocks) if sla is not None else np.kron(np.eye(n // block), hb)


def reference(x: np.ndarray, axis: int = -1, block: int | None = None) -> np.ndarray:
  x = np.moveaxis(np.asarray(x, np.float64), axis, -1)
  n = x.shape[-1]
  return np.moveaxis(x @ dense_matrix(n, block or n), -1, axis)


def assert_close32(y, ref, rtol=RTOL32):
  y, ref = np.asarray(y, np.float64), np.asarray(ref, np.float64)
  assert y.shape == ref.shape
  scale = np.abs(ref).max() if ref.size else 0.0
  np.testing.assert_allclose(y, ref, rtol=0, atol=rtol * scale)


def normal(shape, seed=0, dtype=np.float32):
  return np.random.default_rng(seed).standard_normal(shape).astype(dtype)


@functools.cache
def jitted(axis: int, block):
  """One jitted transform per static configuration (jit still specializes on shapes)."""
  return jax.jit(functools.partial(fwht, axis=axis, block=block))


@functools.cache
def _program(specs: tuple):
  return jax.jit(lambda xs: [fwht(x, axis, block=block) for x, (axis, block) in zip(xs, specs)])


def fwht_many(xs, specs):
  """``[fwht(x, axis, block=block) for ...]`` as one compiled program, to keep the number of compiles down."""
  return [np.asarray(y) for y in _program(tuple(specs))(list(xs))]


# ---- against the dense reference ------------------------------------------------------------------------------
def test_matches_dense_reference_for_every_power_of_two_up_to_1024():
  xs = [normal((5, n), seed=n) for n in POW2]
  for x, y in zip(xs, fwht_many(xs, [(-1, None)] * len(xs))):
    assert y.dtype == np.float32 and y.shape == x.shape
    assert_close32(y, reference(x))


def test_matches_dense_reference_along_each_axis_of_3d_arrays():
  cases = []
  for n in [1, 2, 32, 1024]:
    for axis in [0, 1, 2]:
      shape = [3, 2, 5]
      shape[axis] = n
      cases.append((normal(tuple(shape), seed=n + axis), axis))
  cases += [(x, axis - 3) for x, axis in cases[6:9]]  # negative axes, n = 32
  ys = fwht_many([x for x, _ in cases], [(axis, None) for _, axis in cases])
  for (x, axis), y in zip(cases, ys):
    assert_close32(y, reference(x, axis))


def test_hadamard_matrix_is_sylvester_orthonormal_and_what_fwht_computes():
  for n in [1, 2, 4, 64, 256]:
    h = hadamard_matrix(n)
    assert h.dtype == np.float64 and h.shape == (n, n)
    np.testing.assert_array_equal(h * math.sqrt(n), dense_hadamard(n))
    np.testing.assert_allclose(h @ h.T, np.eye(n), rtol=0, atol=1e-13)
    np.testing.assert_array_equal(h, h.T)
  y = np.asarray(jitted(-1, None)(np.eye(64, dtype=np.float32)))
  np.testing.assert_allclose(y, hadamard_matrix(64), rtol=0, atol=1e-7)


def test_float64_matches_to_float64_rounding():
  x = normal((4, 512), seed=1, dtype=np.float64)
  with jax.enable_x64(True):
    y = jax.jit(fwht)(jnp.asarray(x))
    assert y.dtype == jnp.float64
    np.testing.assert_allclose(np.asarray(y), reference(x), rtol=0, atol=1e-14 * np.abs(x).max() * math.sqrt(512))


def test_narrow_floats_compute_in_float32_and_round_once():
  dtypes = [jnp.bfloat16, jnp.float16, jnp.float8_e4m3fn]
  x = jnp.asarray(normal((3, 64), seed=2))

  @jax.jit
  def both(x):
    return [(fwht(x.astype(d)), fwht(x.astype(d).astype(jnp.float32)).astype(d)) for d in dtypes]

  for d, (y, expected) in zip(dtypes, both(x)):
    assert y.dtype == d
    np.testing.assert_array_equal(np.asarray(y.astype(jnp.float32)), np.asarray(expected.astype(jnp.float32)))


# ---- block-diagonal transforms --------------------------------------------------------------------------------
def test_block_diagonal_against_scipy_block_diag():
  assert largest_block(384) == 128
  x96 = normal((4, 96), seed=3)
  x384 = normal((3, 384, 2), seed=4)
  cases = [(x96, -1, 32, 32), (np.ascontiguousarray(x96.T), 0, 32, 32), (x384, 1, "auto", 128),
           (x384, 1, 128, 128)]
  for n, block in [(64, 1), (64, 2), (64, 8), (64, 64), (48, 16), (40, 8), (6, 2)]:
    cases.append((normal((2, n), seed=n * block), -1, block, block))
  ys = fwht_many([c[0] for c in cases], [(axis, block) for _, axis, block, _ in cases])
  for (x, axis, _, b), y in zip(cases, ys):
    assert_close32(y, reference(x, axis, block=b))
  np.testing.assert_array_equal(ys[2], ys[3])  # "auto" is exactly block=largest_block(n)


def test_block_one_is_the_identity_and_auto_of_odd_length_too():
  x = normal((2, 7), seed=5)
  np.testing.assert_array_equal(np.asarray(fwht(x, block=1)), x)
  np.testing.assert_array_equal(np.asarray(fwht(x, block="auto")), x)


def test_largest_block():
  assert [largest_block(n) for n in (1, 2, 3, 12, 96, 384, 1024, 4095)] == [1, 2, 1, 4, 32, 128, 1024, 1]
  assert largest_block(np.int64(48)) == 16


# ---- algebraic properties -------------------------------------------------------------------------------------
def test_self_inverse_and_norm_preserving():
  xs = [normal((6, n), seed=6 + n) for n in [1, 2, 8, 32, 512]]
  twice = jax.jit(lambda xs: [(fwht(x), fwht(fwht(x))) for x in xs])
  for x, (y, back) in zip(xs, twice(xs)):
    assert_close32(back, x)
    np.testing.assert_allclose(np.linalg.norm(np.asarray(y, np.float64), axis=-1), np.linalg.norm(x, axis=-1),
                               rtol=RTOL32)


def test_round_trip_is_exact_for_small_integers_when_block_is_a_power_of_four():
  # With |x| <= 100 and n = 4**j <= 256 every partial sum of either pass is a multiple of 2**-j below
  # 100 * n**2 / 2**j in magnitude, so it fits float32's 24 bits; the scaling is by 2**-j: nothing rounds.
  xs = [np.random.default_rng(n).integers(-100, 101, (3, n)).astype(np.float32) for n in [4, 16, 256]]
  for x, back in zip(xs, jax.jit(lambda xs: [fwht(fwht(x)) for x in xs])(xs)):
    np.testing.assert_array_equal(np.asarray(back), x)


def test_odd_levels_scale_by_rounded_inverse_sqrt2():
  y = np.asarray(fwht(np.ones((1, 2), np.float32)))
  assert y.tolist() == [[float(np.float32(2) * np.float32(math.sqrt(0.5))), 0.0]]


def test_linearity_and_folding_out_of_a_matmul():
  x, y = normal((3, 128), seed=7), normal((3, 128), seed=8)
  a, b = np.float32(1.5), np.float32(-0.25)
  fx, fy, fxy = fwht_many([x, y, a * x + b * y], [(-1, None)] * 3)
  assert_close32(fxy, a * fx + b * fy)
  x, w = normal((8, 96), seed=9), normal((96, 5), seed=10)
  rx, rw = fwht_many([x, w], [(-1, 32), (0, 32)])
  assert_close32(rx @ rw, x.astype(np.float64) @ w, rtol=1e-5)


@st.composite
def configs(draw):
  ndim = draw(st.integers(1, 3))
  axis = draw(st.integers(-ndim, ndim - 1))
  shape = [draw(st.sampled_from([0, 1, 3])) for _ in range(ndim)]
  kind = draw(st.sampled_from(["pow2", "block", "auto"]))
  if kind == "pow2":
    n, block = draw(st.sampled_from([1, 2, 8, 32])), None
  else:
    b = draw(st.sampled_from([1, 2, 4, 16]))
    n = b * draw(st.sampled_from([1, 3, 6]))
    block = b if kind == "block" else "auto"
  shape[axis] = n
  return tuple(shape), axis, block, draw(st.integers(0, 2 ** 32 - 1))


@settings(deadline=None, max_examples=25)
@given(configs())
def test_property_matches_reference_and_inverts(config):
  shape, axis, block, seed = config
  x = normal(shape, seed=seed)
  b = block if isinstance(block, int) else largest_block(shape[axis]) if block == "auto" else None
  f = jitted(axis, block)
  y = f(x)
  assert y.shape == x.shape and y.dtype == jnp.float32
  assert_close32(y, reference(x, axis, b))
  assert_close32(f(y), x)


# ---- transformations ------------------------------------------------------------------------------------------
def test_jit_matches_eager():
  x = normal((2, 24), seed=11)
  f = jax.jit(fwht, static_argnames=("axis", "block"))
  np.testing.assert_array_equal(np.asarray(f(x, axis=1, block=8)), np.asarray(fwht(x, axis=1, block=8)))


def test_vmap_equals_the_batched_call():
  x = normal((5, 64, 3), seed=12)

  @jax.jit
  def variants(x):
    return [fwht(x, axis=1), jax.vmap(lambda v: fwht(v, axis=0))(x),
            jax.vmap(lambda v: fwht(v, axis=-1), in_axes=2, out_axes=2)(x),
            jnp.swapaxes(jax.vmap(jax.vmap(fwht))(jnp.swapaxes(x, 1, 2)), 1, 2)]

  batched, *mapped = (np.asarray(y) for y in variants(x))
  for y in mapped:
    np.testing.assert_array_equal(y, batched)


@pytest.mark.parametrize("shape,axis", [((0, 8), -1), ((2, 0, 16), -1), ((8, 0), 0), ((0, 3, 0, 4), 3),
                                        ((3, 0), 1)])
def test_zero_size_arrays(shape, axis):
  x = jnp.zeros(shape)
  assert jitted(axis, None)(x).shape == shape
  assert jax.jit(jax.vmap(lambda v: fwht(v, axis)))(jnp.zeros((0, *shape))).shape == (0, *shape)


@pytest.mark.parametrize("block", [None, 4])
def test_grad_vjp_and_jvp_are_the_transform(block):
  x, w = normal((3, 32), seed=13), normal((3, 32), seed=14)

  @jax.jit
  def derivatives(x, w):
    g = jax.grad(lambda v: jnp.sum(w * fwht(v, block=block)))(x)
    _, vjp = jax.vjp(lambda v: fwht(v, 0, block=block), x.T)  # a cotangent of any shape, along axis 0
    _, tangent = jax.jvp(lambda v: fwht(v, block=block), (x,), (w,))
    return g, vjp(w.T)[0], tangent

  g, ct, tangent = derivatives(x, w)
  assert_close32(g, reference(w, block=block))
  assert_close32(ct, reference(w.T, 0, block=block))
  assert_close32(tangent, reference(w, block=block))


def test_grad_under_jit_and_vmap():
  x, w = normal((4, 16), seed=15), normal((16,), seed=16)
  g = jax.jit(jax.vmap(jax.grad(lambda v: jnp.dot(w, fwht(v)))))(x)
  assert_close32(g, np.broadcast_to(reference(w), x.shape))


@pytest.mark.parametrize("block", [None, 2])
def test_second_derivatives_of_a_quadratic_form(block):
  # q(x) = sum(d * (H x)**2) has Hessian 2 H^T diag(d) H.
  n = 8
  d, x, u = normal((n,), seed=17), normal((n,), seed=18), normal((n,), seed=19)
  h = dense_matrix(n, block or n)  # symmetric, so x @ h == h @ x

  def q(v):
    return jnp.sum(d * fwht(v, block=block) ** 2)

  @jax.jit
  def second(x):
    hessian = jax.hessian(q)(x)  # forward over reverse
    hvp = jax.grad(lambda v: jnp.vdot(u, jax.grad(q)(v)))(x)  # reverse over reverse
    return hessian, hvp

  hessian, hvp = second(x)
  np.testing.assert_allclose(np.asarray(hessian), 2 * h.T @ np.diag(d) @ h, rtol=0, atol=1e-5)
  np.testing.assert_allclose(np.asarray(hvp), 2 * h.T @ (d * (h @ u)), rtol=0, atol=1e-5)


# ---- cost: butterflies, not a dense matmul --------------------------------------------------------------------
N_BIG = 4096
BIG = jax.ShapeDtypeStruct((256, N_BIG), jnp.float32)


@functools.cache
def compiled_big():
  return jax.jit(fwht).lower(BIG).compile()


def _equations(jaxpr):
  """The equations of a jaxpr and of the jaxprs nested in them (custom_jvp calls, pjit, ...)."""
  for eqn in jaxpr.eqns:
    yield eqn
    for param in eqn.params.values():
      for sub in param if isinstance(param, tuple | list) else (param,):
        sub = getattr(sub, "jaxpr", sub)
        if hasattr(sub, "eqns"):
          yield from _equations(sub)


@pytest.mark.parametrize("mode", ["forward", "vjp", "jvp"])
def test_n_log_n_additions_and_no_dense_matmul(mode):
  fn = {"forward": fwht,
        "vjp": lambda x: jax.vjp(fwht, x)[1](x)[0],
        "jvp": lambda x: jax.jvp(fwht, (x,), (x,))[1]}[mode]
  closed = jax.make_jaxpr(fn)(BIG)
  eqns = list(_equations(closed.jaxpr))
  names = {e.primitive.name for e in eqns}
  assert not names & {"dot_general", "conv_general_dilated"}, names
  assert all(np.size(c) < N_BIG for c in closed.consts)  # no n x n matrix hidden in a constant
  # The transform: exactly log2(n) = 12 additions or subtractions per element (6 passes of two butterfly
  # levels). vjp and jvp trace the primal too, and the transpose also sums the four padded outputs of each
  # pass; still O(log n) per element (a dense matmul would be n = 4096).
  adds = sum(math.prod(e.outvars[0].aval.shape) for e in eqns if e.primitive.name in ("add", "sub", "add_any"))
  if mode == "forward":
    assert adds == BIG.size * 12
  else:
    assert BIG.size * 24 <= adds <= BIG.size * 48
  assert sum(e.primitive.name == "reshape" for e in eqns) >= 6


def test_compiled_passes_are_materialized():
  hlo = compiled_big().as_text()
  assert " dot(" not in hlo and "convolution(" not in hlo
  assert f"{N_BIG},{N_BIG}]" not in hlo
  # One kernel per pass: XLA must not fuse passes into one kernel that recomputes 4**k terms per output.
  assert hlo.count(" fusion(") >= 6


def test_runs_on_a_large_batch():
  n = N_BIG
  x = normal((256, n), seed=20)
  y = np.asarray(compiled_big()(x))
  # Reference for a few columns: H[i, j] = (-1)**popcount(i & j) / sqrt(n).
  cols = np.array([0, 1, 7, 1000, 4095])
  signs = np.array([[(-1.0) ** bin(i & j).count("1") for j in cols] for i in range(n)])
  assert_close32(y[:, cols], x.astype(np.float64) @ signs / math.sqrt(n))
  np.testing.assert_allclose(np.linalg.norm(y, axis=-1), np.linalg.norm(x, axis=-1), rtol=RTOL32)
  assert_close32(compiled_big()(y), x)


# ---- bad input ------------------------------------------------------------------------------------------------
def test_non_power_of_two_length_needs_a_block():
  with pytest.raises(ValueError, match=r"length 96 along axis=-1.*not a power of two.*block='auto' uses 32"):
    fwht(jnp.ones((2, 96)))
  with pytest.raises(ValueError, match=r"length 12 along axis=0"):
    fwht(jnp.ones((12, 4)), axis=0)


def test_block_must_be_a_power_of_two_dividing_the_length():
  x = jnp.ones((2, 96))
  with pytest.raises(ValueError, match="block=24 must be a positive power of two"):
    fwht(x, block=24)
  with pytest.raises(ValueError, match="block=0 must be a positive power of two"):
    fwht(x, block=0)
  with pytest.raises(ValueError, match="block=64 does not divide the length 96 of x along axis=-1"):
    fwht(x, block=64)
  with pytest.raises(ValueError, match="block='full'"):
    fwht(x, block="full")
  with pytest.raises(TypeError, match="block=32.0 must be an integer"):
    fwht(x, block=32.0)
  with pytest.raises(TypeError, match="block=True must be an integer"):
    fwht(x, block=True)


@pytest.mark.parametrize("dtype", [jnp.int32, jnp.uint8, jnp.bool_, jnp.complex64])
def test_non_float_input_is_a_type_error(dtype):
  with pytest.raises(TypeError, match=f"x must be a float array, got dtype {jnp.dtype(dtype)}"):
    fwht(jnp.ones(4, dtype))


def test_zero_d_input_is_rejected():
  with pytest.raises(ValueError, match="x must have at least one dimension"):
    fwht(jnp.float32(1.0))
  with pytest.raises(TypeError, match="x must be a float array"):
    fwht(np.array([1, 2]))


def test_axis_out_of_range_or_not_an_int():
  x = jnp.ones((2, 4))
  with pytest.raises(ValueError, match="axis=2 is out of range for an array with 2 dimensions"):
    fwht(x, axis=2)
  with pytest.raises(ValueError, match="axis=-3 is out of range"):
    fwht(x, axis=-3)
  with pytest.raises(TypeError, match="axis=1.0 must be an integer"):
    fwht(x, axis=1.0)


def test_bad_orders_for_the_helpers():
  with pytest.raises(ValueError, match="n=12 must be a positive power of two"):
    hadamard_matrix(12)
  with pytest.raises(ValueError, match="n=0 must be a positive power of two"):
    hadamard_matrix(0)
  with pytest.raises(ValueError, match="n=0 must be positive"):
    largest_block(0)
  with pytest.raises(TypeError, match="n=2.0 must be an integer"):
    largest_block(2.0)
