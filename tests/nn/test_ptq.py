"""lpnum.nn.ptq: packed kernels, their bytes, inference through lpnum.kernels.matmul, checkpoints."""

from __future__ import annotations

import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx, serialization

import lpnum
from lpnum import nn as lnn
from lpnum.nn.ptq import PackedKernel, weight_format

from scaled_reference import ref_int
from testing import F32, NnxNet, data, dots_in, matmul64


# ---- PTQ -----------------------------------------------------------------------------------------------------------
def _mlp_params(k=512, hidden=256, out=10):
  model = nn.Sequential([nn.Dense(hidden), nn.relu, nn.Dense(out)])
  return model, model.init(jax.random.key(0), np.ones((1, k), F32))["params"]


@pytest.mark.parametrize("fmt,gran,wbits", [("int8", "channel", 8), ("int4", "channel", 4), ("int4", 128, 4),
                                            ("mxfp4_e2m1", None, 4.25), ("nvfp4", None, 4.5),
                                            ("float8_e4m3fn", "channel", 8)])
def test_ptq_bytes_and_inference(fmt, gran, wbits):
  model, params = _mlp_params()
  cfg = lpnum.DotConfig.weight_only(fmt, {"channel": lpnum.per_channel(), 128: lpnum.per_block(128), None: None}[gran])
  q = lnn.ptq(params, [lnn.Rule("layers_0", cfg), lnn.Rule("layers_2", None)])
  assert isinstance(q["layers_0"]["kernel"], lnn.QuantizedKernel)
  assert not isinstance(q["layers_2"]["kernel"], lnn.QuantizedKernel)
  kernel_bytes = q["layers_0"]["kernel"].nbytes
  n_scales = {"channel": 256, 128: 4 * 256}.get(gran, 0)
  ideal = 512 * 256 * wbits / 8 + 4 * n_scales
  assert kernel_bytes <= 1.01 * ideal, (kernel_bytes, ideal)
  x = data((3, 512), 34)
  qmodel = lnn.quantize_model(model, [lnn.Rule("layers_0", cfg), lnn.Rule("layers_2", None)])
  y = jax.jit(qmodel.apply)({"params": q}, x)
  wq = np.asarray(lnn.dequantize_kernel(q["layers_0"]["kernel"].unbox()))
  ref = model.apply({"params": {**params, "layers_0": {**params["layers_0"], "kernel": wq}}}, x)
  np.testing.assert_allclose(np.asarray(y), np.asarray(ref), rtol=1e-5, atol=1e-5)


def test_ptq_dequantized_kernel_matches_independent_reference():
  _, params = _mlp_params(64, 32, 8)
  q = lnn.ptq(params, [lnn.Rule(".*", lpnum.DotConfig.weight_only("int8"))], layout="qarray")
  w = np.asarray(params["layers_0"]["kernel"])
  np.testing.assert_array_equal(np.asarray(lnn.dequantize_kernel(q["layers_0"]["kernel"].unbox())),
                                ref_int(w, 8, (64, 1))[0])


@pytest.mark.parametrize("fmt", ["float16", "float8_e4m3fn", "int8"])
def test_ptq_direct_casts_pack_the_cast_values(fmt):
  # scaling="none" is a plain cast: packed with a static scale of 1, not abs-max scaled. References: ml_dtypes
  # casts (float16, E4M3) and NumPy's round-half-even (int8), on weights within the formats' ranges.
  import ml_dtypes
  model, params = _mlp_params(64, 32, 8)
  w = np.asarray(params["layers_0"]["kernel"]) * 40  # |w| < 448 and < 127.5: no overflow
  params = {**params, "layers_0": {**params["layers_0"], "kernel": jnp.asarray(w)}}
  rules = [lnn.Rule("layers_0", lpnum.DotConfig.weight_only(fmt, lpnum.per_tensor(), scaling="none")),
           lnn.Rule("layers_2", None)]
  q = lnn.ptq(params, rules)
  want = {"float16": lambda a: a.astype(np.float16).astype(F32),
          "float8_e4m3fn": lambda a: a.astype(ml_dtypes.float8_e4m3fn).astype(F32),
          "int8": lambda a: np.rint(a).astype(F32) + F32(0)}[fmt](w)  # integers have no -0
  got = np.asarray(lnn.dequantize_kernel(q["layers_0"]["kernel"].unbox()))
  np.testing.assert_array_equal(got.view(np.uint32), want.view(np.uint32))
  x = data((3, 64), 39)
  y = jax.jit(lnn.quantize_model(model, rules).apply)({"params": q}, x)
  h = np.maximum(matmul64(np.asarray(x), want) + np.asarray(params["layers_0"]["bias"], np.float64), 0)
  ref = matmul64(h, np.asarray(params["layers_2"]["kernel"])) + np.asarray(params["layers_2"]["bias"], np.float64)
  np.testing.assert_allclose(np.asarray(y), ref, rtol=1e-5, atol=1e-4)


