"""Grouped matmul: the per-expert layout and every face against a dense per-expert NumPy computation.

References: ``lpnum.dequantize`` of each expert's QArray (table decoding, independent of the kernels' bit
arithmetic) for the layout; float64 NumPy products of each group's rows with its expert's dequantized weights, with
a rigorous bound on float32 summation error, for the matmul and its gradient.
"""

from __future__ import annotations

import functools
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import export

import lpnum
from lpnum.kernels import cpu_matmul
from lpnum.kernels import grouped_matmul as gm
from lpnum.kernels.grouped_matmul import layout
from lpnum.kernels.grouped_matmul.pallas import visits
from tiers import default_share

WEIGHT_FORMATS = {
    "int8": lpnum.ScaledFormat("int8", lpnum.per_channel(1)),
    "int4_g32": lpnum.ScaledFormat("int4", lpnum.per_block(32, 0)),
    "mxfp4": lpnum.mx.format("mxfp4_e2m1", axis=0),
    "nvfp4": lpnum.nvfp4.format(axis=0),
    "fp8": lpnum.ScaledFormat("float8_e4m3fn", lpnum.per_channel(1)),
}
#: Formats checked by default (each plane width, scale kind and the tensor scale); the others under -m slow.
QUICK = {"int4_g32", "mxfp4", "nvfp4"}
FORMAT_PARAMS = default_share(WEIGHT_FORMATS, QUICK)
FACES = [("xla", None), ("native", None), ("pallas", "tpu"), ("pallas", "gpu")]
FACE_IDS = ["xla", "native", "pallas-tpu", "pallas-gpu"]
_NO_NATIVE = pytest.mark.skipif(not cpu_matmul.available(), reason="the native CPU kernel did not build (warned)")


def _face(face, i, *rest) -> pytest.param:
  return pytest.param(*face, *rest, id="-".join([i, *rest]), marks=_NO_NATIVE if face[0] == "native" else ())


def _faces(*default: str) -> list:
  """FACES as parameters: those named in ``default`` in the default run, the others under -m slow (CI's slow line
  runs this file)."""
  return default_share([_face(face, i) for face, i in zip(FACES, FACE_IDS)],
                       lambda face: FACE_IDS[FACES.index(face)] in default)


#: The default run multiplies each format with the XLA and native faces and with one Pallas flavour; -m slow runs
#: every pair.
_QUICK_FACES = {(face, n) for face in ("xla", "native") for n in QUICK} | {
    ("pallas-tpu", "int4_g32"), ("pallas-tpu", "mxfp4"), ("pallas-gpu", "nvfp4")}
FACE_FORMAT_PARAMS = default_share(
    [_face(face, i, n) for face, i in zip(FACES, FACE_IDS) for n in WEIGHT_FORMATS],
    lambda v: (FACE_IDS[FACES.index(tuple(v[:2]))], v[2]) in _QUICK_FACES)
#: Ragged sizes over 5 experts and 70 rows: an empty first and middle group, groups that do not fill a 16-row tile,
#: one that spans tiles, and 9 rows past the last group.
SIZES = (0, 5, 30, 0, 26)


@functools.lru_cache(maxsize=None)
def _quantized(fmt, e=5, k=200, n=136, seed=0):
  """Quantized Student-t(4) expert weights (cached)."""
  w = np.random.default_rng(seed).standard_t(4, (e, k, n)).astype(np.float32)
  return gm.quantize_experts(jnp.asarray(w), fmt) if k % 32 == 0 else _padded(w, fmt)


@functools.lru_cache(maxsize=None)
def _experts(fmt, e=5, k=200, n=136, seed=0):
  """Quantized expert weights (cached) and each expert's lpnum.dequantize (vmapped over the experts)."""
  q = _quantized(fmt, e, k, n, seed)
  return q, np.asarray(jax.jit(jax.vmap(lpnum.dequantize))(q))


def _padded(w, fmt):
  return jax.vmap(lambda a: lpnum.quantize_scaled(a, fmt, pad=True))(jnp.asarray(w))


