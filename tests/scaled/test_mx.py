"""lpnum's MX and NVFP4 against the independent NumPy reference (tests/support/mx_reference.py), byte for byte."""

from __future__ import annotations


import jax
import jax.numpy as jnp
import numpy as np
import pytest

import lpnum

import mx_reference as ref
from tiers import default_share

RULES = ("floor", "ceil", "even", "rceil")


def _bits(a) -> np.ndarray:
  return np.asarray(a, np.float32).view(np.uint32)


def _check(x: np.ndarray, name: str, rule: str, axis: int = -1) -> None:
  codes, scales, values = ref.mx_quantize(x, name, axis=axis, scale_rule=rule)
  fmt = lpnum.mx.format(name, axis=axis, scale_rule=rule)
  q = jax.jit(lambda v: lpnum.quantize_scaled(v, fmt))(x)
  np.testing.assert_array_equal(np.asarray(q.scale_codes), scales)
  got_codes = np.asarray(q.element_codes)
  np.testing.assert_array_equal(got_codes, codes)
  np.testing.assert_array_equal(_bits(lpnum.dequantize(q)), _bits(values))
  np.testing.assert_array_equal(_bits(jax.jit(lambda v: lpnum.fake_quantize(v, fmt))(x)), _bits(values))


@pytest.mark.parametrize("name", default_share(lpnum.mx.NAMES, keep=["mxfp4_e2m1", "mxfp8_e4m3", "mxint8"]))
def test_edge_blocks_match_reference(name):
  """Every scale rule on the edge blocks: codes, scales and values, compiled as one program per format."""
  x = ref.edge_blocks(np.random.default_rng(0), name)
  fmts = {rule: lpnum.mx.format(name, scale_rule=rule) for rule in RULES}

  def run(v):
    out = {}
    for rule, fmt in fmts.items():
      q = lpnum.quantize_scaled(v, fmt)
      out[rule] = (q.scale_codes, q.element_codes, lpnum.dequantize(q), lpnum.fake_quantize(v, fmt))
    return out

  for rule, (scales, codes, values, fake) in jax.jit(run)(x).items():
    want_codes, want_scales, want_values = ref.mx_quantize(x, name, scale_rule=rule)
    np.testing.assert_array_equal(np.asarray(scales), want_scales, err_msg=rule)
    np.testing.assert_array_equal(np.asarray(codes), want_codes, err_msg=rule)
    np.testing.assert_array_equal(_bits(values), _bits(want_values), err_msg=rule)
    np.testing.assert_array_equal(_bits(fake), _bits(want_values), err_msg=rule)


@pytest.mark.parametrize("name", lpnum.mx.NAMES)
def test_other_axis_and_shapes(name):
  rng = np.random.default_rng(1)
  x = rng.standard_normal((64, 3, 5)).astype(np.float32) * np.float32(1e-3)
  _check(x, name, "floor", axis=0)


def test_mx_quantize_entry_point():
  x = ref.edge_blocks(np.random.default_rng(2), "mxfp4_e2m1")
  codes, scales, _ = ref.mx_quantize(x, "mxfp4_e2m1", scale_rule="rceil")
  q = lpnum.mx.quantize(x, "mxfp4_e2m1", axis=-1, scale_rule="rceil")
  np.testing.assert_array_equal(np.asarray(q.scale_codes), scales)
  np.testing.assert_array_equal(np.asarray(q.element_codes), codes)
  assert q.data.shape == (x.shape[0], 16) and q.nbytes == x.shape[0] * (16 + 1)


@pytest.mark.parametrize("tensor_scale", [True, False])
@pytest.mark.parametrize("kind", ["normal", "t2", "edges"])
def test_nvfp4_matches_reference(kind, tensor_scale):
  rng = np.random.default_rng(3)
  if kind == "normal":
    x = rng.standard_normal((32, 64)).astype(np.float32)
  elif kind == "t2":
    x = rng.standard_t(2, (32, 64)).astype(np.float32)
  else:
    x = ref.edge_blocks(rng, "mxfp4_e2m1")
    x = x[np.all(np.isfinite(x), axis=1)]
    x = x[np.abs(x).max(1) >= 1e-30]  # tensor scales below 2^-126 are outside the recipe (see lpnum.nvfp4)
  codes, scales, t, values = ref.nvfp4_quantize(x, tensor_scale=tensor_scale)
  q = lpnum.nvfp4.quantize(x, tensor_scale=tensor_scale)
  np.testing.assert_array_equal(np.asarray(q.scale_codes), scales)
  np.testing.assert_array_equal(np.asarray(q.element_codes), codes)
  if tensor_scale:
    assert _bits(q.tensor_scale) == _bits(t)
  np.testing.assert_array_equal(_bits(lpnum.dequantize(q)), _bits(values))
  np.testing.assert_array_equal(_bits(lpnum.fake_quantize(x, lpnum.nvfp4.format(tensor_scale=tensor_scale))),
                                _bits(values))