def test_ptq_of_a_bfloat16_cast_is_an_error_naming_the_layer():
  _, params = _mlp_params(64, 32, 8)
  rules = [lnn.Rule(".*", lpnum.DotConfig.weight_only("bfloat16", lpnum.per_tensor(), scaling="none"))]
  with pytest.raises(ValueError, match="layers_0/kernel: ptq cannot pack weights cast directly to bfloat16"):
    lnn.ptq(params, rules)


def test_ptq_checkpoint_round_trip_is_bit_exact_and_small(tmp_path):
  _, params = _mlp_params()
  rules = [lnn.Rule(".*", lpnum.DotConfig.weight_only("int4"))]
  q = lnn.ptq(params, rules)
  blob = serialization.to_bytes(q)
  # Each packed kernel adds its description (under 1 KB of JSON for the box and its value).
  assert len(blob) < 1.02 * lnn.params_nbytes(q) + 2 * 1024 and lnn.params_nbytes(q) < 0.14 * lnn.params_nbytes(params)
  target = jax.eval_shape(lambda p: lnn.ptq(p, rules), params)
  restored = serialization.from_bytes(target, blob)
  for a, b in zip(jax.tree_util.tree_leaves(restored), jax.tree_util.tree_leaves(q)):
    assert a.dtype == b.dtype and np.array_equal(np.asarray(a), np.asarray(b))
  ocp = pytest.importorskip("orbax.checkpoint")
  with ocp.StandardCheckpointer() as ckpt:
    ckpt.save(tmp_path / "ckpt", q)
  with ocp.StandardCheckpointer() as ckpt:
    back = ckpt.restore(tmp_path / "ckpt", target)
  for a, b in zip(jax.tree_util.tree_leaves(back), jax.tree_util.tree_leaves(q)):
    assert np.array_equal(np.asarray(a), np.asarray(b))


def test_ptq_peak_memory_with_donation():
  """ptq holds at most the float tree plus one packed kernel: with donate=True the float kernels are freed as
  they are packed, so live bytes never exceed the float tree's by more than the largest packed kernel."""
  def make():
    model = nn.Sequential([nn.Dense(512), nn.relu, nn.Dense(512), nn.relu, nn.Dense(512)])
    return jax.jit(model.init)(jax.random.key(0), jnp.ones((1, 512)))["params"]

  base = sum(a.nbytes for a in jax.live_arrays())
  params = make()
  float_bytes = lnn.params_nbytes(params)
  peaks = []
  q = lnn.ptq(params, [lnn.Rule(".*", lpnum.DotConfig.weight_only("int8"))], donate=True,
              on_leaf=lambda _: peaks.append(sum(a.nbytes for a in jax.live_arrays()) - base))
  assert len(peaks) == 3
  packed = max(k.nbytes for k in jax.tree_util.tree_leaves(q, is_leaf=lambda a: isinstance(a, lnn.QuantizedKernel))
               if isinstance(k, lnn.QuantizedKernel))
  assert max(peaks) <= float_bytes + packed + 64 * 1024, (peaks, float_bytes)
  assert peaks[-1] < 0.4 * float_bytes  # every float kernel is gone by the end


def test_ptq_w8a8_inference_runs_int8_dots():
  model, params = _mlp_params(256, 128, 8)
  rules = [lnn.Rule(".*", lpnum.DotConfig.w8a8(backward=False))]
  q = lnn.ptq(params, rules)
  x = data((4, 256), 37)
  qmodel = lnn.quantize_model(model, rules)
  dots = dots_in(lambda p, v: qmodel.apply({"params": p}, v), q, x)
  assert len(dots) == 2 and all(d[0].endswith("xi8>") and d[1].endswith("xi8>") and d[2].endswith("xi32>")
                                for d in dots), dots
  y = qmodel.apply({"params": q}, x)
  fake = lnn.quantize_model(model, rules).apply({"params": params}, x)
  np.testing.assert_allclose(np.asarray(y), np.asarray(fake), rtol=1e-5, atol=1e-5)


