"""Scaled quantization (per-tensor, per-channel, per-group, tiles) against plain NumPy references.

The references below are written the obvious way: reshape into blocks, absmax, ``scale = amax / qmax`` as a
float32 division, ``np.round(x / scale)`` (NumPy's float32 division and round-half-even), clip, multiply back.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest

import lpnum

from scaled_reference import TINY, float_elements, int_elements, mse_search, ref_fp8, ref_int
from tiers import default_share

F32 = np.float32


def sqnr_db(x: np.ndarray, y: np.ndarray) -> float:
  return 10 * math.log10(float(np.sum(x.astype(np.float64) ** 2)) / float(np.sum((x - y).astype(np.float64) ** 2)))


def _data(shape, seed=0, kind="normal"):
  rng = np.random.default_rng(seed)
  if kind == "normal":
    return rng.standard_normal(shape).astype(F32)
  if kind == "laplace":
    return rng.laplace(size=shape).astype(F32)
  return rng.standard_t(2, size=shape).astype(F32)


def _same(a, b) -> None:
  a, b = np.asarray(a, F32), np.asarray(b, F32)
  np.testing.assert_array_equal(a.view(np.uint32), b.view(np.uint32))


# ---- integer and FP8 elements, float32 scales --------------------------------------------------------------
INT_CASES = [
    ("int8", 8, False, lpnum.per_channel(0), (1, 256)),
    ("int8", 8, False, lpnum.per_channel(1), (64, 1)),
    ("int4", 4, False, lpnum.per_block(32), (1, 32)),
    ("int4", 4, False, lpnum.per_block(64, axis=0), (64, 1)),
    ("int8_narrow", 8, True, lpnum.per_tensor(), (64, 256)),
    ("int4", 4, False, lpnum.per_tile((16, 64)), (16, 64)),
    # Blocks of 8 and 16 run grouped into rows of 32, blocks over 64 split into rows of 64 (lpnum.scaled.xla_cpu.row_view).
    ("int8", 8, False, lpnum.per_block(8), (1, 8)),
    ("int4", 4, False, lpnum.per_block(16), (1, 16)),
    ("int4", 4, False, lpnum.per_block(128), (1, 128)),
    ("int8", 8, False, lpnum.per_tile((8, 16)), (8, 16)),
]


@pytest.mark.parametrize("name,bits,narrow,gran,block", INT_CASES, ids=lambda v: str(v))
@pytest.mark.parametrize("kind", default_share(["normal", "laplace", "t2"], keep=["t2"]))  # heavy tails by default
def test_int_matches_numpy(name, bits, narrow, gran, block, kind):
  x = _data((64, 256), kind=kind)
  fmt = lpnum.ScaledFormat(name, gran)
  want, q_ref, scale_ref = ref_int(x, bits, block, narrow)
  got = jax.jit(lambda v: lpnum.fake_quantize(v, fmt))(x)
  _same(got, want)
  q = jax.jit(lambda v: lpnum.quantize_scaled(v, fmt))(x)
  _same(lpnum.dequantize(q), want)
  codes = np.asarray(q.element_codes).astype(np.int64)
  codes = np.where(codes >= 2 ** (bits - 1), codes - 2 ** bits, codes)
  np.testing.assert_array_equal(codes, q_ref.reshape(x.shape).astype(np.int64))
  np.testing.assert_array_equal(np.asarray(q.scales).view(F32), scale_ref.reshape(q.scales.shape))
  assert abs(sqnr_db(x, np.asarray(got)) - sqnr_db(x, want)) < 0.1


@pytest.mark.parametrize("gran,block", [(lpnum.per_block(8), (1, 8)), (lpnum.per_block(16), (1, 16)),
                                        (lpnum.per_block(128), (1, 128)), (lpnum.per_tile((16, 16)), (16, 16))],
                         ids=str)
@pytest.mark.parametrize("exponent", default_share([-100, -128, -140], keep=[-140]))  # subnormal amax by default
def test_int_tiny_blocks_match_numpy(gran, block, exponent):
  """Blocks whose scales or elements are subnormal take the exact pass (over re-viewed rows where the blocks are
  short or long): against NumPy, which divides exactly."""
  x = _data((64, 256), seed=17) * F32(2.0 ** exponent)
  x[:, :128] *= F32(2.0 ** 20)  # mixed magnitudes: some blocks normal, some not
  want = ref_int(x, 4, block)[0]
  fmt = lpnum.ScaledFormat("int4", gran)
  _same(jax.jit(lambda v: lpnum.fake_quantize(v, fmt))(x), want)
  _same(lpnum.dequantize(jax.jit(lambda v: lpnum.quantize_scaled(v, fmt))(x)), want)


@pytest.mark.parametrize("dtype,name", [(ml_dtypes.float8_e4m3fn, "float8_e4m3fn"),
                                        (ml_dtypes.float8_e5m2, "float8_e5m2")])
@pytest.mark.parametrize("gran,block", [(lpnum.per_channel(0), (1, 256)), (lpnum.per_block(32), (1, 32)),
                                        (lpnum.per_block(16), (1, 16)), (lpnum.per_tile((16, 16)), (16, 16))],
                         ids=str)
def test_fp8_matches_numpy(dtype, name, gran, block):
  x = _data((64, 256), seed=1, kind="t2")
  fmt = lpnum.ScaledFormat(name, gran)
  _same(jax.jit(lambda v: lpnum.fake_quantize(v, fmt))(x), ref_fp8(x, dtype, block))


def test_division_is_exact_not_reciprocal():
  """XLA would turn x / s into x * (1 / s); rows where that changes a rounding must follow the division."""
  x = _data((4096, 64), seed=3)
  fmt = lpnum.ScaledFormat("int8", lpnum.per_channel(0))
  want, _, _ = ref_int(x, 8, (1, 64))
  _same(jax.jit(lambda v: lpnum.fake_quantize(v, fmt))(x), want)
  # The trap exists: the reciprocal product differs from the quotient somewhere in this data.
  scale = np.clip(np.max(np.abs(x), 1, keepdims=True) / F32(127), TINY, None).astype(F32)
  assert np.any(x * (F32(1) / scale) != x / scale)


def test_bfloat16_scales_are_rounded_in_bfloat16():
  x = _data((32, 64), seed=4)
  fmt = lpnum.ScaledFormat("int8", lpnum.per_channel(0), "bfloat16")
  scale = (np.max(np.abs(x), 1, keepdims=True) / F32(127)).astype(ml_dtypes.bfloat16).astype(F32)
  want = (np.clip(np.round(x / scale), -128, 127).astype(F32) + F32(0)) * scale
  q = lpnum.quantize_scaled(x, fmt)
  assert q.scales.dtype == np.uint16
  _same(lpnum.dequantize(q), want)


def test_rceil_rounds_general_scales_up():
  x = _data((32, 64), seed=5)
  fmt = lpnum.ScaledFormat("float8_e4m3fn", lpnum.per_channel(0), "bfloat16", "rceil")
  ideal = np.max(np.abs(x), 1, keepdims=True) / F32(448)
  scale = np.asarray(lpnum.decode(lpnum.quantize_scaled(x, fmt).scales, "bfloat16")).reshape(ideal.shape)
  assert np.all(scale >= ideal)
  assert np.all(np.abs(x / scale) <= 448)


def test_asymmetric_uint8_matches_numpy():
  x = _data((16, 128), seed=6) + F32(0.7)
  fmt = lpnum.ScaledFormat("uint8", lpnum.per_channel(0), asymmetric=True)
  hi = np.maximum(x.max(1, keepdims=True), 0)
  lo = np.minimum(x.min(1, keepdims=True), 0)
  scale = np.clip((hi - lo) / F32(255), TINY, None).astype(F32)
  zero = np.clip(np.round(F32(0) - lo / scale), 0, 255)
  q = np.clip(np.round(x / scale) + zero, 0, 255)
  want = ((q - zero).astype(F32) * scale + F32(0)).astype(F32)
  got = lpnum.quantize_scaled(x, fmt)
  np.testing.assert_array_equal(np.asarray(got.zero_point), zero.astype(np.int32))
  np.testing.assert_array_equal(np.asarray(got.element_codes), q.astype(np.uint8))
  _same(lpnum.dequantize(got), want)
  _same(lpnum.fake_quantize(x, fmt), want)


def test_percentile_clipping_matches_numpy():
  x = _data((8, 256), seed=7, kind="t2")
  fmt = lpnum.ScaledFormat("int8", lpnum.per_channel(0), calibration=lpnum.percentile(99.0))
  clip = np.quantile(np.abs(x).astype(np.float64), 0.99, axis=1, keepdims=True)  # float64 interpolation
  q = lpnum.quantize_scaled(x, fmt)
  scale = np.asarray(q.scales).view(F32)
  # The interpolation is done in float32: within 2 ulps of numpy's float64 one.
  np.testing.assert_allclose(scale, (clip / 127).astype(F32), rtol=2.5e-7, atol=0)
  want = (np.clip(np.round(x / scale), -128, 127).astype(F32) + F32(0)) * scale
  _same(lpnum.dequantize(q), want)
  _same(lpnum.fake_quantize(x, fmt), want)
  assert np.sum(np.abs(x) > clip) > 0  # something was clipped


# ---- MSE calibration: the candidate search -------------------------------------------------------------------
TRANSFORMS = {"eager": lambda f: f, "jit": jax.jit}
MSE_CASES = {  # name: (format, block, NumPy elements, element max, scale dtype)
    "int4_block32": (lpnum.ScaledFormat("int4", lpnum.per_block(32), calibration=lpnum.mse(16)), (1, 32),
                     int_elements(4), 7, F32),
    "int4_block64_axis0_bf16": (lpnum.ScaledFormat("int4", lpnum.per_block(64, 0), "bfloat16",
                                                   calibration=lpnum.mse([1.0, 0.5, 0.75, 0.5])), (64, 1),
                                int_elements(4), 7, ml_dtypes.bfloat16),
    "int8_channel0": (lpnum.ScaledFormat("int8", lpnum.per_channel(0), calibration=lpnum.mse(8)), (1, 256),
                      int_elements(8), 127, F32),
    "int8_channel1": (lpnum.ScaledFormat("int8", lpnum.per_channel(1), calibration=lpnum.mse(8)), (64, 1),
                      int_elements(8), 127, F32),
    "int4_tile": (lpnum.ScaledFormat("int4", lpnum.per_tile((16, 64)), calibration=lpnum.mse(5)), (16, 64),
                  int_elements(4), 7, F32),
    "e4m3_block32": (lpnum.ScaledFormat("float8_e4m3fn", lpnum.per_block(32), calibration=lpnum.mse(8)), (1, 32),
                     float_elements(ml_dtypes.float8_e4m3fn), 448, F32),
}


@pytest.mark.parametrize("transform", default_share(TRANSFORMS.values(), keep=[jax.jit]), ids=TRANSFORMS.keys())
@pytest.mark.parametrize("kind", ["normal", "t2"])
@pytest.mark.parametrize("case", MSE_CASES, ids=str)
def test_mse_search_matches_numpy(case, kind, transform):
  fmt, block, elements, top, scale_dtype = MSE_CASES[case]
  x = _data((64, 256), seed=8, kind=kind)
  want = mse_search(x, block, fmt.calibration.ratios, elements, top, scale_dtype)
  _same(transform(lambda v: lpnum.fake_quantize(v, fmt))(x), want)
  _same(lpnum.dequantize(transform(lambda v: lpnum.quantize_scaled(v, fmt))(x)), want)


def test_mse_count_is_evenly_spaced_from_one_to_point_three():
  assert lpnum.mse(8).ratios == tuple(float(r) for r in np.linspace(1.0, 0.3, 8))
  assert lpnum.mse(1).ratios == (1.0,)


@pytest.mark.parametrize("ratios", [(1.0, 0.5), (0.5, 1.0)], ids=str)
@pytest.mark.parametrize("transform", TRANSFORMS.values(), ids=TRANSFORMS.keys())
def test_mse_search_ties_keep_the_earlier_candidate(ratios, transform):
  """A block whose two candidates have the same squared error (49, exact) but different values: the first listed
  wins. amax 14: ratio 1 gives scale 2 (49 odd integers each off by 1), ratio 0.5 gives scale 1 (only 14, clipped
  to 7, off by 7). A block of zeros ties everywhere (error 0)."""
  x = np.zeros((2, 64), F32)
  x[0, 0] = 14
  x[0, 1:50] = np.resize([1, -3, 5, -7], 49)
  fmt = lpnum.ScaledFormat("int4", lpnum.per_block(64), calibration=lpnum.mse(ratios))
  want = mse_search(x, (1, 64), ratios, int_elements(4), 7)
  by_scale = {r: int_elements(4)(x[0] / F32(14 * r / 7)) * F32(14 * r / 7) for r in ratios}
  assert np.sum((by_scale[1.0] - x[0]) ** 2) == np.sum((by_scale[0.5] - x[0]) ** 2) == 49
  np.testing.assert_array_equal(want[0], by_scale[ratios[0]])
  got = transform(lambda v: lpnum.fake_quantize(v, fmt))(x)
  _same(got, want)
  assert np.all(np.asarray(got)[1] == 0)


def test_mse_search_lowers_the_error():
  x = _data((8, 64), seed=8, kind="t2")
  fmt = lpnum.ScaledFormat("int4", lpnum.per_block(32), calibration=lpnum.mse((1.0, 0.9, 0.8, 0.7, 0.6, 0.5)))
  got = np.asarray(lpnum.fake_quantize(x, fmt))
  plain = np.asarray(lpnum.fake_quantize(x, lpnum.ScaledFormat("int4", lpnum.per_block(32))))
  assert np.sum((got - x) ** 2) < np.sum((plain - x) ** 2)


def test_dynamic_fixed_point_shares_one_exponent():
  x = _data((4, 64), seed=9)
  fmt = lpnum.ScaledFormat("int16", lpnum.per_tensor(), "float8_e8m0fnu", "ceil")
  q = lpnum.quantize_scaled(x, fmt)
  e = math.ceil(math.log2(float(np.max(np.abs(x))))) - 14
  assert int(q.scales[0, 0]) == e + 127
  want = np.clip(np.round(np.ldexp(x.astype(np.float64), -e)), -32768, 32767) * 2.0 ** e + 0.0
  _same(lpnum.dequantize(q), want.astype(F32))


# ---- edges --------------------------------------------------------------------------------------------------
def test_zero_and_tiny_blocks_give_finite_scales():
  x = np.zeros((4, 32), F32)
  x[1] = F32(2.0 ** -140)  # subnormal
  x[2, 0] = F32(1e-30)
  for fmt in (lpnum.ScaledFormat("int8", lpnum.per_channel(0)), lpnum.nvfp4.format(),
              lpnum.ScaledFormat("float8_e4m3fn", lpnum.per_channel(0), "bfloat16")):
    q = lpnum.quantize_scaled(x, fmt)
    s = np.asarray(lpnum.decode(q.scales, fmt.scale_format))
    assert np.all(np.isfinite(s)) and np.all(s > 0)
    y = np.asarray(lpnum.dequantize(q))
    assert np.all(np.isfinite(y))
    np.testing.assert_array_equal(y[0], 0)


def test_padding_of_a_ragged_last_block():
  x = _data((3, 40), seed=10)
  fmt = lpnum.ScaledFormat("int4", lpnum.per_block(16))
  with pytest.raises(ValueError, match=r"block_size=16 does not divide dimension 1 of x \(size 40\).*pad=True"):
    lpnum.quantize_scaled(x, fmt)
  q = lpnum.quantize_scaled(x, fmt, pad=True)
  assert q.scales.shape == (3, 3) and q.element_codes.shape == (3, 40)
  xp = np.pad(x, ((0, 0), (0, 8)))
  want, _, _ = ref_int(xp, 4, (1, 16))
  _same(lpnum.dequantize(q), want[:, :40])
  _same(lpnum.fake_quantize(x, fmt, pad=True), want[:, :40])


def test_static_scale():
  x = _data((4, 8), seed=11)
  fmt = lpnum.ScaledFormat("int8", lpnum.per_channel(0))
  s = np.array([[0.01], [0.02], [0.03], [0.04]], F32)
  want = (np.clip(np.round(x / s), -128, 127).astype(F32) + F32(0)) * s
  _same(lpnum.fake_quantize(x, fmt, scale=s), want)
  _same(lpnum.dequantize(lpnum.quantize_scaled(x, fmt, scale=s[:, 0][:, None])), want)
  with pytest.raises(ValueError, match="does not broadcast to the scale shape"):
    lpnum.quantize_scaled(x, fmt, scale=np.ones(3, F32))


def test_zero_d_and_empty():
  fmt = lpnum.ScaledFormat("int8")
  q = lpnum.quantize_scaled(jnp.float32(0.75), fmt)
  assert q.shape == () and lpnum.dequantize(q).shape == ()
  assert float(lpnum.dequantize(q)) == 0.75
  e = jnp.zeros((0, 32), jnp.float32)
  assert lpnum.dequantize(lpnum.quantize_scaled(e, lpnum.mx.format("mxfp4_e2m1"))).shape == (0, 32)
  assert lpnum.fake_quantize(e, "mxfp8_e4m3").shape == (0, 32)


def test_bfloat16_input_and_output():
  x = _data((4, 64), seed=12)
  fmt = lpnum.mx.format("mxfp8_e4m3")
  y32 = lpnum.fake_quantize(x, fmt)
  yb = lpnum.fake_quantize(jnp.asarray(x, jnp.bfloat16), fmt)
  assert yb.dtype == jnp.bfloat16
  xb = np.asarray(jnp.asarray(x, jnp.bfloat16), F32)
  _same(np.asarray(yb, F32), np.asarray(lpnum.fake_quantize(xb, fmt)).astype(ml_dtypes.bfloat16).astype(F32))
  assert y32.dtype == jnp.float32


def test_nan_in_float_scale_block():
  x = _data((2, 16), seed=13)
  x[0, 3] = np.nan
  y = np.asarray(lpnum.fake_quantize(x, lpnum.ScaledFormat("int8", lpnum.per_channel(0))))
  assert np.all(np.isnan(y[0])) and not np.any(np.isnan(y[1]))


# Columns of 256 and 4 * 64 reduce as elementwise maxima over slices, 262 = 2 * 131 as a plain reduction; groups
# of 16 rows over slices.
@pytest.mark.parametrize("shape,group", [((256, 16), None), ((4, 64, 16), None), ((262, 16), None),
                                         ((256, 16), 16), ((4, 64, 16), 16)])
@pytest.mark.parametrize("tiny", [False, True])
def test_per_column_special_values(shape, tiny, group):
  """Scales reduced over leading axes (one per column, or per ``group`` rows) take other abs-max paths: NaN, inf,
  both, FLT_MAX, and (``tiny``) all-zero and all-subnormal columns against the NumPy reference."""
  x = _data(shape, seed=16)
  col = x.reshape(-1, shape[-1])  # a view: the reduced axes flattened
  col[5, 0] = np.nan
  col[7, 1], col[2, 1] = np.inf, np.nan
  col[1, 2], col[-1, 2] = np.nan, -np.inf
  col[3, 3] = -np.inf
  col[0, 4] = np.finfo(F32).max
  col[4, 8] = TINY
  col[:, 9] = col[:, 9] * F32(2.0 ** -120)
  if tiny:  # any block maximum below 2^-126 sends every block down the exact path
    col[:, 5] = 0
    col[:, 6] = F32(1e-40) * np.arange(col.shape[0], dtype=F32)
    col[:, 7] = -F32(2.0 ** -149)
  if group is None:
    fmt, block = lpnum.ScaledFormat("int8", lpnum.per_channel(-1)), shape[:-1] + (1,)
  else:
    fmt, block = lpnum.ScaledFormat("int8", lpnum.per_block(group, axis=-2)), (1,) * (len(shape) - 2) + (group, 1)
  with np.errstate(all="ignore"):  # inf columns overflow the reference's q * scale, as they should
    want = ref_int(x, 8, block)[0]
  for got in (lpnum.fake_quantize(x, fmt), jax.jit(lambda v: lpnum.fake_quantize(v, fmt))(x)):
    got = np.asarray(got)
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
    _same(np.where(np.isnan(want), 0, got), np.where(np.isnan(want), 0, want))


# ---- transforms ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("fmt", default_share([lpnum.mx.format("mxfp6_e2m3"), lpnum.nvfp4.format(),
                                                lpnum.ScaledFormat("int8", lpnum.per_channel(-1)),
                                                lpnum.ScaledFormat("int4", lpnum.per_block(128))],
                                               keep=[lpnum.nvfp4.format(),
                                                     lpnum.ScaledFormat("int4", lpnum.per_block(128))]),
                         ids=str)
def test_jit_vmap_grad(fmt):
  x = _data((4, 2, 256), seed=14)
  per_row = np.stack([np.asarray(lpnum.fake_quantize(r, fmt)) for r in x])
  _same(jax.vmap(lambda r: lpnum.fake_quantize(r, fmt))(x), per_row)
  _same(jax.vmap(lambda r: lpnum.dequantize(lpnum.quantize_scaled(r, fmt)))(x), per_row)
  g = jax.grad(lambda v: jnp.sum(lpnum.fake_quantize(v, fmt) * 3.0))(jnp.asarray(x))
  np.testing.assert_array_equal(np.asarray(g), 3.0)


def test_stochastic_rounding_is_keyed():
  x = _data((4, 64), seed=15)
  fmt = lpnum.ScaledFormat("int4", lpnum.per_block(32))
  a = lpnum.fake_quantize(x, fmt, rounding="stochastic", key=jax.random.key(1))
  b = lpnum.fake_quantize(x, fmt, rounding="stochastic", key=jax.random.key(1))
  c = lpnum.fake_quantize(x, fmt, rounding="stochastic", key=jax.random.key(2))
  _same(a, b)
  assert np.any(np.asarray(a) != np.asarray(c))
  # Each result is one of the two grid neighbours of x / S.
  near = np.asarray(lpnum.fake_quantize(x, fmt))
  step = np.asarray(lpnum.dequantize(lpnum.quantize_scaled(x, fmt)))  # same grid
  assert np.all(np.abs(np.asarray(a) - x) <= np.abs(near - x) + np.abs(step - near) + 1.0)
  with pytest.raises(ValueError, match="needs key"):
    lpnum.fake_quantize(x, fmt, rounding="stochastic")


# ---- bad input ------------------------------------------------------------------------------------------------
def test_bad_inputs():
  x = jnp.ones((4, 32))
  with pytest.raises(TypeError, match="x must be float32"):
    lpnum.quantize_scaled(jnp.ones((4, 32), jnp.int32), lpnum.mx.format("mxint8"))
  with pytest.raises(ValueError, match="axis=2 is out of range"):
    lpnum.quantize_scaled(x, lpnum.mx.format("mxfp8_e4m3", axis=2))
  with pytest.raises(ValueError, match="name='mxfp3'"):
    lpnum.mx.quantize(x, "mxfp3")
  with pytest.raises(ValueError, match="scale_rule='nearest'"):
    lpnum.ScaledFormat("int8", scale_format="float8_e8m0fnu", scale_rule="nearest")
  with pytest.raises(ValueError, match="scale_rule='floor' needs a power-of-two"):
    lpnum.ScaledFormat("int8", scale_format="float32", scale_rule="floor")
  with pytest.raises(ValueError, match="scale_rule='sideways'"):
    lpnum.ScaledFormat("int8", scale_rule="sideways")
  with pytest.raises(ValueError, match="element=bfloat16"):
    lpnum.ScaledFormat("bfloat16")
  with pytest.raises(ValueError, match="asymmetric=True needs an integer"):
    lpnum.ScaledFormat("float8_e4m3fn", asymmetric=True)
  with pytest.raises(TypeError, match="granularity="):
    lpnum.ScaledFormat("int8", granularity=(1, 32))
  with pytest.raises(ValueError, match=r"size=0 must be in \[1, inf\]"):
    lpnum.per_block(0)
  with pytest.raises(TypeError, match="axis="):
    lpnum.per_channel(1.5)
  with pytest.raises(ValueError, match=r"q=101"):
    lpnum.percentile(101)
  with pytest.raises(ValueError, match="ratios="):
    lpnum.mse((1.5,))
  with pytest.raises(ValueError, match="scale_format=int8 cannot hold fractional"):
    lpnum.ScaledFormat("int4", scale_format="int8")
  with pytest.raises(ValueError, match="scale_format=shift4 spans 6 binades"):
    lpnum.ScaledFormat("int4", scale_format="shift4")
  with pytest.raises(TypeError, match="q must be a QArray"):
    lpnum.dequantize(x)
  with pytest.raises(TypeError, match="fmt=3 must be a ScaledFormat"):
    lpnum.quantize_scaled(x, 3)


def test_mismatched_metadata_on_dequantize():
  import dataclasses

  q = lpnum.mx.quantize(jnp.ones((4, 64)), "mxfp4_e2m1")
  with pytest.raises(ValueError, match="q.data has shape"):
    lpnum.dequantize(dataclasses.replace(q, shape=(4, 96)))
  with pytest.raises(ValueError, match="q.scales has shape"):
    lpnum.dequantize(dataclasses.replace(q, scales=q.scales[:, :1]))
  with pytest.raises(ValueError, match="q.scales has dtype"):
    lpnum.dequantize(dataclasses.replace(q, scales=q.scales.astype(jnp.int32)))
