"""The packed matmul's native CPU face (kernels/cpu_matmul.cc), against float64 NumPy products of the
weights as ``lpnum.dequantize`` gives them (the float32 summation bound), and its non-finite results against the
XLA face's; the build and fallback of :mod:`lpnum.native`."""

from __future__ import annotations

import ctypes
import dataclasses
import functools
import platform
import re
import subprocess

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
from jax import export

import lpnum
from lpnum import kernels
from lpnum.kernels import cpu_matmul as cpu
from lpnum import native
from lpnum.kernels.packed_matmul import layout

pytestmark = pytest.mark.skipif(not cpu.available(), reason="the native CPU kernel did not build (warned)")

FORMATS = {
    "int8": lpnum.ScaledFormat("int8", lpnum.per_channel(1)),
    "int8_narrow": lpnum.ScaledFormat(lpnum.int_format(8, narrow=True), lpnum.per_channel(1)),
    "uint8": lpnum.ScaledFormat("uint8", lpnum.per_block(64, 0), asymmetric=True),
    "int4_g128": lpnum.ScaledFormat("int4", lpnum.per_block(128, 0)),
    "uint4_zp": lpnum.ScaledFormat("uint4", lpnum.per_block(32, 0), asymmetric=True),
    "int3": lpnum.ScaledFormat("int3", lpnum.per_block(16, 0)),
    "int2": lpnum.ScaledFormat("int2", lpnum.per_channel(1)),
    "ternary": lpnum.ScaledFormat("int2_narrow", lpnum.per_channel(1)),
    "fp8_e4m3": lpnum.ScaledFormat("float8_e4m3fn", lpnum.per_channel(1)),
    "fp8_e5m2_bf16": lpnum.ScaledFormat("float8_e5m2", lpnum.per_tensor(), "bfloat16"),
    "fp4_fp16": lpnum.ScaledFormat("float4_e2m1fn", lpnum.per_block(32, 0), "float16"),
    **{name: lpnum.mx.format(name, axis=0) for name in lpnum.mx.NAMES},
    "nvfp4": lpnum.nvfp4.format(axis=0),
    "nvfp4_tile": lpnum.nvfp4.format(tile=True),
}


@functools.lru_cache(maxsize=None)
def _weights(name, k=200, n=136, seed=0):
  w = np.random.default_rng(seed).standard_t(4, (k, n)).astype(np.float32)
  return lpnum.quantize_scaled(jnp.asarray(w), FORMATS[name], pad=True)


def _exact(x, wf, out_eps):
  """float64 ``x @ wf`` and its float32 summation bound (plus the output's rounding)."""
  xf, wf = np.asarray(x, np.float64), np.asarray(wf, np.float64)
  with np.errstate(invalid="ignore", over="ignore"):
    exact = xf @ wf
    # The last term: products below float32's normal range flush to zero (as in XLA's own dot on this CPU).
    bound = ((xf.shape[-1] + 2) * 2.0 ** -23 * (np.abs(xf) @ np.abs(wf)) + out_eps * np.abs(exact)
             + xf.shape[-1] * 2.0 ** -126)
  return exact, bound


def _check(y, x, q, like=None, out_eps=2.0 ** -24):
  """``y`` within the bound of the exact product with ``lpnum.dequantize(q)``; with ``like`` (the XLA face), the
  weights are those the kernels decode (``layout.dequantize``: subnormal weights flush, as in any float32 product)
  and where ``like`` is not finite ``y`` is the same value."""
  y = np.asarray(y, np.float64)
  if like is None:
    exact, bound = _exact(x, lpnum.dequantize(q), out_eps)
    finite = np.isfinite(exact)
  else:
    w = kernels.pack_weights(q)
    exact, bound = _exact(x, np.asarray(layout.dequantize(w))[:q.shape[0], :q.shape[1]], out_eps)
    finite = np.isfinite(np.asarray(like))
    np.testing.assert_array_equal(y[~finite], np.asarray(like, np.float64)[~finite])
  with np.errstate(invalid="ignore"):
    err = np.abs(y - exact)
  assert np.all(err[finite] <= bound[finite]), f"max error/bound {np.max(err[finite] / bound[finite])}"


def _native(x, w, **kw):
  return kernels.matmul(x, w, implementation="native", **kw)


