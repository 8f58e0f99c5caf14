"""Packed matmul: kernel decoding, the weight layout, and every face of the matmul against references.

References: ``lpnum.decode`` (a table lookup) for the in-kernel decoding; ``lpnum.dequantize`` of the QArray for
the layout; float64 NumPy products of the dequantized operands (with a rigorous bound on float32 summation error)
and exact NumPy int64 dots for the integer path.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import export

import lpnum
from lpnum import kernels
from lpnum.kernels import cpu_matmul as packed_cpu
from lpnum.kernels import dequant as _dequant
from lpnum.kernels.packed_matmul import layout
from tiers import default_share

WEIGHT_FORMATS = {
    "int8": lpnum.ScaledFormat("int8", lpnum.per_channel(1)),
    "int4_g32": lpnum.ScaledFormat("int4", lpnum.per_block(32, 0)),
    "uint4_zp": lpnum.ScaledFormat("uint4", lpnum.per_block(32, 0), asymmetric=True),
    "int2": lpnum.ScaledFormat("int2", lpnum.per_channel(1)),
    "ternary": lpnum.ScaledFormat("int2_narrow", lpnum.per_channel(1)),
    "fp8_e4m3": lpnum.ScaledFormat("float8_e4m3fn", lpnum.per_channel(1)),
    "fp8_e5m2": lpnum.ScaledFormat("float8_e5m2", lpnum.per_tensor(), "bfloat16"),
    "fp4_e2m1": lpnum.ScaledFormat("float4_e2m1fn", lpnum.per_block(32, 0), "float16"),
    **{name: lpnum.mx.format(name, axis=0) for name in lpnum.mx.NAMES},
    "nvfp4": lpnum.nvfp4.format(axis=0),
    "nvfp4_tile": lpnum.nvfp4.format(tile=True),
}
FACES = [("xla", None), ("pallas", "tpu"), ("pallas", "gpu")]
#: Formats checked by default everywhere (each plane layout, scale kind, zero points); the others run the XLA face by
#: default and the rest under -m slow.
QUICK = {"int8", "uint4_zp", "int2", "ternary", "fp8_e5m2", "mxfp6_e3m2", "mxfp4_e2m1", "nvfp4_tile"}


@functools.lru_cache(maxsize=None)
def _weights(fmt, k=200, n=136, seed=0):
  """Quantized Student-t(4) weights (cached: the tests share them, and their compilations)."""
  w = np.random.default_rng(seed).standard_t(4, (k, n)).astype(np.float32)
  return lpnum.quantize_scaled(jnp.asarray(w), fmt, pad=True)


@functools.lru_cache(maxsize=None)
def _dequantized(fmt, k=200, n=136):
  return np.asarray(lpnum.dequantize(_weights(fmt, k, n)))


def _run(x, w, backend, platform, **kw):
  if backend == "xla":
    return kernels.matmul(x, w, implementation="xla", **kw)
  return kernels.matmul(x, w, implementation="pallas", platform=platform, interpret=True, **kw)


def _check_close(y, xf, wf, out_eps=2.0 ** -24):
  """|y - x @ w| within the float32 summation bound K * 2^-23 * (|x| @ |w|) plus the output's rounding."""
  xf, wf = np.asarray(xf, np.float64), np.asarray(wf, np.float64)
  exact = xf @ wf
  bound = (xf.shape[-1] + 2) * 2.0 ** -23 * (np.abs(xf) @ np.abs(wf)) + out_eps * np.abs(exact) + 2.0 ** -126
  err = np.abs(np.asarray(y, np.float64) - exact)
  assert np.all(err <= bound), f"max error/bound {np.max(err / bound)}"


# ---- decoding ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["int8", "int4", "uint4", "int2", "int2_narrow", "int8_narrow", "uint8", "binary",
                                  "float8_e4m3fn", "float8_e5m2", "float8_e4m3fnuz", "float8_e5m2fnuz",
                                  "float6_e3m2fn", "float6_e2m3fn", "float4_e2m1fn", "float8_e4m3b11fnuz"])
