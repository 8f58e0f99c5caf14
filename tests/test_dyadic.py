"""lpnum.dyadic against independent references: the gemmlowp/TFLite formulas in NumPy int64 and their exact
rational meaning (tests/support/dyadic_reference.py), on edge cases (INT32_MIN, INT32_MAX, ties at every shift,
shifts 0..31, multipliers near 2^31) and random int32 values; eager, jit and vmap; bad inputs."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import dyadic_reference as ref
from lpnum import dyadic
from testing import TRANSFORMS

I32 = np.int32
MIN, MAX = ref.INT32_MIN, ref.INT32_MAX
EDGES = np.array([MIN, MIN + 1, MIN + 2, -(2**30) - 1, -(2**30), -65537, -65536, -3, -2, -1, 0, 1, 2, 3, 65535,
                  65536, 2**30, 2**30 + 1, MAX - 1, MAX], I32)
MULTIPLIERS = np.array([0, 1, 2**30, 2**30 + 1, 2**30 + 2**29, MAX - 1, MAX, 1717986918], I32)


def _random_int32(n: int, seed: int) -> np.ndarray:
  return np.random.default_rng(seed).integers(MIN, MAX, n, endpoint=True, dtype=np.int64).astype(I32)


# ---- saturating_rounding_doubling_high_mul ------------------------------------------------------------------------
@pytest.mark.parametrize("transform", TRANSFORMS.values(), ids=TRANSFORMS.keys())
def test_high_mul_edges_every_pair(transform):
  a, b = np.meshgrid(EDGES, np.concatenate([EDGES, MULTIPLIERS]), indexing="ij")
  got = np.asarray(transform(dyadic.saturating_rounding_doubling_high_mul)(a, b))
  np.testing.assert_array_equal(got, ref.srdhm(a, b))
  assert got[0, 0] == MAX  # INT32_MIN * INT32_MIN saturates
  exact = np.array([[ref.exact_high_mul(int(x), int(y)) for y in row_b] for x, row_b in zip(a[:, 0], b)])
  np.testing.assert_array_equal(got, exact)


def test_high_mul_random_matches_int64_reference():
  a, b = _random_int32(20_000, 1), _random_int32(20_000, 2)
  m = np.random.default_rng(3).integers(2**30, 2**31, 20_000).astype(I32)
  np.testing.assert_array_equal(np.asarray(jax.jit(dyadic.saturating_rounding_doubling_high_mul)(a, b)),
                                ref.srdhm(a, b))
  np.testing.assert_array_equal(np.asarray(dyadic.saturating_rounding_doubling_high_mul(a, m)), ref.srdhm(a, m))


def test_high_mul_ties_round_up():
  """a * b = (2k + 1) * 2^30 is exactly halfway between two results: gemmlowp's nudge rounds it up (toward
  +infinity), so negative ties go toward zero."""
  a = np.array([1, 3, -1, -3, 5, -5, 2**20 + 1], I32)
  b = np.full_like(a, 2**30)
  got = np.asarray(dyadic.saturating_rounding_doubling_high_mul(a, b))
  np.testing.assert_array_equal(got, [1, 2, 0, -1, 3, -2, 2**19 + 1])
  np.testing.assert_array_equal(got, [ref.exact_high_mul(int(x), 2**30) for x in a])


# ---- rounding_divide_by_pot ---------------------------------------------------------------------------------------
def _ties_and_neighbours(e: int) -> np.ndarray:
  """Values around x = (2k + 1) 2^(e-1) (ties) for several k, both signs, plus the edges."""
  if e == 0:
    return EDGES
  half = 2 ** (e - 1)
  k = np.array([0, 1, 2, 7, (2**31 // 2**e) - 1], np.int64)
  ties = (2 * k + 1) * half
  vals = np.concatenate([ties - 1, ties, ties + 1, -ties - 1, -ties, -ties + 1, EDGES.astype(np.int64)])
  return np.clip(vals, MIN, MAX).astype(I32)


@pytest.mark.parametrize("transform", TRANSFORMS.values(), ids=TRANSFORMS.keys())
def test_divide_by_pot_ties_and_edges_at_every_shift(transform):
  x = np.concatenate([_ties_and_neighbours(e) for e in range(32)])
  e = np.concatenate([np.full(_ties_and_neighbours(e).size, e, I32) for e in range(32)])
  got = np.asarray(transform(dyadic.rounding_divide_by_pot)(x, e))
  np.testing.assert_array_equal(got, ref.rdbp(x, e))
  np.testing.assert_array_equal(got, [ref.exact_divide_by_pot(int(v), int(k)) for v, k in zip(x, e)])
  for k in (0, 1, 17, 31):  # a scalar exponent too
    np.testing.assert_array_equal(np.asarray(transform(dyadic.rounding_divide_by_pot)(x, k)), ref.rdbp(x, k))


def test_divide_by_pot_per_element_exponents_random():
  x = _random_int32(20_000, 4)
  e = np.random.default_rng(5).integers(0, 32, x.size).astype(I32)
  np.testing.assert_array_equal(np.asarray(jax.jit(dyadic.rounding_divide_by_pot)(x, e)), ref.rdbp(x, e))


# ---- multiply_by_quantized_multiplier and requantize --------------------------------------------------------------
@pytest.mark.parametrize("transform", TRANSFORMS.values(), ids=TRANSFORMS.keys())
def test_multiply_by_quantized_multiplier_every_shift(transform):
  x = np.concatenate([EDGES, _random_int32(500, 6)])[:, None, None]
  m = np.array([2**30, 2**30 + 1, 1717986918, MAX - 1, MAX], I32)[None, :, None]
  s = np.arange(-31, 32, dtype=I32)[None, None, :]
  np.testing.assert_array_equal(np.asarray(transform(dyadic.multiply_by_quantized_multiplier)(x, m, s)),
                                ref.mbqm(x, m, s))


def test_multiply_by_quantized_multiplier_random_per_channel():
  rng = np.random.default_rng(7)
  x = _random_int32(64 * 32, 8).reshape(64, 32) >> rng.integers(0, 31, (64, 32)).astype(I32)  # all magnitudes
  m = rng.integers(2**30, 2**31, 32).astype(I32)
  s = rng.integers(-31, 32, 32).astype(I32)
  np.testing.assert_array_equal(np.asarray(jax.jit(dyadic.multiply_by_quantized_multiplier)(x, m, s)),
                                ref.mbqm(x, m, s))


@pytest.mark.parametrize("dtype", [np.int8, np.uint8, np.int16, np.uint16])
@pytest.mark.parametrize("transform", TRANSFORMS.values(), ids=TRANSFORMS.keys())
def test_requantize_per_channel_saturates_to_the_output_range(dtype, transform):
  rng = np.random.default_rng(9)
  info = np.iinfo(dtype)
  acc = np.concatenate([rng.integers(-(2**20), 2**20, (200, 16)), np.tile(EDGES[:, None], (1, 16))]).astype(I32)
  m0, shift = dyadic.quantize_multiplier(rng.uniform(1e-6, 3.0, 16) * 2.0 ** rng.integers(-8, 4, 16))
  zp = rng.integers(info.min, info.max, 16, endpoint=True).astype(I32)
  got = transform(lambda a, m, s, z: dyadic.requantize(a, m, s, z, dtype))(acc, m0, shift, zp)
  assert got.dtype == dtype
  np.testing.assert_array_equal(np.asarray(got), ref.requantize(acc, m0, shift, zp, dtype))
  assert np.asarray(got).min() == info.min and np.asarray(got).max() == info.max  # both ends saturate somewhere


def test_requantize_under_vmap_per_example():
  acc = _random_int32(8 * 5, 10).reshape(8, 5) >> 10
  m0, shift = dyadic.quantize_multiplier(np.geomspace(1e-4, 0.9, 8))
  got = jax.vmap(lambda a, m, s: dyadic.requantize(a, m, s, 3))(acc, m0, shift)
  np.testing.assert_array_equal(np.asarray(got), ref.requantize(acc, m0[:, None], shift[:, None], 3, np.int8))


def test_requantize_empty_and_zero_d():
  m0, shift = dyadic.quantize_multiplier(0.5)
  assert dyadic.requantize(jnp.zeros((0, 3), jnp.int32), m0, shift).shape == (0, 3)
  assert int(dyadic.requantize(jnp.int32(-7), m0, shift)) == -3  # -3.5: the high multiply's tie rounds up


# ---- quantize_multiplier ------------------------------------------------------------------------------------------
def test_quantize_multiplier_matches_exact_rounding():
  rng = np.random.default_rng(11)
  reals = np.concatenate([
      rng.uniform(0.5, 1, 300) * 2.0 ** rng.integers(-31, 1, 300), rng.uniform(1, 2, 100) * 2.0 ** rng.integers(0, 30, 100),
      [2.0**-32, 0.5, 1.0, 1.5, 2.0**31 - 1, 1 - 2.0**-40, 0.1, 1 / 3, 2.0**-31 * (1 - 2.0**-33)]])
  m0, shift = dyadic.quantize_multiplier(reals)
  assert m0.dtype == np.int32 and shift.dtype == np.int32 and m0.shape == reals.shape
  for r, m, s in zip(reals, m0.tolist(), shift.tolist()):
    assert (m, s) == ref.exact_multiplier(float(r)), r
    assert 2**30 <= m < 2**31 and -31 <= s <= 31
    assert abs(m * 2.0 ** (-31 - s) - r) <= r * 2.0**-31


def test_quantize_multiplier_float32_input_and_carry():
  m0, shift = dyadic.quantize_multiplier(np.float32(0.3))
  assert (int(m0), int(shift)) == ref.exact_multiplier(float(np.float32(0.3)))
  m0, shift = dyadic.quantize_multiplier(1 - 2.0**-40)  # the significand rounds up to 2^31: carried
  assert (int(m0), int(shift)) == (2**30, -1)


@pytest.mark.parametrize("real, match", [
    (0.0, "finite and positive"), (-0.5, "finite and positive"), (float("nan"), "finite and positive"),
    (float("inf"), "finite and positive"), (-0.0, "finite and positive"), (2.0**-34, "out of range"),
    (2.0**31, "out of range"), ([0.5, -1.0], "finite and positive")])
def test_quantize_multiplier_rejects_values(real, match):
  with pytest.raises(ValueError, match=f"real.*{match}|{match}"):
    dyadic.quantize_multiplier(real)


@pytest.mark.parametrize("real", ["0.5", True, None, object(), 1j, np.array(["a"])])
def test_quantize_multiplier_rejects_types(real):
  with pytest.raises(TypeError, match="real"):
    dyadic.quantize_multiplier(real)


def test_quantize_multiplier_refuses_tracers():
  with pytest.raises(TypeError, match="real must be concrete"):
    jax.jit(dyadic.quantize_multiplier)(0.5)


# ---- bad inputs to the integer functions --------------------------------------------------------------------------
def test_integer_functions_name_bad_arguments():
  x = jnp.ones(4, jnp.int32)
  with pytest.raises(TypeError, match="a must be int32, got dtype float32"):
    dyadic.saturating_rounding_doubling_high_mul(jnp.ones(4), x)
  with pytest.raises(TypeError, match="b must be int32, got dtype int64|b must be int32, got dtype int8"):
    dyadic.saturating_rounding_doubling_high_mul(x, np.ones(4, np.int8))
  with pytest.raises(ValueError, match="b=4294967296 must be in the int32 range"):
    dyadic.saturating_rounding_doubling_high_mul(x, 2**32)
  with pytest.raises(TypeError, match="x=True must be an int32"):
    dyadic.rounding_divide_by_pot(True, 1)
  with pytest.raises(ValueError, match=r"exponent=32 must be in \[0, 31\]"):
    dyadic.rounding_divide_by_pot(x, 32)
  with pytest.raises(ValueError, match=r"exponent=-1 must be in \[0, 31\]"):
    dyadic.rounding_divide_by_pot(x, np.array([0, 1, -1, 2], np.int32))
  with pytest.raises(ValueError, match=r"shift=32 must be in \[-31, 31\]"):
    dyadic.multiply_by_quantized_multiplier(x, 2**30, 32)
  with pytest.raises(ValueError, match=r"multiplier=-5 must be in \[0, 2147483647\]"):
    dyadic.multiply_by_quantized_multiplier(x, -5, 0)
  with pytest.raises(TypeError, match="multiplier=0.5 must be an int32"):
    dyadic.multiply_by_quantized_multiplier(x, 0.5, 0)
  with pytest.raises(TypeError, match="acc must be int32, got dtype int8"):
    dyadic.requantize(jnp.ones(3, jnp.int8), 2**30, 0)
  with pytest.raises(TypeError, match="out_dtype=float32 must be one of"):
    dyadic.requantize(x, 2**30, 0, out_dtype=jnp.float32)
  with pytest.raises(ValueError, match=r"zero_point=200 must be in \[-128, 127\]"):
    dyadic.requantize(x, 2**30, 0, zero_point=200)


def test_traced_shift_is_not_checked_but_runs():
  """Values are checked where concrete; under jit a shift is a tracer and passes (the documented range holds)."""
  f = jax.jit(lambda x, s: dyadic.multiply_by_quantized_multiplier(x, jnp.int32(2**30), s))
  assert int(f(jnp.int32(8), jnp.int32(2))) == 1
  assert math.isclose(float(f(jnp.int32(8), jnp.int32(-3))), 32)


@pytest.mark.parametrize("platform", ["tpu", "cuda"])
def test_requantize_lowers_to_32_bit_integers_only_for_accelerators(platform):
  """Exported for a TPU or GPU from this CPU: no float and no 64-bit integer type anywhere in the program."""
  f = lambda a, m, s: dyadic.requantize(a, m, s, 3)  # noqa: E731
  args = [jax.ShapeDtypeStruct(shape, jnp.int32) for shape in ((4, 8), (8,), (8,))]
  text = jax.export.export(jax.jit(f), platforms=[platform])(*args).mlir_module()
  assert "stablehlo.multiply" in text and "ui32" in text
  for banned in ("f16", "bf16", "f32", "f64", "i64"):
    assert banned not in text, banned