# ---- every format, every row-block size -----------------------------------------------------------------------
@pytest.mark.parametrize("name", list(FORMATS))
def test_every_format_within_the_summation_bound(name):
  q = _weights(name)
  w = kernels.pack_weights(q)
  x = np.random.default_rng(1).standard_normal((17, 200)).astype(np.float32)
  fn = jax.jit(_native)
  for m in (1, 2, 3, 5, 9, 17):  # rows of x taken 8, 4, 2 and 1 at a time
    _check(fn(x[:m], w), x[:m], q)


@pytest.mark.parametrize("name", ["int4_g128", "mxfp8_e4m3", "mxfp6_e2m3"])
def test_several_k_tiles_and_column_items(name):
  # K = 1100: three K tiles of 512 (the last mostly padding); N = 1300: items of 1024 columns and a partial one.
  q = _weights(name, k=1100, n=1300)
  x = np.random.default_rng(2).standard_normal((6, 1100)).astype(np.float32)
  _check(jax.jit(_native)(x, kernels.pack_weights(q)), x, q)


def test_int8_and_int4_sums_are_exact_on_small_integers():
  # Integer weights and activations small enough that every float32 partial sum is exact: the result is exact.
  rng = np.random.default_rng(3)
  for fmt in (FORMATS["int8"], FORMATS["int4_g128"]):
    wi = rng.integers(-7, 8, (512, 256)).astype(np.float32)
    wi[::128] = 127 if fmt.element.bits == 8 else 7  # every column's and group's max: scales of 1
    q = lpnum.quantize_scaled(jnp.asarray(wi), fmt)
    x = rng.integers(-3, 4, (4, 512)).astype(np.float32)
    want = x.astype(np.float64) @ np.asarray(lpnum.dequantize(q), np.float64)
    np.testing.assert_array_equal(np.asarray(_native(x, kernels.pack_weights(q))), want)


# ---- non-finite and extreme values -------------------------------------------------------------------------------
def _with_scale_codes(q, codes):
  return dataclasses.replace(q, scales=jnp.asarray(codes, q.scales.dtype))


def test_extreme_e8m0_scales_match_the_xla_face():
  # Per column: 2^-127 (applied in two normal factors, as dequantize does), NaN, 2^127 (6 * 2^127 overflows to inf),
  # 2^-126, and ordinary scales; the kernel's denormals-are-zero threads must not lose the 2^-127 weights.
  q = _weights("mxfp4_e2m1", k=256, n=136)
  codes = np.array(q.scales)
  codes[:, 0], codes[:, 1], codes[:, 2], codes[:, 3] = 0, 255, 254, 1
  codes[3, 4] = 255  # one NaN block in an otherwise ordinary column
  q = _with_scale_codes(q, codes)
  w = kernels.pack_weights(q)
  x = np.random.default_rng(4).standard_normal((3, 256)).astype(np.float32)
  like = kernels.matmul(x, w, implementation="xla")
  y = _native(x, w)
  assert np.isnan(np.asarray(y)[:, 1]).all() and np.isnan(np.asarray(y)[:, 4]).all()
  assert np.all(np.asarray(y)[:, 0] != 0)  # 6 * 2^-127 and the like are normal float32 weights
  _check(y, x, q, like)


def test_extreme_e4m3_scales_match_the_xla_face():
  # NVFP4 blocks whose E4M3 scale is zero, subnormal (codes 1-7: looked up, not computed from the code), NaN (0x7f)
  # or the largest (0x7e), beside ordinary ones; the tensor scale applies after.
  q = _weights("nvfp4", k=256, n=136)
  codes = np.array(q.scales)
  codes[:, 0], codes[:, 1], codes[:, 2], codes[:, 3], codes[5, 4] = 0, 1, 0x7F, 0x7E, 7
  q = _with_scale_codes(q, codes)
  w = kernels.pack_weights(q)
  x = np.random.default_rng(8).standard_normal((3, 256)).astype(np.float32)
  y = _native(x, w)
  assert np.isnan(np.asarray(y)[:, 2]).all() and not np.asarray(y)[:, 0].any()
  _check(y, x, q, kernels.matmul(x, w, implementation="xla"))