def test_params_not_matching_the_model_name_the_path():
  model, params = _mlp_params(64, 32, 8)
  rules = [lnn.Rule(".*", lpnum.DotConfig.weight_only("int8"))]
  q = lnn.ptq(params, rules)
  x = data((2, 64), 38)
  with pytest.raises(ValueError, match="layers_2/kernel hold a kernel packed by lpnum.nn.ptq as int8"):
    lnn.quantize_model(model, [lnn.Rule("layers_0", rules[0].config), lnn.Rule("layers_2", None)]).apply(
        {"params": q}, x)
  bad = {**params, "layers_2": {**params["layers_2"], "kernel": np.ones((31, 8), F32)}}
  with pytest.raises(Exception, match="layers_2"):
    lnn.quantize_model(model, rules).apply({"params": bad}, x)


@pytest.mark.parametrize("packed_as,applied_as,differ", [
    (lpnum.DotConfig.weight_only("int8"), lpnum.DotConfig.weight_only("int4"), "element.bits"),
    pytest.param(lpnum.DotConfig.weight_only("int4", lpnum.per_block(32)),
                 lpnum.DotConfig.weight_only("uint4", lpnum.per_block(32)), "element.signed", marks=pytest.mark.slow),
    pytest.param(lpnum.DotConfig.weight_only("mxfp8_e4m3"), lpnum.DotConfig.weight_only("mxfp8_e5m2"),
                 "element.exponent_bits", marks=pytest.mark.slow),
    (lpnum.DotConfig.weight_only("nvfp4"),
     lpnum.DotConfig.weight_only(lpnum.nvfp4.format(axis=0, tensor_scale=False), lpnum.per_block(16)), "tensor_scale"),
    pytest.param(lpnum.DotConfig.weight_only("int4", lpnum.per_block(32)),
                 lpnum.DotConfig.weight_only("int4", lpnum.per_block(64)), "granularity.sizes",
                 marks=pytest.mark.slow)])
def test_packed_params_under_another_rule_name_the_layer_and_both_formats(packed_as, applied_as, differ):
  model, params = _mlp_params(64, 32, 8)
  q = lnn.ptq(params, [lnn.Rule(".*", packed_as)])
  x = data((2, 64), 42)
  stored, wanted = weight_format(packed_as).name, weight_format(applied_as).name
  with pytest.raises(ValueError, match=rf"layers_0/kernel were packed by lpnum.nn.ptq as {re.escape(stored)}.*"
                                       rf"quantizes weights as {re.escape(wanted)} \(they differ in [^)]*{differ}"):
    lnn.quantize_model(model, [lnn.Rule(".*", applied_as)]).apply({"params": q}, x)
  # The same rules run (a rule whose calibration differs packs the same codes: it is accepted too).
  lnn.quantize_model(model, [lnn.Rule(".*", packed_as)]).apply({"params": q}, x)


def test_packed_params_under_another_rule_nnx():
  net = NnxNet(nnx.Rngs(0))
  lnn.ptq_nnx(net, [lnn.Rule("l1", lpnum.DotConfig.weight_only("int8")), lnn.Rule(".*", None)])
  with pytest.raises(ValueError, match=r"l1/kernel were packed by lpnum.nn.ptq as int8.*as int4"):
    lnn.quantize_model(net, [lnn.Rule("l1", lpnum.DotConfig.weight_only("int4")), lnn.Rule(".*", None)])
  with pytest.raises(ValueError, match=r"l1/kernel hold a kernel packed by lpnum.nn.ptq as int8"):
    lnn.quantize_model(net, [lnn.Rule(".*", None)])