@pytest.mark.parametrize("fmt", [lpnum.nvfp4.format(), lpnum.nvfp4.format(tensor_scale=False),
                                 lpnum.ScaledFormat("float8_e4m3fn", lpnum.per_block(16), "bfloat16")], ids=str)
@pytest.mark.parametrize("special", ["nan", "inf", "-inf"])
def test_fake_quantize_is_the_round_trip_bit_for_bit_on_special_values(fmt, special):
  """NaN and infinite blocks (an infinite tensor scale, without NaN) with general (E4M3, bfloat16) scales: the
  fused path's NaNs are the NaNs the two-step round trip decodes (one bit pattern), not whatever sign an invalid
  operation left."""
  rng = np.random.default_rng(5)
  x = (rng.standard_normal((8, 64)) * 2.0 ** 120).astype(np.float32)
  x[1, 20], x[3, :16], x[4, 33] = float(special), 0, np.finfo(np.float32).max
  fused = _bits(jax.jit(lambda v: lpnum.fake_quantize(v, fmt))(x))
  np.testing.assert_array_equal(fused, _bits(lpnum.dequantize(lpnum.quantize_scaled(x, fmt))))
  if special == "nan" or fmt.tensor_scale:  # else an infinite block saturates to the scale format's max
    assert np.isnan(fused.view(np.float32)).any()


def test_packed_storage_sizes():
  x = jnp.ones((4, 64), jnp.float32)
  sizes = {n: lpnum.mx.quantize(x, n).nbytes for n in lpnum.mx.NAMES}
  assert sizes == {"mxfp8_e4m3": 4 * 66, "mxfp8_e5m2": 4 * 66, "mxfp6_e3m2": 4 * 50, "mxfp6_e2m3": 4 * 50,
                   "mxfp4_e2m1": 4 * 34, "mxint8": 4 * 66}
  assert lpnum.nvfp4.quantize(x).nbytes == 4 * (32 + 4) + 4


# ---- third parties, directly (tests/oracles/test_mx_reference.py pins where they disagree with the reference) --------
def _random_blocks(seed: int, n: int = 64) -> np.ndarray:
  rng = np.random.default_rng(seed)
  scale = np.float32(2.0) ** rng.integers(-20, 20, (n, 1)).astype(np.float32)
  return (rng.standard_normal((n, 32)).astype(np.float32) * scale).astype(np.float32)


@pytest.mark.parametrize("name", ["mxfp8_e4m3", "mxfp8_e5m2", "mxfp6_e3m2", "mxfp6_e2m3", "mxfp4_e2m1"])
def test_floor_matches_gfloat_block_functions(name):
  gfloat = pytest.importorskip("gfloat")
  from gfloat import formats as gff

  fi = getattr(gff, f"format_info_{name}")
  x = _random_blocks(7)
  q = lpnum.mx.quantize(x, name)
  values = np.asarray(lpnum.dequantize(q))
  for b in range(x.shape[0]):
    vals = x[b].astype(np.float64)  # gfloat takes log2 in the input dtype
    scale = gfloat.compute_scale_amax(fi.etype.emax, vals)
    enc = [int(c) for c in gfloat.encode_block(fi, scale, vals / scale)]
    assert enc[0] == int(q.scale_codes[b, 0])
    np.testing.assert_array_equal(np.asarray(q.element_codes[b]), enc[1:])
    np.testing.assert_array_equal(values[b], gfloat.quantize_block(fi, vals, gfloat.compute_scale_amax))


@pytest.mark.parametrize("name,dtype", [("mxfp8_e4m3", jnp.float8_e4m3fn), ("mxfp8_e5m2", jnp.float8_e5m2),
                                        ("mxfp4_e2m1", jnp.float4_e2m1fn)])
def test_rceil_matches_jax_scaled_matmul_quantization(name, dtype):
  jsm = pytest.importorskip("jax._src.cudnn.scaled_matmul_stablehlo")  # private: a jax without it skips
  cfg = jsm.BlockScaleConfig(mode="mxfp8", block_size=32, data_type=dtype, scale_type=jnp.float8_e8m0fnu,
                             global_scale=None, infer_only=False)
  x = _random_blocks(8)
  jq, js = jax.jit(lambda v: jsm.quantize(v, cfg))(jnp.asarray(x))
  q = lpnum.mx.quantize(x, name, scale_rule="rceil")
  np.testing.assert_array_equal(np.asarray(q.scale_codes), np.asarray(js).view(np.uint8))
  bits = (1 << lpnum.get_format(lpnum.mx.format(name).element.name).bits) - 1
  np.testing.assert_array_equal(np.asarray(q.element_codes), np.asarray(jq).view(np.uint8) & bits)
