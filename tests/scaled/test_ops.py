"""The public scaled operations: dequantize of every element code under extreme scales against independent
references (MX, NVFP4, int4 per group), and quantize_scaled / dequantize / fake_quantize called eagerly: the
same bits as under jax.jit, one trace per (value-equal) format."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest

import lpnum
import mx_reference
from lpnum import packing
from lpnum.formats import FloatFormat
from tiers import default_share

#: E8M0 scale codes: the smallest (2^-127), 2^-126, 2^-100, 1, 2^100, the largest two, NaN.
E8M0_CODES = (0, 1, 27, 127, 227, 253, 254, 255)
TRANSFORMS = {"eager": lambda f: f, "jit": jax.jit}


def _qarray(fmt: lpnum.ScaledFormat, codes: np.ndarray, scales: np.ndarray, tensor_scale=None) -> lpnum.QArray:
  """A QArray holding the given element codes (2-d, unpacked) and scale codes."""
  template = lpnum.quantize_scaled(jnp.zeros(codes.shape, jnp.float32), fmt)
  bits = fmt.element.bits
  return dataclasses.replace(
      template, data=packing.pack(jnp.asarray(codes, jnp.uint8), bits),
      scales=jnp.asarray(scales, template.scales.dtype),
      tensor_scale=None if tensor_scale is None else jnp.float32(tensor_scale))


def _assert_same(got, want) -> None:
  """Equal as float32 bit patterns, NaN of any sign or payload equal to NaN."""
  got, want = np.asarray(got, np.float32), np.asarray(want, np.float32)
  nan = np.isnan(want)
  np.testing.assert_array_equal(np.isnan(got), nan)
  np.testing.assert_array_equal(got[~nan].view(np.uint32), want[~nan].view(np.uint32))


@pytest.mark.parametrize("transform", TRANSFORMS.values(), ids=TRANSFORMS.keys())
@pytest.mark.parametrize("name", lpnum.mx.NAMES)
def test_mx_dequantize_of_every_code_and_extreme_scales(name, transform):
  fmt = lpnum.mx.format(name)
  bits = fmt.element.bits
  row = np.tile(np.arange(1 << bits, dtype=np.uint8), max(1, 32 >> bits))  # every code, whole blocks of 32
  codes = np.tile(row, (len(E8M0_CODES), 1))
  scales = np.repeat(np.array(E8M0_CODES, np.uint8)[:, None], codes.shape[1] // 32, axis=1)
  got = transform(lpnum.dequantize)(_qarray(fmt, codes, scales))
  want = mx_reference.mx_dequantize(codes, scales, name)
  if name == "mxint8":  # symmetric MXINT8 (+-127): the unused code -128 decodes as -127, lpnum's narrow-int rule
    want = np.where(codes == 0x80, mx_reference.mx_dequantize(codes + 1, scales, name), want)
  _assert_same(got, want)


@pytest.mark.parametrize("tensor_scale", [1.0, 0.75, 2.0 ** -20, 2.0 ** 100])
def test_nvfp4_dequantize_of_every_code_and_scale(tensor_scale):
  fmt = lpnum.nvfp4.format()
  e4m3 = np.arange(0x7F, dtype=np.uint8)  # every finite non-negative E4M3 block scale
  codes = np.tile(np.arange(16, dtype=np.uint8), (e4m3.size, 1))
  got = lpnum.dequantize(_qarray(fmt, codes, e4m3[:, None], tensor_scale))
  elements = codes.view(ml_dtypes.float4_e2m1fn).astype(np.float64)
  block = e4m3.view(ml_dtypes.float8_e4m3fn).astype(np.float64)[:, None]
  _assert_same(got, (elements * block * tensor_scale).astype(np.float32))  # exact products: no rounding


@pytest.mark.parametrize("scale", [1.0, 0.1, 2.0 ** -126, 3.0 * 2.0 ** 120, float(np.finfo(np.float32).max),
                                   np.nan])
def test_int4_per_group_dequantize_of_every_code(scale):
  fmt = lpnum.ScaledFormat("int4", lpnum.per_block(128))
  codes = np.tile(np.arange(16, dtype=np.uint8), (2, 16))
  scale_bits = np.full((2, 2), np.float32(scale).view(np.uint32))
  got = lpnum.dequantize(_qarray(fmt, codes, scale_bits))
  values = np.where(codes >= 8, codes.astype(np.float64) - 16, codes)  # two's complement
  with np.errstate(over="ignore", invalid="ignore"):
    _assert_same(got, (values * np.float64(np.float32(scale))).astype(np.float32))  # rounded once


CASES = {"mxfp4": lpnum.mx.format("mxfp4_e2m1"), "nvfp4": "nvfp4",
         "int4_g32_mse": lpnum.ScaledFormat("int4", lpnum.per_block(32), calibration=lpnum.mse(4)),
         "uint4_asym": lpnum.ScaledFormat("uint4", lpnum.per_block(64), "bfloat16", asymmetric=True),
         "e4m3_cols": lpnum.ScaledFormat("float8_e4m3fn", lpnum.per_channel(-1))}


def _leaves_same(a, b) -> None:
  for u, v in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b), strict=True):
    np.testing.assert_array_equal(np.asarray(u), np.asarray(v))


#: Cases of test_eager_equals_jit in the default run; the others (each a few seconds of compiling) run with -m slow.
DEFAULT_EAGER = (("mxfp4", "nearest_even"), ("nvfp4", "stochastic"))


@pytest.mark.parametrize("name,rounding", default_share(
    [pytest.param(c, r, id=f"{c}-{r}") for c in CASES for r in ("nearest_even", "stochastic")], DEFAULT_EAGER))
def test_eager_equals_jit(name, rounding):
  case = CASES[name]
  x = jax.random.normal(jax.random.key(0), (64, 128), jnp.float32) * 3
  x = x.at[0, :3].set(jnp.array([jnp.nan, 1e-40, -0.0]))
  kwargs = {"rounding": rounding, "key": jax.random.key(1)} if rounding == "stochastic" else {}
  q = lpnum.quantize_scaled(x, case, **kwargs)
  _leaves_same(q, jax.jit(lambda v: lpnum.quantize_scaled(v, case, **kwargs))(x))
  _assert_same(lpnum.dequantize(q), jax.jit(lpnum.dequantize)(q))
  for dtype in (jnp.bfloat16, jnp.float16):
    np.testing.assert_array_equal(np.asarray(lpnum.dequantize(q, dtype)).view(np.uint16),
                                  np.asarray(jax.jit(lambda r: lpnum.dequantize(r, dtype))(q)).view(np.uint16))
  fake = lpnum.fake_quantize(x, case, **kwargs)
  _assert_same(fake, jax.jit(lambda v: lpnum.fake_quantize(v, case, **kwargs))(x))
  _assert_same(fake, lpnum.dequantize(q))  # the fused round trip is the two-step one
  grad = jax.grad(lambda v: jnp.sum(lpnum.fake_quantize(v, case, **kwargs)))(x)
  np.testing.assert_array_equal(np.asarray(grad), np.ones(x.shape, np.float32))  # straight-through


def test_equal_formats_compare_and_hash_by_value():
  make = lambda: lpnum.ScaledFormat("int4", lpnum.per_block(32, 0), "bfloat16", calibration=lpnum.mse([1.0, 0.5]))
  assert make() == make() and hash(make()) == hash(make())
  assert lpnum.mx.format("mxfp4_e2m1") == lpnum.mx.format("mxfp4_e2m1")
  assert hash(lpnum.percentile(99.0)) == hash(lpnum.percentile(99))


def test_a_second_eager_call_does_not_retrace(monkeypatch):
  rounded, decoded = [], []
  round_values, decode_values = FloatFormat.round_values, FloatFormat.decode_values
  monkeypatch.setattr(FloatFormat, "round_values", lambda self, *a, **k: rounded.append(1) or round_values(
      self, *a, **k))
  monkeypatch.setattr(FloatFormat, "decode_values", lambda self, *a, **k: decoded.append(1) or decode_values(
      self, *a, **k))
  x = jax.random.normal(jax.random.key(2), (3, 5 * 32), jnp.float32)  # a shape no other test uses
  fmt = lambda: lpnum.ScaledFormat("float4_e2m1fn", lpnum.per_block(32), "float8_e8m0fnu")  # a new object per call
  for op in (lambda v: lpnum.quantize_scaled(v, fmt()), lambda v: lpnum.fake_quantize(v, fmt())):
    del rounded[:]
    first = op(x)
    assert rounded  # traced
    count = len(rounded)
    _leaves_same(op(x), first)
    assert len(rounded) == count  # not traced again
  q = lpnum.quantize_scaled(x, fmt())
  del decoded[:]
  lpnum.dequantize(q)
  count = len(decoded)
  assert count
  lpnum.dequantize(dataclasses.replace(q, fmt=fmt()))
  assert len(decoded) == count