def test_packed_params_accept_a_rule_that_differs_only_in_calibration():
  model, params = _mlp_params(64, 32, 8)
  absmax = lpnum.DotConfig.weight_only(lpnum.ScaledFormat("int8", lpnum.per_channel()))
  mse = lpnum.DotConfig.weight_only(lpnum.ScaledFormat("int8", lpnum.per_channel(), calibration=lpnum.mse(4)))
  q = lnn.ptq(params, [lnn.Rule(".*", mse)])
  x = data((2, 64), 43)
  np.testing.assert_array_equal(np.asarray(lnn.quantize_model(model, [lnn.Rule(".*", absmax)]).apply({"params": q}, x)),
                                np.asarray(lnn.quantize_model(model, [lnn.Rule(".*", mse)]).apply({"params": q}, x)))


def test_ptq_conv_multiplies_by_the_packed_values_once():
  """A percentile-calibrated kernel is not idempotent under quantization: the PTQ'd conv must use the packed values
  as they are, not quantize them again."""
  cfg = lpnum.DotConfig(rhs=lpnum.OperandQuant(lpnum.ScaledFormat("int8", calibration=lpnum.percentile(90.0)),
                                            granularity=lpnum.per_channel()))
  conv = nn.Conv(4, (3, 3))
  x = data((2, 6, 6, 3), 39)
  params = conv.init(jax.random.key(0), x)["params"]
  q = lnn.ptq(params, [lnn.Rule(".*", cfg)])
  wq = np.asarray(lnn.dequantize_kernel(q["kernel"].unbox()))
  got = lnn.quantize_model(conv, [lnn.Rule(".*", cfg)]).apply({"params": q}, x)
  want = conv.apply({"params": {"kernel": wq, "bias": params["bias"]}}, x)
  np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-5)


def test_kernel_views_and_bad_views():
  attention = nn.MultiHeadDotProductAttention(num_heads=2, qkv_features=8)
  x = data((1, 3, 8), 40)
  assert lnn.kernel_views(attention, x) == {"query": 1, "key": 1, "value": 1, "out": 2}
  assert lnn.kernel_views(nn.Conv(2, (3,)), data((1, 5, 2), 41)) == {"": 2}
  net = NnxNet(nnx.Rngs(0))
  assert lnn.kernel_views(net) == {"l1": 1, "l2": 1, "head": 1}
  params = attention.init(jax.random.key(0), x)["params"]
  with pytest.raises(ValueError, match="views"):
    lnn.ptq(params, lpnum.DotConfig.weight_only(), views={"out": 3})
  with pytest.raises(TypeError, match="model must be"):
    lnn.kernel_views("model")


def test_ptq_bad_inputs():
  _, params = _mlp_params(64, 32, 8)
  with pytest.raises(ValueError, match="'nope' matches no kernel"):
    lnn.ptq(params, [lnn.Rule("nope", lpnum.DotConfig.weight_only())])
  with pytest.raises(ValueError, match="layout="):
    lnn.ptq(params, lpnum.DotConfig.weight_only(), layout="tiles")
  bad = {"dense": {"kernel": np.ones((3,), F32)}}
  with pytest.raises(ValueError, match="dense/kernel"):
    lnn.ptq(bad, lpnum.DotConfig.weight_only())


def test_ptq_nnx_runs_from_packed_weights():
  net = NnxNet(nnx.Rngs(0))
  x = data((2, 10), 35)
  w1 = np.asarray(net.l1.kernel[...])
  rules = [lnn.Rule("l1", lpnum.DotConfig.weight_only("int8")), lnn.Rule(".*", None)]
  lnn.ptq_nnx(net, rules)
  assert isinstance(net.l1.kernel[...], PackedKernel)
  y = net(x)
  params = {"Dense_0": {"kernel": w1, "bias": net.l1.bias[...]},
            "Dense_1": {"kernel": net.l2.kernel[...], "bias": net.l2.bias[...]},
            "head": {"kernel": net.head.kernel[...], "bias": net.head.bias[...]}}
  np.testing.assert_allclose(np.asarray(y), _net_reference_first(params, x), rtol=1e-5, atol=1e-5)


def _net_reference_first(params, x):
  w = np.asarray(params["Dense_0"]["kernel"])
  x = np.maximum(matmul64(x, ref_int(w, 8, (w.shape[0], 1))[0]) + params["Dense_0"]["bias"], 0).astype(F32)
  x = np.maximum(matmul64(x, np.asarray(params["Dense_1"]["kernel"])) + params["Dense_1"]["bias"], 0).astype(F32)
  return matmul64(x, np.asarray(params["head"]["kernel"])) + params["head"]["bias"]