def test_element_values_match_lpnum_decode_for_every_code(name):
  fmt = lpnum.get_format(name) if name != "int8_narrow" else lpnum.int_format(8, narrow=True)
  codes = np.arange(1 << fmt.bits, dtype=np.int32)
  got = np.asarray(jax.jit(lambda c: _dequant.element_values(fmt, c))(codes))
  want = np.asarray(lpnum.decode(codes.astype(np.uint8), fmt))
  np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
  ok = ~np.isnan(want)
  np.testing.assert_array_equal(got[ok].view(np.uint32), want[ok].view(np.uint32))


def test_scale_parts_match_lpnum_decode_for_e8m0_and_e4m3():
  e8m0 = lpnum.mx.format("mxfp8_e4m3")
  codes = np.arange(256, dtype=np.uint8)
  parts = _dequant.scale_parts(e8m0, jnp.asarray(codes))
  got = np.asarray(_dequant.apply_scale(jnp.float32(1), e8m0, parts))
  want = np.asarray(lpnum.decode(codes, "float8_e8m0fnu"))
  normal = (codes >= 1) & (codes < 255)
  np.testing.assert_array_equal(got[normal], want[normal])
  assert np.isnan(got[255]) and got[0] == 0.0  # 2^-127 is a subnormal: flushed like any subnormal weight
  nv = lpnum.nvfp4.format()
  got = np.asarray(_dequant.scale_parts(nv, jnp.asarray(codes)).value)
  want = np.asarray(lpnum.decode(codes, "float8_e4m3fn"))
  np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
  np.testing.assert_array_equal(got[~np.isnan(want)], want[~np.isnan(want)])


# ---- layout ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", default_share(WEIGHT_FORMATS, QUICK))
def test_layout_round_trips_codes_and_dequantizes_like_lpnum(name):
  q = _weights(WEIGHT_FORMATS[name])
  w = kernels.pack_weights(q)
  k, n = q.shape
  codes = np.asarray(jax.jit(layout.unpack_codes)(w))
  np.testing.assert_array_equal(codes[:k, :n], np.asarray(q.element_codes))
  assert not codes[k:].any() and not codes[:, n:].any()
  got = np.asarray(jax.jit(layout.dequantize)(w))[:k, :n]
  want = _dequantized(WEIGHT_FORMATS[name])
  np.testing.assert_array_equal(got.view(np.uint32), want.view(np.uint32))


@pytest.mark.parametrize("name, bits", [("int8", 8), ("int4_g32", 4), ("mxfp6_e3m2", 6), ("int2", 2), ("nvfp4", 4)])
def test_layout_holds_the_packed_bits(name, bits):
  q = _weights(WEIGHT_FORMATS[name], k=1024, n=256)
  w = kernels.pack_weights(q)
  assert sum(p.size for p in w.planes) * 8 == 1024 * 256 * bits
  assert sum(p.size for p in w.planes) == q.data.size


def test_layout_bit_fields_follow_the_documented_order():
  # One 4-bit plane, tile_k 256: byte row r holds row r (low nibble) and row 128 + r (high nibble).
  codes = (np.arange(256)[:, None] % 8 + np.zeros((1, 128), int)).astype(np.int32)
  q = lpnum.quantize_scaled(jnp.asarray(codes, jnp.float32), lpnum.ScaledFormat("int4", lpnum.per_channel(1)),
                            scale=jnp.float32(1))
  w = kernels.pack_weights(q, tile_k=256)
  plane = np.asarray(w.planes[0])
  np.testing.assert_array_equal(plane[:, 0], (codes[:128, 0] | (codes[128:, 0] << 4)).astype(np.uint8))