def _dense(x, wf, sizes):
  """The dense per-expert computation in float64: each group's rows times its expert; rows past the groups zero."""
  x = np.asarray(x, np.float64)
  y, ay = np.zeros((x.shape[0], wf.shape[2])), np.zeros((x.shape[0], wf.shape[2]))
  start = 0
  for e, size in enumerate(sizes):
    rows = slice(start, start + size)
    y[rows] = x[rows] @ np.asarray(wf[e], np.float64)
    ay[rows] = np.abs(x[rows]) @ np.abs(np.asarray(wf[e], np.float64))
    start += size
  return y, ay


def _check_close(got, x, wf, sizes):
  """|got - exact| within K * 2^-23 * (|x| @ |w|) per row plus the output's rounding; rows past the groups are 0."""
  exact, bound_sum = _dense(x, wf, sizes)
  bound = (x.shape[1] + 2) * 2.0 ** -23 * bound_sum + 2.0 ** -24 * np.abs(exact) + 2.0 ** -126
  err = np.abs(np.asarray(got, np.float64) - exact)
  assert np.all(err <= bound), f"max error/bound {np.max(err / bound)}"
  np.testing.assert_array_equal(np.asarray(got)[sum(sizes):], 0.0)


def _run(x, w, sizes, backend, platform, **kw):
  if backend in ("xla", "native"):
    return gm.grouped_matmul(x, w, jnp.asarray(sizes), implementation=backend, **kw)
  return gm.grouped_matmul(x, w, jnp.asarray(sizes), implementation="pallas", platform=platform, interpret=True,
                           **kw)


# ---- layout ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", FORMAT_PARAMS)
def test_layout_dequantizes_each_expert_as_lpnum_dequantize(name):
  q, wf = _experts(WEIGHT_FORMATS[name])
  w = gm.pack_experts(q)
  e, k, n = w.shape
  got = np.asarray(jax.jit(layout.dequantize)(w))
  np.testing.assert_array_equal(got[:, :k, :n], wf)
  assert np.all(got[:, k:] == 0) and np.all(got[:, :, n:] == 0)
  np.testing.assert_array_equal(np.asarray(layout.unpack_codes(w))[:, :k, :n],
                                np.stack([np.asarray(gm.expert(q, i).element_codes) for i in range(e)]))


def test_a_static_scale_of_one_is_each_experts_direct_cast():
  # ptq packs a direct cast (scaling="none") this way: per tensor, scale 1; int8 rounds half to even, no -0.
  w = np.random.default_rng(12).normal(size=(3, 64, 40)).astype(np.float32) * 30
  q = gm.quantize_experts(jnp.asarray(w), lpnum.ScaledFormat("int8", lpnum.per_tensor(), "float32"), scale=1.0)
  for e in range(3):
    got = np.asarray(lpnum.dequantize(gm.expert(q, e)))
    np.testing.assert_array_equal(got.view(np.uint32), (np.rint(w[e]) + np.float32(0)).view(np.uint32))


