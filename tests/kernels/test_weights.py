"""Weights cast into the packed matmul's layout: the Pallas cast writing bit planes equals ``pack_weights`` of
``quantize_scaled`` leaf for leaf (whose layout ``tests/kernels/test_packed_matmul.py`` checks against
``lpnum.dequantize``), on edge data; the dispatch; lowering for TPU and GPU at 8192 x 8192."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import export

import lpnum
from lpnum import kernels
from tiers import default_share

FORMATS = {
    "mxfp4": lpnum.mx.format("mxfp4_e2m1", axis=0),
    "mxfp6": lpnum.mx.format("mxfp6_e3m2", axis=0),
    "mxfp8": lpnum.mx.format("mxfp8_e4m3", axis=0),
    "nvfp4": lpnum.nvfp4.format(axis=0),
    "int8_per_channel": lpnum.ScaledFormat("int8", lpnum.per_channel(1)),
    "int4_g128": lpnum.ScaledFormat("int4", lpnum.per_block(128, 0)),
    "fp8_tensor": lpnum.ScaledFormat("float8_e4m3fn", lpnum.per_tensor()),
}
QUICK = {"mxfp6", "nvfp4", "int8_per_channel"}


def _weights(finite: bool) -> np.ndarray:
  rng = np.random.default_rng(0)
  w = rng.standard_t(4, (1024, 256)).astype(np.float32)
  w[:32, :3] = 0  # zero blocks
  w[200:232, 9] = rng.integers(-3, 4, 32) * np.float32(2.0 ** -149)  # subnormal blocks
  w[300, 11] = 1e30  # saturation of the rest of its block
  w[320:352, 12] = np.float32(1.25)  # MXFP4 ties (1.25 = 5 * 2^-2 between 1 and 1.5)
  if not finite:
    w[40:72, 5] = np.nan
    w[80, 6] = np.inf
  return w


def _same(a, b) -> None:
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


@pytest.mark.parametrize("name", default_share(FORMATS, QUICK))
@pytest.mark.parametrize("platform", ["tpu", "gpu"])
def test_equals_pack_weights_of_quantize_scaled(name, platform):
  fmt = FORMATS[name]
  w = _weights(finite=fmt.tensor_scale or name == "fp8_tensor")
  kw = {"scale": np.float32(0.01)} if name == "fp8_tensor" else {}
  got = kernels.quantize_weights(w, fmt, implementation="pallas", platform=platform, interpret=True, **kw)
  _same(got, kernels.pack_weights(lpnum.quantize_scaled(w, fmt, **kw)))


def test_other_tiles_and_the_xla_fallback():
  w = _weights(finite=False)
  fmt = FORMATS["mxfp4"]
  _same(kernels.quantize_weights(w, fmt, tile_k=1024, implementation="pallas", platform="tpu", interpret=True),
        kernels.pack_weights(lpnum.quantize_scaled(w, fmt), tile_k=1024))
  ragged = w[:992, :200]  # needs padding to (1024, 256): the XLA path
  _same(kernels.quantize_weights(ragged, fmt), kernels.pack_weights(lpnum.quantize_scaled(ragged, fmt)))
  with pytest.raises(ValueError, match="needs padding"):
    kernels.quantize_weights(ragged, fmt, implementation="pallas", interpret=True)
  with pytest.raises(ValueError, match="along K"):
    kernels.quantize_weights(w, lpnum.mx.format("mxfp4_e2m1"), implementation="pallas", interpret=True)


def test_the_weights_multiply_as_pack_weights_gives_them():
  w = _weights(finite=True)
  x = np.random.default_rng(1).standard_normal((4, 1024)).astype(np.float32)
  packed = kernels.quantize_weights(w, FORMATS["mxfp4"], implementation="pallas", platform="tpu", interpret=True)
  want = kernels.matmul(x, kernels.pack_weights(lpnum.quantize_scaled(w, FORMATS["mxfp4"])))
  np.testing.assert_array_equal(np.asarray(kernels.matmul(x, packed)), np.asarray(want))


@pytest.mark.parametrize("name", ["mxfp4", "mxfp6", "mxfp8", "nvfp4", "int8_per_channel", "fp8_tensor"])
@pytest.mark.parametrize("platform, call", [("tpu", "tpu_custom_call"), ("cuda", "xla.gpu.triton")])
def test_lowers_for_tpu_and_cuda_at_8192(name, platform, call):
  fmt = FORMATS[name]
  kw = {"scale": jnp.float32(0.5)} if name == "fp8_tensor" else {"tensor_amax": jnp.float32(4)} if (
      name == "nvfp4") else {}
  fn = jax.jit(lambda w: kernels.quantize_weights(w, fmt, implementation="pallas", platform=platform, **kw))
  checks = [export.DisabledSafetyCheck.custom_call("__gpu$xla.gpu.triton")]
  module = export.export(fn, platforms=[platform], disabled_checks=checks)(
      jax.ShapeDtypeStruct((8192, 8192), jnp.bfloat16)).mlir_module()
  assert call in module