@pytest.mark.parametrize("name", ["mxfp4_e2m1", "int4_g128", "nvfp4", "fp8_e5m2_bf16", "uint4_zp"])
def test_extreme_activations_match_the_xla_face(name):
  # inf, NaN, 1e38 (x * v overflows), subnormal and zero activations: chunks whose sums cannot be scaled once fall
  # back to scaling every weight; non-finite results are those of the XLA face.
  q = _weights(name)
  w = kernels.pack_weights(q)
  x = np.random.default_rng(5).standard_normal((6, 200)).astype(np.float32)
  x[0, 3], x[1, 7], x[2, 11], x[3, :] = np.inf, np.nan, 1e38, 1e-40
  x[4, :] = 0.0
  x[5, ::2] = -0.0
  like = kernels.matmul(x, w, implementation="xla")
  _check(_native(x, w), x, q, like)


@pytest.mark.parametrize("name", ["mxfp4_e2m1", "nvfp4", "int4_g128"])
def test_chunk_sums_that_could_overflow_scale_every_weight(name):
  # x * v is just below 2^126 for every weight, the scales tiny: the exact products are ordinary, but a chunk's sum
  # of 32 (or 16) x * v before its scale overflows float32. The kernel must see that from x's range and scale every
  # weight (it returned inf for MXFP4 before it counted the chunk's length).
  q = lpnum.quantize_scaled(jnp.full((256, 128), 6 * 2.0 ** -20, jnp.float32), FORMATS[name])
  x = np.full((2, 256), 2.0 ** 123, np.float32)
  x[1, ::3] *= -1
  y = _native(x, kernels.pack_weights(q))
  assert np.isfinite(np.asarray(y)).all()
  _check(y, x, q)


def test_a_non_finite_tensor_scale_matches_the_xla_face():
  # NVFP4 with an infinite or NaN tensor scale: every weight is inf, NaN (zero codes times inf) or NaN, so the
  # chunk sums are not scaled once (a sum of x * v that cancels to 0 would give NaN where products give inf).
  q = _weights("nvfp4", k=256, n=136)
  x = np.random.default_rng(9).standard_normal((2, 256)).astype(np.float32)
  for t in (np.inf, np.nan):
    bad = dataclasses.replace(q, tensor_scale=jnp.full(np.shape(q.tensor_scale), t, jnp.float32))
    w = kernels.pack_weights(bad)
    np.testing.assert_array_equal(np.asarray(_native(x, w)), np.asarray(kernels.matmul(x, w, implementation="xla")))


@pytest.mark.parametrize("name, dtype, shift, scale, nan", [("fp8_e4m3", ml_dtypes.float8_e4m3fn, 7, 256.0, 0x7F),
                                                           ("mxfp8_e5m2", ml_dtypes.float8_e5m2, 8, 1.0, -1)])
def test_every_fp8_code_decodes_as_its_value(name, dtype, shift, scale, nan):
  # Every code in every column (NaN, the E5M2 infinities, subnormals, -0), one row of x and several: the float16
  # conversion must give each code's value, including under the kernel's denormals-are-zero threads.
  table, kind = cpu._element_table(FORMATS[name].element)
  assert cpu._half_layout(table) == (shift, scale, nan) and kind != cpu._GATHER
  np.testing.assert_array_equal(table, np.arange(256, dtype=np.uint8).view(dtype).astype(np.float32))  # ml_dtypes
  q = _weights(name, k=256, n=136)
  codes = (np.arange(256)[:, None] + 7 * np.arange(136)[None, :]) % 256
  q = dataclasses.replace(q, data=jnp.asarray(codes, q.data.dtype))
  w = kernels.pack_weights(q)
  x = np.random.default_rng(10).standard_normal((5, 256)).astype(np.float32)
  for m in (1, 5):
    _check(_native(x[:m], w), x[:m], q, kernels.matmul(x[:m], w, implementation="xla"))
  # Row 200 holds every code (over two matrices), the other rows +0; x picks row 200: y is each code's weight.
  x1 = np.zeros((1, 256), np.float32)
  x1[0, 200] = 1.0
  for first in (0, 120):
    one = np.zeros((256, 136), np.int64)
    one[200] = first + np.arange(136)
    q1 = dataclasses.replace(q, data=jnp.asarray(one, q.data.dtype))
    y = np.asarray(_native(x1, kernels.pack_weights(q1)))[0, :136]
    np.testing.assert_array_equal(y, np.asarray(lpnum.dequantize(q1), np.float32)[200])


