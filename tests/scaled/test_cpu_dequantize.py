"""lpnum.dequantize's native CPU face (lpnum.scaled.cpu): taken for eager float32 calls whose blocks tile the array;
its values against float64 products of ml_dtypes-decoded codes (one rounding to float32) and against the XLA face
(LPNUM_NATIVE=0) on quantized edge data; the cases it leaves to XLA; traced calls (jit, vmap, grad, export)."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest

import lpnum
from lpnum import packing
from lpnum.scaled import cpu

pytestmark = pytest.mark.skipif(not cpu.available(), reason="the native CPU code is not built here")

#: Formats the native face takes (name -> format), with their element and scale decoders for the reference.
CASES = {
    "mxfp4": "mxfp4_e2m1", "mxfp8_e4m3": "mxfp8_e4m3", "mxfp8_e5m2": "mxfp8_e5m2", "mxint8": "mxint8",
    "nvfp4": "nvfp4", "nvfp4_no_tensor": lpnum.ScaledFormat("float4_e2m1fn", lpnum.per_block(16), "float8_e4m3fn"),
    "int4_g128": lpnum.ScaledFormat("int4", lpnum.per_block(128)),
    "int4_columns": lpnum.ScaledFormat("int4", lpnum.per_channel(-1)),
    "int8_rows": lpnum.ScaledFormat("int8", lpnum.per_channel(0)),
    "uint4_asym": lpnum.ScaledFormat("uint4", lpnum.per_block(32), asymmetric=True),
    "int4_tiles": lpnum.ScaledFormat("int4", lpnum.per_tile((4, 32))),
}
ELEMENTS = {"float4_e2m1fn": ml_dtypes.float4_e2m1fn, "float8_e4m3fn": ml_dtypes.float8_e4m3fn,
            "float8_e5m2": ml_dtypes.float8_e5m2}
SCALES = {"float8_e8m0fnu": ml_dtypes.float8_e8m0fnu, "float8_e4m3fn": ml_dtypes.float8_e4m3fn}


def _edge_data(shape, seed=0) -> np.ndarray:
  """Normal values across many binades per row, with NaN, +-inf, zeros, -0 and float32 subnormals."""
  rng = np.random.default_rng(seed)
  x = rng.standard_normal(shape).astype(np.float32)
  x *= np.exp2(rng.integers(-60, 60, shape[:-1] + (1,))).astype(np.float32)
  flat = x.reshape(-1, shape[-1])
  flat[0, :6] = [np.nan, np.inf, -np.inf, 0.0, -0.0, 1e-45]
  flat[1 % flat.shape[0], :4] = [1e-40, -3e-39, 2e-38, -1e-44]
  flat[-1] = 0.0
  return x


def _reference(q: lpnum.QArray) -> np.ndarray:
  """``(element - zero) * scale [* tensor]`` in float64 from the codes decoded by ml_dtypes / integer arithmetic,
  rounded once to float32: every product is exact in float64."""
  fmt = q.fmt
  codes = np.asarray(q.element_codes).astype(np.int64)
  el = fmt.element
  if el.name in ELEMENTS:
    v = codes.astype(np.uint8).view(ELEMENTS[el.name]).astype(np.float64)
  else:  # integers: two's complement when signed, at least the format's least value (symmetric MXINT8: -127)
    v = np.where(codes >= 1 << (el.bits - 1), codes - (1 << el.bits), codes) if el.signed else codes
    v = np.maximum(v, el.min_value).astype(np.float64) * 2.0 ** fmt.element_exponent  # MXINT8: k * 2^-6
  sf = fmt.scale_format.name
  scale_codes = np.asarray(q.scales)
  s = scale_codes.view(SCALES[sf]) if sf in SCALES else scale_codes.view(np.float32)
  s = s.astype(np.float64)
  if q.zero_point is not None:
    v = v - np.kron(np.asarray(q.zero_point, np.float64), np.ones(q.block))
  with np.errstate(invalid="ignore", over="ignore"):
    out = v * np.kron(s, np.ones(q.block))
    if q.tensor_scale is not None:
      out = out * np.float64(np.asarray(q.tensor_scale))
    return out.astype(np.float32)


def _assert_same(got, want) -> None:
  """Equal as float32 bit patterns, NaN of any sign or payload equal to NaN."""
  got, want = np.asarray(got, np.float32), np.asarray(want, np.float32)
  nan = np.isnan(want)
  np.testing.assert_array_equal(np.isnan(got), nan)
  np.testing.assert_array_equal(got[~nan].view(np.uint32), want[~nan].view(np.uint32))


def _xla_face(q: lpnum.QArray, monkeypatch) -> np.ndarray:
  with monkeypatch.context() as m:
    m.setenv("LPNUM_NATIVE", "0")
    assert not cpu.takes(q, np.float32)
    return np.asarray(lpnum.dequantize(q))


def _runs_native(f, *args) -> bool:
  return "lpnum_dequantize" in jax.jit(f).lower(*args).as_text()


@pytest.mark.parametrize("name", CASES)
def test_native_values_against_float64_products_and_the_xla_face(name, monkeypatch):
  q = lpnum.quantize_scaled(_edge_data((32, 256)), CASES[name])
  assert cpu.takes(q, np.float32)
  got = lpnum.dequantize(q)
  _assert_same(got, _xla_face(q, monkeypatch))
  _assert_same(got, _reference(q))


@pytest.mark.parametrize("name", ["mxfp4", "mxfp8_e4m3", "mxfp8_e5m2", "mxint8", "nvfp4", "int4_g128"])
def test_every_code_under_every_scale_code(name):
  """Every element code in a block of every scale code (uint8 scales: for MXFP8 both the blocks whose scale lets
  the kernel decode by arithmetic and those whose results are subnormal or overflow, with NaN and infinity codes
  among the others), or of extreme float32 scales."""
  template = lpnum.quantize_scaled(jnp.zeros((256, 256), jnp.float32), CASES[name])
  bits = template.fmt.element.bits
  codes = np.tile(np.arange(256) % (1 << bits), (256, 1)).astype(np.uint8)
  if np.dtype(template.scales.dtype) == np.uint8:
    scales = np.repeat(np.arange(256, dtype=np.uint8)[:, None], template.scales.shape[1], axis=1)
  else:
    values = np.float32([1.0, 0.1, 2.0 ** -126, 3 * 2.0 ** 120, np.finfo(np.float32).max, np.nan, np.inf, 7.5])
    scales = np.resize(values, template.scales.shape).view(np.uint32)
  q = dataclasses.replace(template, data=packing.pack(jnp.asarray(codes), bits),
                          scales=jnp.asarray(scales, template.scales.dtype))
  want = _reference(q)
  if q.tensor_scale is not None:  # NVFP4's second rounding applies below 2^-126 only: compare normal results
    normal = ~(np.abs(want) < 2.0 ** -126) | (want == 0)
    got = np.asarray(lpnum.dequantize(q))
    _assert_same(got[normal], want[normal])
  else:
    _assert_same(lpnum.dequantize(q), want)


@pytest.mark.parametrize("shape,case", [((4096,), "mxfp4"), ((2, 8, 64), "nvfp4"), ((3, 4, 128), "int4_g128"),
                                        ((2048, 1024), "mxfp8_e4m3"), ((2048, 1024), "int4_columns")])
def test_ranks_and_large_outputs(shape, case, monkeypatch):
  """Rank 1 and 3 (blocks along the last axis), and 8 MB outputs (marked for huge pages)."""
  q = lpnum.quantize_scaled(_edge_data(shape, seed=3), CASES[case])
  assert cpu.takes(q, np.float32)
  got = lpnum.dequantize(q)
  assert got.shape == shape and got.dtype == jnp.float32
  _assert_same(got, _xla_face(q, monkeypatch))
  _assert_same(got, _reference(q))


@pytest.mark.parametrize("what", ["bfloat16", "padded", "fp6", "empty", "0-d", "rows_spanning_axes"])
def test_cases_left_to_xla(what, monkeypatch):
  x = _edge_data((8, 64))
  fmt, dtype = "mxfp4_e2m1", None
  if what == "bfloat16":
    dtype = jnp.bfloat16
  elif what == "padded":
    x = x[:, :50]
    q = lpnum.quantize_scaled(x, fmt, pad=True)
  elif what == "fp6":
    fmt = "mxfp6_e3m2"
  elif what == "empty":
    x = x[:0]
  elif what == "0-d":
    x, fmt = x[0, 7], lpnum.ScaledFormat("int8", lpnum.per_tensor())
  elif what == "rows_spanning_axes":
    x, fmt = x.reshape(2, 4, 64), lpnum.ScaledFormat("int8", lpnum.per_tensor())
  q = q if what == "padded" else lpnum.quantize_scaled(x, fmt)
  assert not cpu.takes(q, np.dtype(dtype or np.float32))
  got = lpnum.dequantize(q, dtype)
  with monkeypatch.context() as m:
    m.setenv("LPNUM_NATIVE", "0")
    want = lpnum.dequantize(q, dtype)
  assert got.shape == x.shape and got.dtype == want.dtype
  np.testing.assert_array_equal(np.asarray(got, np.float32), np.asarray(want, np.float32))


def test_traced_calls_stay_xla_and_agree():
  """jit, vmap and grad see tracers: XLA operations (which fuse and export anywhere), the same values."""
  q = lpnum.quantize_scaled(_edge_data((16, 64)), "nvfp4")
  eager = np.asarray(lpnum.dequantize(q))
  assert not _runs_native(lpnum.dequantize, q)
  _assert_same(jax.jit(lpnum.dequantize)(q), eager)
  stacked = jax.tree_util.tree_map(lambda a: jnp.stack([a, a]), q)
  batched = jax.vmap(lpnum.dequantize)(stacked)
  _assert_same(batched[1], eager)
  x = jnp.ones(q.shape, jnp.float32)
  _assert_same(jax.grad(lambda v: jnp.sum(v * lpnum.dequantize(q)))(x), eager)  # d/dx of x * w: w
  exported = jax.export.export(jax.jit(lpnum.dequantize), platforms=["cpu", "tpu"])(q)
  assert "lpnum_dequantize" not in exported.mlir_module()


def test_the_eager_call_runs_the_kernel(monkeypatch):
  """The eager call dispatches to the native program (whose CPU lowering holds the FFI call)."""
  from lpnum.scaled import ops

  q = lpnum.quantize_scaled(_edge_data((8, 64)), "mxfp4_e2m1")
  calls = []
  native = ops._dequantize_native
  monkeypatch.setattr(ops, "_dequantize_native", lambda r: calls.append(1) or native(r))
  lpnum.dequantize(q)
  assert calls
  assert "lpnum_dequantize" in native.lower(q).as_text()


def test_a_sharded_qarray_stays_xla_and_keeps_its_sharding():
  code = textwrap.dedent("""
      import jax, numpy as np, lpnum
      from jax.sharding import AxisType, NamedSharding, PartitionSpec as P
      mesh = jax.make_mesh((8,), ("x",), axis_types=(AxisType.Auto,))
      q = lpnum.quantize_scaled(jax.random.normal(jax.random.key(0), (64, 256)), "mxfp4_e2m1")
      want = np.asarray(lpnum.dequantize(q))
      sharded = jax.tree_util.tree_map(lambda a: jax.device_put(a, NamedSharding(mesh, P("x"))), q)
      got = lpnum.dequantize(sharded)
      assert got.sharding.spec == P("x"), got.sharding
      np.testing.assert_array_equal(np.asarray(got), want)
      print("ok")
  """)
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu")
  out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
  assert out.returncode == 0, out.stderr[-3000:]
  assert out.stdout.strip().endswith("ok")