def test_packed_weights_hold_the_packed_bytes():
  w = gm.pack_experts(_quantized(WEIGHT_FORMATS["mxfp4"]))  # (5, 200, 136): K padded to a 512-row tile, N to 256
  assert w.planes[0].dtype == jnp.uint8 and w.planes[0].shape == (5, 256, 256)
  assert w.nbytes == 5 * (512 * 256 // 2 + 512 // 32 * 256)


# ---- the faces -----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("backend, platform, name", FACE_FORMAT_PARAMS)
def test_faces_match_the_dense_per_expert_computation(name, backend, platform):
  q, wf = _experts(WEIGHT_FORMATS[name])
  x = np.random.default_rng(1).normal(size=(70, 200)).astype(np.float32)
  y = _run(x, gm.pack_experts(q), SIZES, backend, platform, block_sizes=gm.BlockSizes(block_m=16))
  assert y.shape == (70, 136) and y.dtype == jnp.float32
  _check_close(y, x, wf, SIZES)


@pytest.mark.parametrize("backend, platform", _faces("xla", "native", "pallas-tpu"))
def test_reference_and_faces_on_several_k_tiles_and_bfloat16(backend, platform):
  q, wf = _experts(WEIGHT_FORMATS["int4_g32"], e=3, k=1024, n=128)
  w = gm.pack_experts(q, tile_k=256)
  x = np.random.default_rng(2).normal(size=(24, 1024)).astype(np.float32)
  sizes = (7, 0, 12)
  _check_close(_run(x, w, sizes, backend, platform), x, wf, sizes)
  _check_close(gm.reference_grouped_matmul(x, q, jnp.asarray(sizes)), x, wf, sizes)
  xb = jnp.asarray(x, jnp.bfloat16)
  yb = _run(xb, w, sizes, backend, platform)
  assert yb.dtype == jnp.bfloat16
  exact, _ = _dense(np.asarray(xb, np.float32), wf, sizes)
  np.testing.assert_allclose(np.asarray(yb, np.float64), exact, rtol=2 ** -7, atol=1e-3)


@pytest.mark.parametrize("sizes", [(0, 0, 0), (16, 0, 0), (0, 0, 16), (1, 1, 14)], ids=str)
@pytest.mark.parametrize("backend, platform", _faces("xla", "native", "pallas-tpu", "pallas-gpu"))
def test_empty_and_single_groups(sizes, backend, platform):
  q, wf = _experts(WEIGHT_FORMATS["int8"], e=3, k=64, n=8)
  x = np.random.default_rng(3).normal(size=(16, 64)).astype(np.float32)
  _check_close(_run(x, q, sizes, backend, platform), x, wf, sizes)


@pytest.mark.parametrize("backend, platform", _faces("xla", "native", "pallas-tpu"))
def test_nan_weights_reach_only_their_experts_rows(backend, platform):
  w = np.random.default_rng(4).normal(size=(3, 64, 8)).astype(np.float32)
  w[1, 3, 2] = np.inf  # MXFP4: the block holding it gets the NaN scale, so expert 1's column 2 is NaN
  q = gm.quantize_experts(jnp.asarray(w), WEIGHT_FORMATS["mxfp4"])
  wf = np.stack([np.asarray(lpnum.dequantize(gm.expert(q, i))) for i in range(3)])
  sizes = (5, 4, 7)
  x = np.ones((16, 64), np.float32)
  y = np.asarray(_run(x, q, sizes, backend, platform))
  assert np.all(np.isnan(y[5:9, 2])) and not np.isnan(np.delete(y, 2, axis=1)).any()
  assert not np.isnan(y[:5]).any() and not np.isnan(y[9:]).any()
  keep = np.ones(y.shape, bool)
  keep[5:9, 2] = False
  exact, _ = _dense(x, np.nan_to_num(wf), sizes)
  np.testing.assert_allclose(y[keep], exact[keep], rtol=1e-5, atol=1e-5)


def test_visits_cover_every_tile_and_group_once():
  sizes = np.array([0, 5, 30, 0, 26, 0])
  tiles, bm = 5, 16
  tile_ids, group_ids = map(np.asarray, jax.jit(visits, static_argnums=(1, 2))(jnp.asarray(sizes), tiles, bm))
  assert len(tile_ids) == tiles + len(sizes) - 1 and np.all(np.diff(tile_ids) >= 0)
  ends = np.cumsum(sizes)
  want = [(t, g) for t in range(tiles) for g in range(len(sizes))
          if sizes[g] and ends[g] - sizes[g] < (t + 1) * bm and ends[g] > t * bm]
  want += [(t, len(sizes)) for t in range(tiles) if not any(p[0] == t for p in want)]
  got = sorted(set(zip(tile_ids.tolist(), group_ids.tolist())))
  assert got == sorted(want)


# ---- transforms ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("backend, platform", _faces("xla", "native", "pallas-gpu"))
def test_gradient_of_lhs_is_the_transposed_grouped_product(backend, platform):
  q, wf = _experts(WEIGHT_FORMATS["nvfp4"], e=3, k=64, n=32)
  x = np.random.default_rng(5).normal(size=(20, 64)).astype(np.float32)
  g = np.random.default_rng(6).normal(size=(20, 32)).astype(np.float32)
  sizes = (6, 0, 10)
  f = lambda a: jnp.vdot(_run(a, q, sizes, backend, platform), g)
  dx = jax.jit(jax.grad(f))(x)
  _check_close(dx, g, np.swapaxes(wf, 1, 2), sizes)


def test_weights_and_sizes_get_no_gradient_and_jit_matches_eager():
  w = gm.pack_experts(_experts(WEIGHT_FORMATS["nvfp4"], e=3, k=64, n=32)[0])
  x, sizes = np.ones((4, 64), np.float32), jnp.array([1, 2, 1])
  gw = jax.grad(lambda w: jnp.sum(gm.grouped_matmul(x, w, sizes)), allow_int=True)(w)
  assert np.all(gw.tensor_scale == 0) and gw.planes[0].dtype == jax.dtypes.float0
  np.testing.assert_array_equal(np.asarray(jax.jit(gm.grouped_matmul)(x, w, sizes)),
                                np.asarray(gm.grouped_matmul(x, w, sizes)))


# ---- the native CPU face ---------------------------------------------------------------------------------------------
@_NO_NATIVE
def test_auto_runs_the_native_kernel_below_native_rows_and_skips_empty_experts():
  q, wf = _experts(WEIGHT_FORMATS["int4_g32"], e=3, k=64, n=32)
  w = gm.pack_experts(q)
  rows = cpu_matmul.NATIVE_ROWS[cpu_matmul.isa()][4]
  assert cpu_matmul.native_rows(w) == rows  # the stacked weights: their format decides
  for m, native_call in ((1, True), (rows - 1, True), (rows, False)):
    x = jax.ShapeDtypeStruct((m, 64), jnp.float32)
    text = jax.jit(gm.grouped_matmul).lower(x, w, jax.ShapeDtypeStruct((3,), jnp.int32)).as_text()
    assert (cpu_matmul.TARGET in text) == native_call, m
  # One call per expert that has rows, inside the scan's conditional: vmap and jit give the same rows.
  x = np.random.default_rng(8).normal(size=(2, 5, 64)).astype(np.float32)
  sizes = jnp.array([2, 0, 3])
  y = jax.jit(jax.vmap(lambda a: gm.grouped_matmul(a, w, sizes, implementation="native")))(x)
  for i in range(2):
    _check_close(y[i], x[i], wf, (2, 0, 3))


@_NO_NATIVE
def test_native_face_reads_each_expert_in_place():
  # The kernel takes the stacked planes and uint8 scale codes with the expert's index, so they are not sliced
  # (copied) for it. Only small operands it takes as float32 are: zero points, tensor scales, wider scale codes.
  w = gm.pack_experts(_experts(WEIGHT_FORMATS["mxfp4"], e=3, k=64, n=32)[0])
  lowered = jax.jit(lambda x, w, s: gm.grouped_matmul(x, w, s, implementation="native")).lower(
      jax.ShapeDtypeStruct((2, 64), jnp.float32), w, jax.ShapeDtypeStruct((3,), jnp.int32))
  hlo = lowered.compile().as_text()
  assert cpu_matmul.TARGET in hlo
  assert not re.search(r"= *u8\[[^\]]*\]\S* +dynamic-slice\(", hlo)


@_NO_NATIVE
def test_native_face_on_non_finite_activations_matches_the_xla_face():
  q, _ = _experts(WEIGHT_FORMATS["mxfp4"], e=3, k=64, n=32)
  x = np.random.default_rng(9).normal(size=(6, 64)).astype(np.float32)
  x[0, 3], x[2, 7], x[4, 11] = np.inf, np.nan, -0.0
  sizes = jnp.array([3, 0, 2])
  native = np.asarray(gm.grouped_matmul(x, q, sizes, implementation="native"))
  xla = np.asarray(gm.grouped_matmul(x, q, sizes, implementation="xla"))
  np.testing.assert_array_equal(np.isnan(native), np.isnan(xla))
  np.testing.assert_array_equal(np.isinf(native), np.isinf(xla))
  finite = np.isfinite(xla)
  np.testing.assert_allclose(native[finite], xla[finite], rtol=1e-5, atol=1e-4)


def test_native_off_falls_back_and_native_raises(monkeypatch):
  monkeypatch.setenv("LPNUM_NATIVE", "0")  # read when traced: shapes of their own, and the caches cleared after
  w = gm.pack_experts(_experts(WEIGHT_FORMATS["int8"], e=2, k=72, n=40)[0])
  x, sizes = np.ones((1, 72), np.float32), jnp.array([1, 0])
  try:
    assert cpu_matmul.TARGET not in jax.jit(gm.grouped_matmul).lower(x, w, sizes).as_text()
    with pytest.raises(ValueError, match="implementation='native'"):
      gm.grouped_matmul(x, w, sizes, implementation="native")
  finally:
    jax.clear_caches()


# ---- lowering for real hardware ------------------------------------------------------------------------------------
#: By default: every format for cuda, and for tpu an 8-bit plane and a 4-bit one with the tensor scale (-m slow: all).
LOWERING_PARAMS = [
    pytest.param(name, platform, call, marks=pytest.mark.slow if platform == "tpu" and name not in ("int8", "nvfp4")
                 else ()) for platform, call in (("tpu", "tpu_custom_call"), ("cuda", "xla.gpu.triton"))
    for name in WEIGHT_FORMATS]


@pytest.mark.parametrize("name, platform, call", LOWERING_PARAMS)
def test_lowers_for_tpu_and_cuda_with_8_experts_at_4096(name, platform, call):
  fmt = WEIGHT_FORMATS[name]
  if name == "int4_g32":
    fmt = lpnum.ScaledFormat("int4", lpnum.per_block(128, 0))
  w = jax.eval_shape(lambda: gm.pack_experts(gm.quantize_experts(jnp.zeros((8, 4096, 4096)), fmt)))
  fn = jax.jit(lambda x, w, s: gm.grouped_matmul(x, w, s, implementation="pallas", platform=platform))
  checks = [export.DisabledSafetyCheck.custom_call("__gpu$xla.gpu.triton")]
  args = (jax.ShapeDtypeStruct((1024, 4096), jnp.bfloat16), w, jax.ShapeDtypeStruct((8,), jnp.int32))
  assert call in export.export(fn, platforms=[platform], disabled_checks=checks)(*args).mlir_module()


def test_tpu_rejects_layouts_with_too_few_scale_rows_per_tile():
  q = _quantized(lpnum.ScaledFormat("int4", lpnum.per_block(128, 0)), e=2, k=2048, n=128)
  w = gm.pack_experts(q, tile_k=512)
  with pytest.raises(ValueError, match="tile_k=1024"):
    gm.grouped_matmul(np.ones((4, 2048), np.float32), w, jnp.array([2, 2]), platform="tpu", interpret=True)


# ---- bad input -----------------------------------------------------------------------------------------------------
def test_bad_inputs_raise_clear_errors():
  q, _ = _experts(WEIGHT_FORMATS["int8"], e=3, k=64, n=8)
  x, sizes = np.ones((4, 64), np.float32), jnp.array([1, 2, 1])
  with pytest.raises(TypeError, match="rhs must be"):
    gm.grouped_matmul(x, np.ones((3, 64, 8)), sizes)
  with pytest.raises(TypeError, match="lhs must be float32"):
    gm.grouped_matmul(np.ones((4, 64), np.int32), q, sizes)
  with pytest.raises(ValueError, match="K=64"):
    gm.grouped_matmul(np.ones((4, 63), np.float32), q, sizes)
  with pytest.raises(ValueError, match=r"group_sizes has shape \(2,\)"):
    gm.grouped_matmul(x, q, jnp.array([1, 2]))
  with pytest.raises(ValueError, match="group_sizes .* dtype float32"):
    gm.grouped_matmul(x, q, jnp.array([1.0, 2.0, 1.0]))
  with pytest.raises(ValueError, match="implementation='mosaic'"):
    gm.grouped_matmul(x, q, sizes, implementation="mosaic")
  with pytest.raises(ValueError, match="platform='rocm'"):
    gm.grouped_matmul(x, q, sizes, platform="rocm")
  with pytest.raises(ValueError, match="needs a GPU or TPU"):
    gm.grouped_matmul(x, q, sizes, implementation="pallas")
  with pytest.raises(ValueError, match="stacked QArray"):
    gm.pack_experts(lpnum.quantize_scaled(jnp.ones((64, 8)), WEIGHT_FORMATS["int8"]))
  with pytest.raises(ValueError, match="w must be float"):
    gm.quantize_experts(jnp.ones((64, 8)), WEIGHT_FORMATS["int8"])
  with pytest.raises(TypeError, match="fmt="):
    gm.quantize_experts(jnp.ones((2, 64, 8)), "int8")
  with pytest.raises(ValueError, match="tile_k=100"):
    gm.pack_experts(q, tile_k=100)
