"""Fused cast kernels: every face against the others and against independent references, bit for bit.

References: ``mx_reference`` (plain NumPy MX and NVFP4, independent of lpnum, itself checked against gfloat) for the
MX and NVFP4 codes; ml_dtypes casts for FP8 with a given scale; ``np.rint`` for int8 per row; the reference face
(NumPy, block by block) and ``lpnum.quantize_scaled`` (the XLA face) for all. Edge data: ``mx_reference.edge_blocks``
(NaN/inf blocks, zero and subnormal blocks, amax at powers of two and at the element maximum, element ties,
values up to float32's maximum), laid out along rows or down columns.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
from jax import export

import lpnum
from lpnum.kernels import quantize as kq
from lpnum.kernels.quantize import tile
from mx_reference import edge_blocks, mx_quantize, nvfp4_quantize
from tiers import default_share

MX = {f"{name}_{axis}": lpnum.mx.format(name, axis=axis) for name in lpnum.mx.NAMES for axis in (-1, 0)}
CASTS = {
    **MX,
    "nvfp4_-1": lpnum.nvfp4.format(axis=-1),
    "nvfp4_0": lpnum.nvfp4.format(axis=0),
    "int8_row": lpnum.ScaledFormat("int8", lpnum.per_channel(0)),
    "int8_col": lpnum.ScaledFormat("int8", lpnum.per_channel(1)),
    "int4_g32_0": lpnum.ScaledFormat("int4", lpnum.per_block(32, 0)),
    "fp8_tensor": lpnum.ScaledFormat("float8_e4m3fn", lpnum.per_tensor()),
}
#: Casts checked by default (every element width, scale kind and block axis; the TPU flavour of the kernel); the
#: others, and the GPU flavour of all, run under -m slow.
QUICK = {"mxfp8_e4m3_-1", "mxfp6_e3m2_0", "mxfp4_e2m1_-1", "mxint8_0", "nvfp4_0", "int8_row", "fp8_tensor"}


def _quick(keys, extra=()):
  return default_share(sorted(keys), lambda k: k in QUICK or k in extra)
SHAPE = (64, 256)


@functools.lru_cache(maxsize=None)
def _edge(name: str, shape=SHAPE, axis: int = -1, seed: int = 0) -> np.ndarray:
  """Edge blocks of 32 (repeated with fresh randomness to fill ``shape``) laid along ``axis``."""
  rng = np.random.default_rng(seed)
  ref_name = name if name in lpnum.mx.NAMES else "mxfp4_e2m1"
  n = shape[0] * shape[1] // 32
  blocks = np.concatenate([edge_blocks(rng, ref_name) for _ in range(-(-n // len(edge_blocks(rng, ref_name))))])
  blocks = blocks[rng.permutation(len(blocks))[:n]]
  if axis in (-1, 1):
    return blocks.reshape(shape)
  return blocks.reshape(shape[0] // 32, shape[1], 32).transpose(0, 2, 1).reshape(shape)


def _data(key: str, *, finite: bool = False) -> np.ndarray:
  fmt = CASTS[key]
  name = key.rsplit("_", 1)[0] if key in MX else "mxfp4_e2m1"
  x = _edge(name, SHAPE, 0 if key.endswith("_0") or key == "int8_col" else -1)
  return np.where(np.isfinite(x), x, np.float32(1.5)) if finite or not fmt.pow2 and fmt.tensor_scale else x


def _same(a: lpnum.QArray, b: lpnum.QArray) -> None:
  assert (a.fmt, a.shape, a.block, np.dtype(a.dtype)) == (b.fmt, b.shape, b.block, np.dtype(b.dtype))
  np.testing.assert_array_equal(np.asarray(a.data), np.asarray(b.data))
  np.testing.assert_array_equal(np.asarray(a.scales), np.asarray(b.scales))
  assert (a.tensor_scale is None) == (b.tensor_scale is None)
  if a.tensor_scale is not None:
    assert np.asarray(a.tensor_scale).tobytes() == np.asarray(b.tensor_scale).tobytes()


def _kw(key: str) -> dict:
  return {"scale": np.float32(0.0625)} if key == "fp8_tensor" else {}


# ---- the tile arithmetic is lpnum's, code for code -----------------------------------------------------------------
@pytest.mark.parametrize("key", _quick(CASTS))
def test_tile_cast_equals_quantize_scaled(key):
  fmt, x = CASTS[key], _data(key)
  c = tile.cast_of(fmt, x.shape, False)
  q = lpnum.quantize_scaled(x, fmt, **_kw(key))
  ideal = None if c.axis is not None else jnp.full((1, 1), _kw(key)["scale"])
  amax = jnp.asarray(np.max(np.abs(x))).reshape(1, 1) if fmt.tensor_scale else None
  codes, scales = jax.jit(lambda x: tile.encode_tile(x, c, ideal=ideal, tensor_amax=amax))(x)
  np.testing.assert_array_equal(np.asarray(codes), np.asarray(q.element_codes).astype(np.int32))
  if scales is not None:
    np.testing.assert_array_equal(np.asarray(scales), np.asarray(q.scales).astype(np.int32))
  packed = tile.pack_bytes(codes, fmt.element.bits)
  packed = packed[0] if len(packed) == 1 else jnp.stack(packed, -1).reshape(x.shape[0], -1)
  np.testing.assert_array_equal(np.asarray(packed), np.asarray(q.data))


# ---- every face, bit for bit ---------------------------------------------------------------------------------------
def _faces():
  for key in sorted(CASTS):
    yield from default_share([pytest.param(key, "tpu", id=f"{key}-tpu"), pytest.param(key, "gpu", id=f"{key}-gpu")],
                             [(k, "tpu") for k in QUICK] + [("mxfp4_e2m1_-1", "gpu")])


@pytest.mark.parametrize("key, platform", list(_faces()))
def test_pallas_and_reference_equal_quantize_scaled_on_edge_data(key, platform):
  fmt, x = CASTS[key], _data(key)
  kw = _kw(key)
  both = "both" if key not in ("int8_row", "int8_col") else False
  out = kq.quantize(x, fmt, transpose=both, implementation="pallas", platform=platform, interpret=True, **kw)
  out = out if both else (out,)
  for t, q in zip((False, True), out):
    want = lpnum.quantize_scaled(x.T if t else x, fmt, **kw)
    _same(q, want)
    _same(kq.reference_quantize(x, fmt, transpose=t, **kw), want)
  if not both:
    _same(kq.quantize(x, fmt, transpose=True, implementation="pallas", platform=platform, interpret=True),
          lpnum.quantize_scaled(x.T, fmt))


@pytest.mark.parametrize("dtype", [jnp.bfloat16, pytest.param(np.float16, marks=pytest.mark.slow)])
def test_narrow_inputs(dtype):
  x = _data("mxfp8_e4m3_-1")[:32]
  if dtype == np.float16:  # float16 holds the edge data's smaller magnitudes only
    x = np.where(np.abs(x) < 6e4, x, np.float32(-1.0))
  x = jnp.asarray(x).astype(dtype)
  fmt = CASTS["nvfp4_0"]
  q, qt = kq.quantize(x, fmt, transpose="both", implementation="pallas", platform="tpu", interpret=True)
  _same(q, lpnum.quantize_scaled(x, fmt))
  _same(qt, lpnum.quantize_scaled(x.T, fmt))


@pytest.mark.parametrize("platform", ["tpu", pytest.param("gpu", marks=pytest.mark.slow)])
def test_several_tiles_per_axis(platform):
  x = _edge("mxfp6_e2m3", (1024, 128), 0, seed=3)
  fmt = CASTS["mxfp6_e2m3_0"]
  q, qt = kq.quantize(x, fmt, transpose="both", implementation="pallas", platform=platform, interpret=True)
  _same(q, lpnum.quantize_scaled(x, fmt))
  _same(qt, lpnum.quantize_scaled(x.T, fmt))


# ---- independent references ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("key", _quick(MX))
def test_mx_codes_match_the_independent_reference(key):
  name, axis = key.rsplit("_", 1)
  x = _data(key)
  q, qt = kq.quantize(x, MX[key], transpose="both", implementation="pallas", platform="tpu", interpret=True)
  for xx, qq in ((x, q), (x.T, qt)):
    codes, scales, _ = mx_quantize(xx, name, axis=int(axis))
    np.testing.assert_array_equal(np.asarray(qq.element_codes), codes)
    np.testing.assert_array_equal(np.asarray(qq.scales), scales)


@pytest.mark.parametrize("axis", [-1, 0])
def test_nvfp4_matches_the_independent_reference(axis):
  x = _data(f"nvfp4_{axis}", finite=True)
  q = kq.quantize(x, lpnum.nvfp4.format(axis=axis), implementation="pallas", platform="gpu", interpret=True)
  codes, scales, t, _ = nvfp4_quantize(x, axis=axis)
  np.testing.assert_array_equal(np.asarray(q.element_codes) & 0xF, codes & 0xF)
  np.testing.assert_array_equal(np.asarray(q.scales), scales)
  assert np.float32(q.tensor_scale) == t


def test_fp8_with_a_given_scale_matches_ml_dtypes():
  x = _data("fp8_tensor", finite=True)
  scale = np.float32(0.0625)
  q = kq.quantize(x, CASTS["fp8_tensor"], scale=scale, implementation="pallas", platform="tpu", interpret=True)
  with np.errstate(over="ignore"):
    want = np.clip(x / scale, -448, 448).astype(ml_dtypes.float8_e4m3fn).view(np.uint8)
  np.testing.assert_array_equal(np.asarray(q.element_codes), want)


def test_int8_per_row_matches_numpy():
  x = np.random.default_rng(1).standard_t(3, SHAPE).astype(np.float32)
  q = kq.quantize(x, CASTS["int8_row"], implementation="pallas", platform="gpu", interpret=True)
  s = np.max(np.abs(x), axis=1, keepdims=True) / np.float32(127)
  want = np.rint(x / s).astype(np.int8).view(np.uint8)
  np.testing.assert_array_equal(np.asarray(q.element_codes), want)
  np.testing.assert_array_equal(np.asarray(q.scales).view(np.float32), s)


def test_tensor_amax_given_is_one_read_and_means_delayed_scaling():
  x = _data("nvfp4_0", finite=True)
  fmt = CASTS["nvfp4_0"]
  own = np.float32(np.max(np.abs(x)))
  _same(kq.quantize(x, fmt, tensor_amax=own, implementation="pallas", platform="gpu", interpret=True),
        lpnum.quantize_scaled(x, fmt))
  old = np.float32(own * 0.25)  # a stale amax: the largest blocks saturate
  q = kq.quantize(x, fmt, tensor_amax=old, implementation="pallas", platform="tpu", interpret=True)
  _same(q, lpnum.quantize_scaled(x, fmt, tensor_amax=old))
  _same(kq.reference_quantize(x, fmt, tensor_amax=old), q)
  assert np.float32(q.tensor_scale) == np.float32(old / np.float32(6 * 448))


# ---- dispatch and transforms ---------------------------------------------------------------------------------------
def test_under_jit():
  x = jnp.asarray(_data("mxfp4_e2m1_-1"))
  fmt = CASTS["mxfp4_e2m1_-1"]
  f = jax.jit(lambda x: kq.quantize(x, fmt, transpose="both", implementation="pallas", platform="tpu",
                                    interpret=True))
  for got, t in zip(f(x), (False, True)):
    _same(got, lpnum.quantize_scaled(x.T if t else x, fmt))


def test_auto_runs_xla_on_the_cpu_and_takes_any_shape():
  x = np.random.default_rng(2).standard_normal((3, 40)).astype(np.float32)
  fmt = lpnum.mx.format("mxfp8_e4m3", block_size=8)
  _same(kq.quantize(x, fmt), lpnum.quantize_scaled(x, fmt))
  why = kq.pallas_supports(fmt, (3, 40), (False,), "gpu")
  assert "power-of-two" in why
  with pytest.raises(ValueError, match=r"shape \(3, 40\)"):
    kq.quantize(x, fmt, implementation="pallas", platform="gpu", interpret=True)


def test_what_the_kernels_do_not_take():
  assert "XLA path" in kq.pallas_supports(lpnum.ScaledFormat("uint8", lpnum.per_channel(0), asymmetric=True),
                                          (64, 64), (False,), "tpu")
  assert "2-D blocks" in kq.pallas_supports(lpnum.nvfp4.format(tile=True), (64, 64), (False,), "tpu")
  assert "too large" in kq.pallas_supports(CASTS["int8_row"], (1024, 1024), (False, True), "tpu")
  assert "given scale" in kq.pallas_supports(CASTS["mxfp8_e4m3_-1"], (64, 64), (False,), "tpu", scale=1.0)


@pytest.mark.parametrize("call, match", [
    (lambda x: kq.quantize(x[0], "mxfp8_e4m3"), r"shape \(256,\)"),
    (lambda x: kq.quantize(x.astype(np.int32), "mxfp8_e4m3"), "x must be float32"),
    (lambda x: kq.quantize(x, 3), "fmt=3"),
    (lambda x: kq.quantize(x, "mxfp9"), "fmt='mxfp9'"),
    (lambda x: kq.quantize(x, "mxfp8_e4m3", transpose="yes"), "transpose='yes'"),
    (lambda x: kq.quantize(x, "mxfp8_e4m3", implementation="cuda"), "implementation='cuda'"),
    (lambda x: kq.quantize(x, "mxfp8_e4m3", platform="rocm", interpret=True), "platform='rocm'"),
    (lambda x: kq.quantize(x, "mxfp8_e4m3", interpret=1), "interpret"),
    (lambda x: kq.quantize(x, "mxfp8_e4m3", tensor_amax=1.0), "tensor_amax is for formats"),
    (lambda x: kq.quantize(x, "nvfp4", tensor_amax=np.ones(2, np.float32)), "tensor_amax must be a float scalar"),
    (lambda x: kq.quantize(x, CASTS["fp8_tensor"], scale=-1.0), r"scale=-1.0 must be finite and positive"),
    (lambda x: kq.quantize(x, "mxfp8_e4m3", implementation="pallas"), "needs a GPU or TPU"),
    (lambda x: lpnum.quantize_scaled(x, "mxfp8_e4m3", tensor_amax=1.0), "tensor_amax is for formats"),
    (lambda x: lpnum.quantize_scaled(x, "nvfp4", tensor_amax=np.ones(2)), "tensor_amax must be a float scalar"),
])
def test_bad_inputs(call, match):
  with pytest.raises((ValueError, TypeError), match=match):
    call(np.ones(SHAPE, np.float32))


# ---- lowering for real hardware at 8192 x 8192 ---------------------------------------------------------------------
LOWERED = {
    "mxfp8_e4m3": (lpnum.mx.format("mxfp8_e4m3"), "both"),
    "mxfp8_e5m2": (lpnum.mx.format("mxfp8_e5m2", axis=0), "both"),
    "mxfp6_e2m3": (lpnum.mx.format("mxfp6_e2m3"), "both"),
    "mxfp6_e3m2": (lpnum.mx.format("mxfp6_e3m2", axis=0), False),
    "mxfp4_e2m1": (lpnum.mx.format("mxfp4_e2m1"), "both"),
    "mxint8": (lpnum.mx.format("mxint8", axis=0), True),
    "nvfp4": (lpnum.nvfp4.format(), "both"),
    "fp8_tensor": (CASTS["fp8_tensor"], "both"),
    "int8_row": (CASTS["int8_row"], False),
}


@pytest.mark.parametrize("name", LOWERED)
@pytest.mark.parametrize("platform, call", [("tpu", "tpu_custom_call"), ("cuda", "xla.gpu.triton")])
def test_lowers_for_tpu_and_cuda_at_8192(name, platform, call):
  fmt, transpose = LOWERED[name]
  kw = {"scale": jnp.float32(0.5)} if name == "fp8_tensor" else {"tensor_amax": jnp.float32(4)} if (
      name == "nvfp4") else {}
  fn = jax.jit(lambda x: kq.quantize(x, fmt, transpose=transpose, implementation="pallas", platform=platform, **kw))
  checks = [export.DisabledSafetyCheck.custom_call("__gpu$xla.gpu.triton")]
  for dtype in (jnp.float32, jnp.bfloat16):
    module = export.export(fn, platforms=[platform], disabled_checks=checks)(
        jax.ShapeDtypeStruct((8192, 8192), dtype)).mlir_module()
    assert module.count(call) >= 1