def test_the_kernel_checks_a_float16_table():
  # A table that is not the float16 conversion it claims to be is refused by the kernel, not decoded wrongly.
  q = _weights("fp8_e4m3")
  w = kernels.pack_weights(q)
  table = cpu._element_table(q.fmt.element)[0].copy()
  table[3] *= 2
  with pytest.MonkeyPatch.context() as mp:
    mp.setattr(cpu, "_element_table", lambda element: (table, cpu._HALF[7]))
    mp.setattr(cpu, "_half_layout", lambda t: (7, 256.0, 0x7F))
    with pytest.raises(Exception, match="not the float16 conversion"):  # eager: no trace cached by other tests
      jax.block_until_ready(cpu.matmul(jnp.ones((1, w.planes[0].shape[0]), jnp.float32), w))


def test_zero_weights_and_signed_zeros():
  q = lpnum.quantize_scaled(jnp.zeros((256, 128)), FORMATS["mxfp8_e5m2"])
  y = np.asarray(_native(-np.ones((1, 256), np.float32), kernels.pack_weights(q)))
  assert not y.any() and not np.isnan(y).any()


# ---- transformations -----------------------------------------------------------------------------------------------
def test_jit_vmap_and_grad_agree_with_the_xla_face():
  q = _weights("mxfp4_e2m1")
  w = kernels.pack_weights(q)
  x = np.random.default_rng(6).standard_normal((4, 3, 200)).astype(np.float32)
  batched = jax.jit(jax.vmap(lambda xb: _native(xb, w)))(x)
  for i in range(4):
    _check(batched[i], x[i], q)
  loss = lambda impl: lambda xb: jnp.sum(kernels.matmul(xb, w, implementation=impl) ** 2)
  g_native, g_xla = jax.grad(loss("native"))(x[0]), jax.grad(loss("xla"))(x[0])
  np.testing.assert_allclose(g_native, g_xla, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
def test_low_precision_activations_keep_their_dtype(dtype):
  q = _weights("int8")
  x = jnp.asarray(np.random.default_rng(7).standard_normal((2, 200)), dtype)
  y = _native(x, kernels.pack_weights(q))
  assert y.dtype == dtype
  _check(np.asarray(y, np.float32), np.asarray(x, np.float32), q, out_eps=2.0 ** -8)


def test_auto_runs_the_native_kernel_below_native_rows_only():
  for name, bits in (("int4_g128", 4), ("int8", 8)):
    w = kernels.pack_weights(_weights(name))
    rows = cpu.NATIVE_ROWS[cpu.isa()][bits]
    assert cpu.native_rows(w) == rows
    for m, native_call in ((1, True), (rows - 1, True), (rows, False)):
      x = jax.ShapeDtypeStruct((m, 200), jnp.float32)
      text = jax.jit(lambda x, w: kernels.matmul(x, w)).lower(x, w).as_text()
      assert (cpu.TARGET in text) == native_call, (name, m)


def test_native_export_needs_its_custom_call_allowed():
  q = _weights("int8")
  w = kernels.pack_weights(q)
  fn = jax.jit(lambda x, w: kernels.matmul(x, w, implementation="native"))
  x = jax.ShapeDtypeStruct((1, 200), jnp.float32)
  with pytest.raises(ValueError, match="custom calls"):
    export.export(fn, platforms=["cpu"])(x, w)
  exp = export.export(fn, platforms=["cpu"], disabled_checks=[export.DisabledSafetyCheck.custom_call(cpu.TARGET)])
  xv = np.ones((1, 200), np.float32)
  _check(exp(x, w).call(xv, w), xv, q)


# ---- the int8 x int8 -> int32 kernel (W8A8) ----------------------------------------------------------------------
X_INT8 = lpnum.ScaledFormat("int8", lpnum.per_channel(0))


def _int8_calls(text):
  return len(re.findall(rf"@{cpu.TARGET}_int8\(", text))


def _int32_dot(x, w):
  """The int32 sums of int8 ``x @ w`` as XLA's int32 dot gives them: exact int64 sums wrapped modulo 2^32."""
  return (np.asarray(x, np.int64) @ np.asarray(w, np.int64)).astype(np.int32)


@pytest.mark.parametrize("m", [1, 2, 3, 5, 9])
def test_int8_kernel_sums_are_exact_int32(m):
  # Every int8 value, -128 included, over several K chunks and column slabs; rows taken 4, 2 and 1 at a time.
  rng = np.random.default_rng(m)
  x = rng.integers(-128, 128, (m, 320), dtype=np.int8)
  w = rng.integers(-128, 128, (320, 1280), dtype=np.int8)
  x[0, :64], w[:64, :3] = -128, -128
  y = jax.jit(cpu.int8_matmul)(x, w)
  assert y.dtype == jnp.int32 and y.shape == (m, 1280)
  np.testing.assert_array_equal(np.asarray(y), _int32_dot(x, w))


def test_int8_kernel_wraps_as_the_int32_dot_does():
  # 131072 products of (-128)^2 sum to 2^31, which int32 sums wrap to -2^31 (as XLA's int32 dot does).
  k = 131072
  x = np.full((1, k), -128, np.int8)
  w = np.full((k, 128), -128, np.int8)
  w[:, 1] = 127
  y = np.asarray(cpu.int8_matmul(x, w))
  np.testing.assert_array_equal(y, _int32_dot(x, w))
  assert y[0, 0] == -(2 ** 31)


def test_int8_kernel_bad_inputs_name_the_argument():
  x, w = np.ones((1, 128), np.int8), np.ones((128, 128), np.int8)
  with pytest.raises(TypeError, match="x2 must be int8"):
    cpu.int8_matmul(x.astype(np.int16), w)
  with pytest.raises(TypeError, match="w8 must be int8"):
    cpu.int8_matmul(x, w.astype(np.float32))
  with pytest.raises(ValueError, match="w8 must be 2-D"):
    cpu.int8_matmul(x, w[None])
  with pytest.raises(ValueError, match="multiple of 64"):
    cpu.int8_matmul(np.ones((1, 100), np.int8), np.ones((100, 128), np.int8))
  with pytest.raises(ValueError, match="must agree on K_pad"):
    cpu.int8_matmul(x, np.ones((192, 128), np.int8))
  with pytest.raises(ValueError, match="N_pad a multiple of 128"):
    cpu.int8_matmul(x, np.ones((128, 100), np.int8))


@pytest.mark.parametrize("name", ["int8", "int4_g128"])
def test_w8a8_native_face_is_exact_integer_accumulation(name):
  # The stored int8 plane, or int4 weights per column (unpacked to int8 values), times int8 x per row.
  fmt = FORMATS["int8"] if name == "int8" else lpnum.ScaledFormat("int4", lpnum.per_channel(1))
  q = lpnum.quantize_scaled(jnp.asarray(np.random.default_rng(4).standard_t(4, (300, 130)), jnp.float32), fmt)
  x = np.random.default_rng(5).normal(size=(3, 7, 300)).astype(np.float32)
  y = np.asarray(jax.jit(lambda x, w: _native(x, w, x_format=X_INT8))(x, kernels.pack_weights(q)))
  xq = lpnum.quantize_scaled(x, X_INT8)
  vx = np.asarray(lpnum.decode(xq.element_codes, "int8")).astype(np.int64)
  vw = np.asarray(lpnum.decode(q.element_codes, fmt.element)).astype(np.int64)
  acc = np.einsum("abk,kn->abn", vx, vw)
  sx = np.asarray(xq.scales, np.uint32).view(np.float32)
  sw = np.asarray(q.scales, np.uint32).view(np.float32)
  want = (acc.astype(np.float32) * sx) * sw
  np.testing.assert_array_equal(y.view(np.uint32), want.view(np.uint32))


def test_w8a8_auto_runs_the_int8_kernel_below_int8_rows_only():
  w = kernels.pack_weights(_weights("int8"))
  rows = cpu.INT8_ROWS[cpu.isa()]
  assert cpu.int8_rows() == rows
  for m, native_call in ((1, True), (rows - 1, True), (rows, False)):
    x = jax.ShapeDtypeStruct((m, 200), jnp.float32)
    assert _int8_calls(jax.jit(lambda x, w: kernels.matmul(x, w, x_format=X_INT8)).lower(x, w).as_text()) == \
        native_call, m
  # Under vmap the call runs once per batch element, with the same bits as the XLA face.
  x = np.random.default_rng(6).normal(size=(2, 3, 200)).astype(np.float32)
  f = lambda impl: jax.jit(jax.vmap(lambda a: kernels.matmul(a, w, x_format=X_INT8, implementation=impl)))(x)
  np.testing.assert_array_equal(np.asarray(f("native")).view(np.uint32), np.asarray(f("xla")).view(np.uint32))


# ---- the build ----------------------------------------------------------------------------------------------------
def test_native_off_falls_back_and_native_raises(monkeypatch):
  # LPNUM_NATIVE is read when a function is traced: shapes of their own here, and the caches cleared after.
  monkeypatch.setenv("LPNUM_NATIVE", "0")
  q = _weights("int8", k=72, n=40)
  w = kernels.pack_weights(q)
  x = np.ones((1, 72), np.float32)
  try:
    text = jax.jit(lambda x, w: kernels.matmul(x, w)).lower(x, w).as_text()
    assert cpu.TARGET not in text
    with pytest.raises(ValueError, match="implementation='native'"):
      kernels.matmul(x, w, implementation="native")
  finally:
    jax.clear_caches()


def test_a_failed_build_warns_once_and_reports_none(tmp_path, monkeypatch):
  source = tmp_path / "broken.cc"
  source.write_text("this is not C++\n")
  monkeypatch.setenv("LPNUM_NATIVE_CACHE", str(tmp_path / "cache"))
  with pytest.warns(RuntimeWarning, match="could not build the native CPU kernel broken.cc"):
    assert native.load(source, {"lpnum_test_broken": "Nothing"}) is None
  assert native.load(source, {"lpnum_test_broken": "Nothing"}) is None  # cached: no second warning


def test_the_library_is_built_once_and_reused(tmp_path, monkeypatch):
  source = tmp_path / "small.cc"  # the cache does not depend on what the source holds
  source.write_text('extern "C" int lpnum_test_small() { return 7; }\n')
  monkeypatch.setenv("LPNUM_NATIVE_CACHE", str(tmp_path / "cache"))
  built = native._build(source)
  stamp = built.stat().st_mtime_ns
  assert native._build(source) == built and built.stat().st_mtime_ns == stamp
  assert [p.name for p in (tmp_path / "cache").iterdir()] == [built.name]  # no temporary files left


def test_the_cache_is_keyed_by_the_instruction_set(tmp_path, monkeypatch):
  # A cache shared by two CPUs must not hand one a library built for the other's instruction set.
  source = tmp_path / "small.cc"
  source.write_text('extern "C" int lpnum_test_small() { return 7; }\n')
  monkeypatch.setenv("LPNUM_NATIVE_CACHE", str(tmp_path / "cache"))
  here = native._library(source, native._compiler())
  run = subprocess.run

  def other_cpu(args, **kw):
    done = run(args, **kw)
    if "-dM" in args:
      done.stdout += "#define __AVX512F__ 1\n"
    return done

  monkeypatch.setattr(native.subprocess, "run", other_cpu)
  assert native._library(source, native._compiler()) != here


def _cpu_flags() -> set[str]:
  try:
    with open("/proc/cpuinfo") as f:
      return set(next(line for line in f if line.startswith("flags")).split(":", 1)[1].split())
  except (OSError, StopIteration):
    return set()


@pytest.mark.parametrize("march, isa, needs", [("x86-64", "portable", set()),
                                               ("x86-64-v3", "avx2", {"avx2", "fma", "bmi2"}),
                                               ("x86-64-v4", "avx512", {"avx512f", "avx512bw", "avx512dq", "avx512vl"})])
def test_every_instruction_set_this_cpu_runs_gives_the_same_bounds(march, isa, needs, monkeypatch, tmp_path):
  # -march=native picks one of these on each machine (the rest of this file tests it); the others are built here
  # too where this CPU can run them, so the AVX-512, AVX2 and portable lane-wise code are all checked on any x86
  # machine that has their instructions.
  if platform.machine() not in ("x86_64", "AMD64") or not needs <= _cpu_flags():
    pytest.skip(f"this CPU cannot run -march={march}")
  if isa == cpu.isa():
    pytest.skip(f"-march=native builds the {isa} kernel here: the other tests check it")
  monkeypatch.setattr(native, "FLAGS", tuple(f"-march={march}" if f.startswith("-march=") else f
                                             for f in native.FLAGS))
  monkeypatch.setattr(cpu, "TARGET", f"{cpu.TARGET}_{isa}")
  monkeypatch.setenv("LPNUM_NATIVE_CACHE", str(tmp_path))
  assert cpu.isa() == isa
  if isa == "portable":
    assert cpu.native_rows(kernels.pack_weights(_weights("int4_g128"))) == 0  # "auto" never picks it
  x = np.random.default_rng(9).standard_normal((11, 200)).astype(np.float32)  # rows taken 8, 2 and 1 at a time
  x[0, 3], x[1, 7], x[2, 11] = np.inf, np.nan, 1e38
  jax.clear_caches()  # programs traced before call the -march=native kernel's target: trace anew, and after
  try:
    # Every decode (int8, uint8 with zero points, 16-entry tables, a gather over several planes) and scaling mode
    # (per weight, chunk sums scaled once, with a tensor scale).
    for name in ("int8", "uint8", "int4_g128", "int3", "mxfp4_e2m1", "nvfp4"):
      q = _weights(name)
      w = kernels.pack_weights(q)
      lowered = jax.jit(_native).lower(x, w)  # traced once: checked, then compiled and run
      assert cpu.TARGET in lowered.as_text()
      _check(lowered.compile()(x, w), x, q, kernels.matmul(x, w, implementation="xla"))
    # The int8 x int8 -> int32 kernel of the same build.
    x8 = np.random.default_rng(10).integers(-128, 128, (3, 192), dtype=np.int8)
    w8 = np.random.default_rng(11).integers(-128, 128, (192, 256), dtype=np.int8)
    np.testing.assert_array_equal(np.asarray(cpu.int8_matmul(x8, w8)), _int32_dot(x8, w8))
  finally:
    jax.clear_caches()


def test_a_missing_compiler_is_a_clear_error(tmp_path, monkeypatch):
  monkeypatch.setenv("CXX", str(tmp_path / "no-such-compiler"))
  monkeypatch.setenv("LPNUM_NATIVE_CACHE", str(tmp_path / "cache"))
  with pytest.raises(OSError):
    native._build(cpu._SOURCE)


def test_auto_leaves_table_formats_to_xla():
  # FP6 (and other 8-bit tables than FP8's) decode through a table gather per weight, which the XLA path beats:
  # "auto" does not take them. FP8 E4M3 and E5M2 decode as float16 conversions: "auto" takes them.
  for name, native_call in (("mxfp8_e4m3", True), ("mxfp8_e5m2", True), ("mxfp6_e3m2", False), ("nvfp4", True),
                            ("int8", True)):
    w = kernels.pack_weights(_weights(name))
    text = jax.jit(lambda x, w: kernels.matmul(x, w)).lower(jax.ShapeDtypeStruct((1, 200), jnp.float32), w).as_text()
    assert (cpu.TARGET in text) == native_call, name


def test_the_cache_is_keyed_by_the_shared_headers(tmp_path, monkeypatch):
  # A source that includes a shared header (native_slabs.h) is rebuilt when the header changes.
  source = tmp_path / "small.cc"
  source.write_text('#include "shared.h"\nextern "C" int lpnum_test_small() { return kSeven; }\n')
  headers = tmp_path / "headers"
  headers.mkdir()
  (headers / "shared.h").write_text("constexpr int kSeven = 7;\n")
  monkeypatch.setenv("LPNUM_NATIVE_CACHE", str(tmp_path / "cache"))
  monkeypatch.setattr(native, "_HEADERS", headers)
  first = native._build(source)
  assert ctypes.CDLL(str(first)).lpnum_test_small() == 7
  (headers / "shared.h").write_text("constexpr int kSeven = 8;\n")
  second = native._build(source)
  assert second != first and ctypes.CDLL(str(second)).lpnum_test_small() == 8