def test_int8_planes_are_the_int8_values_and_other_planes_uint8():
  q = _weights(WEIGHT_FORMATS["int8"], k=512, n=128)
  w = kernels.pack_weights(q)
  assert w.planes[0].dtype == np.int8
  values = np.asarray(lpnum.decode(q.element_codes, "int8")).astype(np.int8)  # lpnum's own decoding table
  np.testing.assert_array_equal(np.asarray(w.planes[0]), values)
  for name in ("uint4_zp", "int2", "ternary", "fp8_e5m2"):
    assert all(p.dtype == np.uint8 for p in kernels.pack_weights(_weights(WEIGHT_FORMATS[name])).planes)
  narrow = lpnum.ScaledFormat("int8_narrow", lpnum.per_channel(1))
  assert kernels.pack_weights(_weights(narrow)).planes[0].dtype == np.uint8


def test_w8a8_xla_path_multiplies_the_stored_int8_plane():
  # The weights reach the int8 x int8 -> int32 dot as stored: no bitcast, convert or slice of the plane.
  w = kernels.pack_weights(_weights(WEIGHT_FORMATS["int8"], k=300, n=130))
  xq = lpnum.quantize_scaled(np.ones((4, 300), np.float32), lpnum.ScaledFormat("int8", lpnum.per_channel(0)))
  jaxpr = jax.make_jaxpr(lambda x, w: kernels.matmul(x, w, implementation="xla"))(xq, w).jaxpr
  inner = next(e for e in jaxpr.eqns if e.primitive.name in ("pjit", "jit")).params["jaxpr"].jaxpr
  plane = inner.invars[len(jax.tree.leaves(xq))]
  dots = [e for e in inner.eqns if e.primitive.name == "dot_general"]
  assert len(dots) == 1 and dots[0].invars[1] is plane
  assert [v.aval.dtype for v in dots[0].invars] == [np.int8, np.int8] and dots[0].outvars[0].aval.dtype == np.int32


# ---- matmul faces against references ----------------------------------------------------------------------------
FORMAT_FACES = default_share([(name, backend, platform) for name in WEIGHT_FORMATS for backend, platform in FACES],
                             lambda v: v[1] == "xla" or v[0] in QUICK, unpack=True)


@pytest.mark.parametrize("name, backend, platform", FORMAT_FACES)
def test_weight_only_matmul_matches_the_dequantized_product(name, backend, platform):
  q = _weights(WEIGHT_FORMATS[name])
  x = np.random.default_rng(1).normal(size=(2, 9, q.shape[0])).astype(np.float32)
  y = jax.jit(lambda x, w: _run(x, w, backend, platform))(x, kernels.pack_weights(q))
  assert y.shape == (2, 9, q.shape[1]) and y.dtype == jnp.float32
  _check_close(y, x, _dequantized(WEIGHT_FORMATS[name]))
  _check_close(kernels.reference_matmul(x, q), x, _dequantized(WEIGHT_FORMATS[name]))


@pytest.mark.parametrize("name", ["int4_g32", "uint4_zp", "mxfp4_e2m1"])
def test_xla_path_for_many_rows_dequantizes_whole(name):
  """From WHOLE_DEQUANTIZE_ROWS rows on, the XLA path takes its one-dot branch; same result."""
  from lpnum.kernels.packed_matmul.xla import WHOLE_DEQUANTIZE_ROWS

  q = _weights(WEIGHT_FORMATS[name])
  m = WHOLE_DEQUANTIZE_ROWS
  x = np.random.default_rng(2).normal(size=(m + 3, q.shape[0])).astype(np.float32)
  _check_close(_run(x, kernels.pack_weights(q), "xla", None), x, _dequantized(WEIGHT_FORMATS[name]))


@pytest.mark.parametrize("name", ["int8", "uint4_zp", "int4_g32", "fp8_e5m2", "mxfp4_e2m1", "nvfp4", "nvfp4_tile"])
def test_xla_decode_path_over_several_column_strips_and_k_tiles(monkeypatch, name):
  """The small-M XLA path with tiles of 128 columns: several strips of N (the last one of padding) and several K
  tiles, each tile's scale rows (groups, per channel, per tensor, 2-D tiles, zero points) matched to its weights."""
  from lpnum.kernels.packed_matmul import xla

  fmt = WEIGHT_FORMATS[name]
  q = _weights(fmt, k=1100, n=300)
  w = kernels.pack_weights(q)
  monkeypatch.setattr(xla, "TILE_BYTES", 4 * w.tile_k * 128)
  assert w.padded_shape[0] // w.tile_k >= 2 and w.padded_shape[1] == 384
  x = np.random.default_rng(3).normal(size=(3, 1100)).astype(np.float32)
  y = jax.jit(xla.xla_matmul)(jnp.asarray(x), w)[:, :300]
  _check_close(y, x, _dequantized(fmt, k=1100, n=300))


@pytest.mark.parametrize("name", ["mxfp4_e2m1", "mxfp8_e4m3", "int8"])
@pytest.mark.parametrize("backend, platform", FACES)
def test_bfloat16_activations(name, backend, platform):
  q = _weights(WEIGHT_FORMATS[name])
  x = jnp.asarray(np.random.default_rng(2).normal(size=(5, q.shape[0])), jnp.bfloat16)
  y = _run(x, q, backend, platform)
  assert y.dtype == jnp.bfloat16
  y32 = kernels.matmul(x, q, implementation="xla").astype(jnp.float32)
  _check_close(y.astype(jnp.float32), x.astype(jnp.float32), lpnum.dequantize(q), out_eps=2.0 ** -8)
  np.testing.assert_allclose(np.asarray(y, np.float32), np.asarray(y32), rtol=2 ** -7)


@pytest.mark.parametrize("backend, platform", FACES)
def test_w8a8_is_exact_integer_accumulation(backend, platform):
  q = _weights(WEIGHT_FORMATS["int8"], k=300, n=130)
  x = np.random.default_rng(3).normal(size=(3, 7, 300)).astype(np.float32)
  x_format = lpnum.ScaledFormat("int8", lpnum.per_channel((0, 1)))
  y = np.asarray(_run(x, q, backend, platform, x_format=x_format))
  xq = lpnum.quantize_scaled(x, x_format)
  vx = np.asarray(lpnum.decode(xq.element_codes, "int8")).astype(np.int64)
  vw = np.asarray(lpnum.decode(q.element_codes, "int8")).astype(np.int64)
  acc = np.einsum("abk,kn->abn", vx, vw)
  sx = np.asarray(xq.scales, np.uint32).view(np.float32)
  sw = np.asarray(q.scales, np.uint32).view(np.float32)
  want = (acc.astype(np.float32) * sx) * sw
  np.testing.assert_array_equal(y.view(np.uint32), want.view(np.uint32))
  np.testing.assert_array_equal(y, np.asarray(kernels.reference_matmul(x, q, x_format=x_format)))


@pytest.mark.parametrize("backend, platform", FACES)
def test_quantized_activations_mx_by_mx(backend, platform):
  q = _weights(WEIGHT_FORMATS["mxfp4_e2m1"], k=256, n=128)
  x = np.random.default_rng(4).normal(size=(6, 256)).astype(np.float32)
  xq = lpnum.mx.quantize(x, "mxfp8_e4m3", axis=-1)
  y = _run(xq, q, backend, platform)
  _check_close(y, lpnum.dequantize(xq), lpnum.dequantize(q))


def test_ragged_shapes_and_single_row():
  q = _weights(WEIGHT_FORMATS["mxfp6_e2m3"], k=37 * 32, n=3)
  for m in (1, 17):
    x = np.random.default_rng(m).normal(size=(m, q.shape[0])).astype(np.float32)
    for backend, platform in FACES:
      _check_close(_run(x, q, backend, platform), x, lpnum.dequantize(q))


def test_nan_scales_and_nan_activations_propagate():
  w = np.ones((64, 128), np.float32)
  w[5, 7] = np.inf  # MX: the block holding inf gets the NaN scale
  q = lpnum.mx.quantize(w, "mxfp8_e4m3", axis=0)
  x = np.ones((2, 64), np.float32)
  x[1, 0] = np.nan
  for backend, platform in FACES:
    y = np.asarray(_run(x, q, backend, platform))
    assert np.isnan(y[:, 7]).all() and np.isnan(y[1]).all()
    np.testing.assert_array_equal(y[0, :7], 64.0)


def test_empty_batch():
  q = _weights(WEIGHT_FORMATS["int8"], k=64, n=8)
  assert kernels.matmul(np.zeros((0, 64), np.float32), q).shape == (0, 8)


# ---- transformations ----------------------------------------------------------------------------------------------
def test_vmap_matches_batched_call():
  q = kernels.pack_weights(_weights(WEIGHT_FORMATS["mxfp4_e2m1"], k=128, n=128))
  x = np.random.default_rng(5).normal(size=(3, 4, 128)).astype(np.float32)
  f = lambda x: kernels.matmul(x, q, implementation="pallas", platform="tpu", interpret=True)
  np.testing.assert_allclose(np.asarray(jax.vmap(f)(x)), np.asarray(f(x)), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("backend, platform", FACES)
def test_grad_flows_through_the_dequantized_weights(backend, platform):
  q = _weights(WEIGHT_FORMATS["int4_g32"], k=128, n=40)
  wf = np.asarray(lpnum.dequantize(q), np.float64)
  x = np.random.default_rng(6).normal(size=(3, 128)).astype(np.float32)
  c = np.random.default_rng(7).normal(size=(3, 40)).astype(np.float32)
  dx = jax.grad(lambda x: jnp.sum(_run(x, q, backend, platform) * c))(x)
  np.testing.assert_allclose(np.asarray(dx), c @ wf.T, rtol=1e-5, atol=1e-5)
  x_format = lpnum.ScaledFormat("int8", lpnum.per_channel(0))
  dx = jax.grad(lambda x: jnp.sum(_run(x, q, backend, platform, x_format=x_format) * c))(x)
  np.testing.assert_allclose(np.asarray(dx), c @ wf.T, rtol=1e-5, atol=1e-5)  # straight through x's quantizer


def test_grad_format_rounds_the_cotangent():
  q = _weights(WEIGHT_FORMATS["int8"], k=64, n=16)
  x = np.ones((2, 64), np.float32)
  c = np.random.default_rng(8).normal(size=(2, 16)).astype(np.float32)
  dx = jax.grad(lambda x: jnp.sum(kernels.matmul(x, q, grad_format="float8_e5m2") * c))(x)
  gq = np.asarray(lpnum.quantize(c, "float8_e5m2"), np.float64)
  np.testing.assert_allclose(np.asarray(dx), gq @ np.asarray(lpnum.dequantize(q), np.float64).T, rtol=1e-5)


def test_weights_get_no_gradient_and_jit_matches_eager():
  q = kernels.pack_weights(_weights(WEIGHT_FORMATS["nvfp4"], k=64, n=32))
  x = np.ones((2, 64), np.float32)
  gw = jax.grad(lambda w: jnp.sum(kernels.matmul(x, w)), allow_int=True)(q)
  assert gw.tensor_scale == 0 and gw.planes[0].dtype == jax.dtypes.float0
  np.testing.assert_array_equal(np.asarray(jax.jit(kernels.matmul)(x, q)), np.asarray(kernels.matmul(x, q)))


# ---- lowering for real hardware ------------------------------------------------------------------------------------
def _export(fmt, platform, x_dtype=jnp.bfloat16, x_format=None, k=4096, n=4096, m=256):
  w = jax.eval_shape(lambda: kernels.pack_weights(lpnum.quantize_scaled(jnp.zeros((k, n)), fmt)))
  x = jax.ShapeDtypeStruct((m, k), x_dtype)
  fn = jax.jit(lambda x, w: kernels.matmul(x, w, implementation="pallas", platform=platform, x_format=x_format))
  checks = [export.DisabledSafetyCheck.custom_call("__gpu$xla.gpu.triton")]
  return export.export(fn, platforms=[platform], disabled_checks=checks)(x, w).mlir_module()


@pytest.mark.parametrize("name", WEIGHT_FORMATS)
@pytest.mark.parametrize("platform, call", [("tpu", "tpu_custom_call"), ("cuda", "xla.gpu.triton")])
def test_lowers_for_tpu_and_cuda_at_4096(name, platform, call):
  fmt = WEIGHT_FORMATS[name]
  if name == "int4_g32":
    fmt = lpnum.ScaledFormat("int4", lpnum.per_block(128, 0))
  for x_dtype in (jnp.float32, jnp.bfloat16):
    assert call in _export(fmt, platform, x_dtype)


@pytest.mark.parametrize("platform, call", [("tpu", "tpu_custom_call"), ("cuda", "xla.gpu.triton")])
def test_w8a8_lowers(platform, call):
  assert call in _export(WEIGHT_FORMATS["int8"], platform, jnp.float32,
                         lpnum.ScaledFormat("int8", lpnum.per_channel(0)))


@pytest.mark.parametrize("x_format", [None, lpnum.ScaledFormat("int8", lpnum.per_channel(0))], ids=["w-only", "w8a8"])
def test_the_platform_is_chosen_when_lowered(x_format):
  # A CPU host exports the TPU kernel for tpu, the Triton kernel for cuda and the CPU path for cpu, as
  # accumulate.matmul does; "pallas" without a platform exports either kernel. ("auto" on the CPU may be lpnum's
  # native custom calls, allowed here; test_xla_exports_for_cpu_without_custom_calls checks "xla".)
  q = jax.eval_shape(lambda: lpnum.quantize_scaled(jnp.zeros((512, 256)), WEIGHT_FORMATS["int8"]))
  w = jax.eval_shape(kernels.pack_weights, q)
  x = jax.ShapeDtypeStruct((8, 512), jnp.float32)
  checks = [export.DisabledSafetyCheck.custom_call("__gpu$xla.gpu.triton"),
            export.DisabledSafetyCheck.custom_call(packed_cpu.TARGET),
            export.DisabledSafetyCheck.custom_call(f"{packed_cpu.TARGET}_int8")]
  for implementation in ("auto", "pallas"):
    fn = jax.jit(lambda x, w: kernels.matmul(x, w, x_format=x_format, implementation=implementation))
    for platform, call in (("tpu", "tpu_custom_call"), ("cuda", "xla.gpu.triton"), ("cpu", None)):
      if call is None and implementation == "pallas":
        with pytest.raises((NotImplementedError, ValueError)):  # no kernel for the CPU
          export.export(fn, platforms=[platform])(x, w)
        continue
      text = export.export(fn, platforms=[platform], disabled_checks=checks)(x, w).mlir_module()
      assert ("tpu_custom_call" in text, "xla.gpu.triton" in text) == (call == "tpu_custom_call",
                                                                       call == "xla.gpu.triton")


@pytest.mark.parametrize("x_format", [None, lpnum.ScaledFormat("int8", lpnum.per_channel(0))], ids=["w-only", "w8a8"])
def test_xla_exports_for_cpu_without_custom_calls(x_format):
  # implementation="xla" is the self-contained CPU artifact: no custom call at all, so the default safety checks
  # pass and any process can run it.
  q = jax.eval_shape(lambda: lpnum.quantize_scaled(jnp.zeros((512, 256)), WEIGHT_FORMATS["int4_g32"]))
  w = jax.eval_shape(kernels.pack_weights, q)
  fn = jax.jit(lambda x, w: kernels.matmul(x, w, x_format=x_format, implementation="xla"))
  text = export.export(fn, platforms=["cpu"])(jax.ShapeDtypeStruct((1, 512), jnp.float32), w).mlir_module()
  assert "stablehlo.custom_call" not in text


def test_tpu_rejects_layouts_with_too_few_scale_rows_per_tile():
  q = _weights(lpnum.ScaledFormat("int4", lpnum.per_block(128, 0)), k=2048, n=128)
  w = kernels.pack_weights(q, tile_k=512)
  with pytest.raises(ValueError, match="tile_k=1024"):
    kernels.matmul(np.ones((1, 2048), np.float32), w, implementation="pallas", platform="tpu", interpret=True)


# ---- bad input -----------------------------------------------------------------------------------------------------
def test_bad_inputs_raise_clear_errors():
  q = _weights(WEIGHT_FORMATS["int8"], k=64, n=8)
  x = np.ones((2, 64), np.float32)
  with pytest.raises(TypeError, match="w must be"):
    kernels.matmul(x, np.ones((64, 8)))
  with pytest.raises(TypeError, match="x must be float32"):
    kernels.matmul(np.ones((2, 64), np.int32), q)
  with pytest.raises(ValueError, match="K=64"):
    kernels.matmul(np.ones((2, 63), np.float32), q)
  with pytest.raises(ValueError, match="K=64"):
    kernels.matmul(np.float32(1), q)
  with pytest.raises(ValueError, match="implementation="):
    kernels.matmul(x, q, implementation="cuda")
  with pytest.raises(ValueError, match="platform="):
    kernels.matmul(x, q, implementation="pallas", platform="rocm", interpret=True)
  with pytest.raises(TypeError, match="x_format"):
    kernels.matmul(x, q, x_format="int8")
  with pytest.raises(ValueError, match="x_format is for float x"):
    kernels.matmul(lpnum.quantize_scaled(x, lpnum.ScaledFormat("int8")), q, x_format=lpnum.ScaledFormat("int8"))
  with pytest.raises(TypeError, match="block_sizes"):
    kernels.matmul(x, q, block_sizes=(8, 8))
  with pytest.raises(ValueError, match="block_m"):
    kernels.BlockSizes(block_m=12)
  with pytest.raises(TypeError, match="w must be a QArray"):
    kernels.reference_matmul(x, kernels.pack_weights(q))


def test_bad_weights_raise_clear_errors():
  with pytest.raises(TypeError, match="q must be a QArray"):
    kernels.pack_weights(np.ones((4, 4)))
  with pytest.raises(ValueError, match="2-D"):
    kernels.pack_weights(lpnum.quantize_scaled(jnp.ones((2, 4, 4)), lpnum.ScaledFormat("int8")))
  with pytest.raises(ValueError, match="axis 0"):
    kernels.pack_weights(lpnum.mx.quantize(jnp.ones((64, 64)), "mxfp4_e2m1", axis=-1))
  with pytest.raises(ValueError, match="at most 8 bits"):
    kernels.pack_weights(lpnum.quantize_scaled(jnp.ones((8, 8)), lpnum.ScaledFormat("int16")))
  with pytest.raises(ValueError, match="not supported by the kernels"):
    kernels.pack_weights(lpnum.quantize_scaled(jnp.ones((8, 8)), lpnum.ScaledFormat("posit8_0")))
  q = _weights(WEIGHT_FORMATS["int4_g32"], k=64, n=8)
  with pytest.raises(ValueError, match="tile_k=100"):
    kernels.pack_weights(q, tile_k=100)
  with pytest.raises(ValueError, match="tile_k=256"):
    kernels.pack_weights(_weights(lpnum.ScaledFormat("int8", lpnum.per_block(512, 0)), k=1024, n=8), tile_k=256)


def test_block_sizes_override_and_fp8_by_fp8():
  q = _weights(WEIGHT_FORMATS["fp8_e4m3"])
  x = np.random.default_rng(9).normal(size=(40, q.shape[0])).astype(np.float32)
  x_format = lpnum.ScaledFormat("float8_e4m3fn", lpnum.per_tensor())
  xf = lpnum.dequantize(lpnum.quantize_scaled(x, x_format))
  for platform in ("tpu", "gpu"):
    y = kernels.matmul(x, q, x_format=x_format, implementation="pallas", platform=platform, interpret=True,
                       block_sizes=kernels.BlockSizes(block_m=16, block_n=128))
    _check_close(y, xf, _dequantized(WEIGHT_FORMATS["fp8_e4m3"]))


@pytest.mark.parametrize("module", ["lpnum.kernels.packed_matmul.api", "lpnum.kernels.packed_matmul.layout"])
def test_docstring_examples(module):
  import doctest
  import importlib

  result = doctest.testmod(importlib.import_module(module), optionflags=doctest.ELLIPSIS)
  assert result.attempted > 0 and result.failed == 0
