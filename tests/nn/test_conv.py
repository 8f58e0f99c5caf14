"""lpnum.nn.conv: quantized convolutions, integer (W8A8) forward and backward, and their granularities.

References: int64 NumPy convolutions and transposes written from the definition (``conv_reference``), the scaled
reference quantizer ``ref_int``, JAX's own float convolution VJP for the transposed convolutions, and the lowered
program for the integer dtypes.
"""

from __future__ import annotations

import functools
import re

import conv_reference as cref
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
from flax import nnx
from scaled_reference import ref_fp8, ref_int
from testing import F32, data, ramp
from tiers import default_share

import lpnum
from lpnum import nn as lnn
from lpnum.nn.conv import _Conv
from lpnum.zoo.models import CNN

W8A8 = lpnum.DotConfig.w8a8()


def _quant_conv(features, kernel, config, **kw):
  return nn.Conv(features, kernel, conv_general_dilated_cls=functools.partial(lnn.linen.QuantConv, config=config),
                 **kw)


def _per_row(x2: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """ref_int codes (int64) and float32 scales of a 2-D view, one scale per row."""
  _, q, s = ref_int(x2, 8, (1, x2.shape[1]))
  return q.reshape(x2.shape).astype(np.int64), s.reshape(-1).astype(F32)


def _codes(x: np.ndarray, axis: int) -> tuple[np.ndarray, np.ndarray]:
  """Int8 codes with one scale per index of ``axis`` (the rest of the tensor shares it)."""
  moved = np.moveaxis(x, axis, 0)
  q, s = _per_row(moved.reshape(moved.shape[0], -1))
  return np.moveaxis(q.reshape(moved.shape), 0, axis), s


# ---- the transposed convolutions ---------------------------------------------------------------------------------
TRANSPOSE_CASES = {
    "same-stride2": ((2, 9, 9, 4), (3, 3, 4, 6), (2, 2), "SAME", {}),
    "valid": ((2, 9, 9, 4), (3, 3, 4, 6), (2, 2), "VALID", {}),
    "explicit-groups": ((2, 9, 8, 4), (3, 2, 2, 6), (2, 3), ((1, 2), (0, 1)), {"feature_group_count": 2}),
    "dilations": ((2, 9, 8, 4), (3, 3, 4, 6), (1, 2), ((0, 0), (1, 1)),
                  {"rhs_dilation": (2, 1), "lhs_dilation": (1, 2)}),
    "nchw-oihw": ((2, 4, 9, 8), (6, 4, 3, 3), (2, 2), "SAME", {"dimension_numbers": ("NCHW", "OIHW", "NCHW")}),
    "mixed-layouts-groups": ((2, 4, 9, 8), (6, 2, 3, 3), (2, 1), "VALID",
                             {"dimension_numbers": ("NCHW", "OIHW", "NHWC"), "feature_group_count": 2}),
    "1d-groups": ((3, 10, 6), (5, 2, 6), (3,), "VALID", {"dimension_numbers": ("NWC", "WIO", "NWC"),
                                                         "feature_group_count": 3}),
    "depthwise": ((2, 9, 9, 4), (3, 3, 1, 8), (1, 1), "SAME", {"feature_group_count": 4}),
}


@pytest.mark.parametrize("case", TRANSPOSE_CASES.values(), ids=TRANSPOSE_CASES.keys())
def test_transposed_convolutions_on_int8_match_jax_vjp(case):
  # Small integers: JAX's float32 VJP is exact, and the int8 transposes must give the same integers in int32.
  xs, ws, strides, padding, kw = case
  kw = {"dimension_numbers": ("NHWC", "HWIO", "NHWC"), **kw}
  rng = np.random.default_rng(0)
  x, w = (jnp.asarray(rng.integers(-5, 6, s), jnp.float32) for s in (xs, ws))
  y, vjp = jax.vjp(lambda a, b: jax.lax.conv_general_dilated(a, b, strides, padding, **kw), x, w)
  g = jnp.asarray(rng.integers(-5, 6, y.shape), jnp.float32)
  dx, dw = vjp(g)
  conv = _Conv.of(x, w, (strides, padding), kw)
  i8 = lambda a: a.astype(jnp.int8)
  got_dx = jax.jit(lambda g, w: conv.transpose_lhs(g, w, jnp.int32))(i8(g), i8(w))
  got_dw = jax.jit(lambda x, g: conv.transpose_rhs(x, g, jnp.int32))(i8(x), i8(g))
  assert got_dx.dtype == got_dw.dtype == jnp.int32
  np.testing.assert_array_equal(np.asarray(got_dx), np.asarray(dx))
  np.testing.assert_array_equal(np.asarray(got_dw), np.asarray(dw))


# ---- W8A8 convolutions: exact integer arithmetic -------------------------------------------------------------------
W8A8_CASES = {
    "same-stride1": ((2, 7, 7, 4), 6, (3, 3), 1, "SAME", 1),
    "same-stride2": ((2, 9, 8, 4), 6, (3, 3), 2, "SAME", 1),
    "valid-stride2": ((3, 9, 9, 3), 5, (3, 2), 2, "VALID", 1),
    "groups": ((2, 8, 8, 4), 6, (3, 3), 1, "SAME", 2),
}


@pytest.mark.parametrize("case", default_share(W8A8_CASES.values(),
                                               keep=[W8A8_CASES["valid-stride2"], W8A8_CASES["groups"]]),
                         ids=W8A8_CASES.keys())
def test_w8a8_conv_forward_and_both_gradients_are_exact_integer_arithmetic(case):
  xs, features, kernel, stride, padding, groups = case
  conv = _quant_conv(features, kernel, W8A8, strides=stride, padding=padding, feature_group_count=groups,
                     use_bias=False)
  x = data(xs, 40)
  w = np.asarray(jax.jit(conv.init)(jax.random.key(0), x)["params"]["kernel"])
  c = np.asarray(ramp(jax.eval_shape(lambda: conv.apply({"params": {"kernel": w}}, x))) / 100)

  def loss(w, x):
    y = conv.apply({"params": {"kernel": w}}, x)
    return jnp.sum(y * c), y

  (_, y), (dw, dx) = jax.jit(jax.value_and_grad(loss, argnums=(0, 1), has_aux=True))(w, x)

  pads = [cref.same_padding(n, k, stride) if padding == "SAME" else (0, 0) for n, k in zip(xs[1:3], kernel)]
  strides = (stride, stride)
  # Forward: x per example, w per output feature.
  qx, sx = _codes(x, 0)
  qw, sw = _codes(w, 3)
  acc = cref.conv(qx, qw, strides, pads, groups)
  want = (acc.astype(F32) * sx[:, None, None, None]) * sw
  np.testing.assert_array_equal(np.asarray(y), want)
  # dlhs: g per example, w re-quantized per input feature (the scales outside the transposed sum).
  qg, sg = _codes(c, 0)
  qwi, swi = _codes(w, 2)
  acc = cref.conv_input_grad(qg, qwi, xs, strides, pads, groups)
  want = (acc.astype(F32) * sg[:, None, None, None]) * np.tile(swi, groups)
  np.testing.assert_array_equal(np.asarray(dx), want)
  # drhs: x re-quantized per input feature, g per output feature.
  qxc, sxc = _codes(x, 3)
  qgo, sgo = _codes(c, 3)
  acc = cref.conv_kernel_grad(qxc, qgo, w.shape, strides, pads, groups)
  i_n, o_n = w.shape[2:]
  read = (np.arange(o_n)[None, :] // (o_n // groups)) * i_n + np.arange(i_n)[:, None]  # input feature of (i, o)
  want = (acc.astype(F32) * sxc[read]) * sgo
  np.testing.assert_array_equal(np.asarray(dw), want)


def _convs_in(lowered) -> list[tuple[str, str, str]]:
  """The (lhs, rhs, out) tensor types of every convolution in a lowered program."""
  return re.findall(r"stablehlo\.convolution[^\n]*?: \((tensor<[^>]*>), (tensor<[^>]*>)\) -> (tensor<[^>]*>)",
                    lowered.as_text())


def test_w8a8_conv_runs_int8_convolutions_forward_and_backward():
  """No silent fallback: the forward and both backward convolutions of a W8A8 layer are int8 x int8 -> int32."""
  conv = _quant_conv(6, (3, 3), W8A8, strides=2, feature_group_count=2)
  x = data((2, 8, 8, 4), 46)
  params = jax.jit(conv.init)(jax.random.key(0), x)["params"]
  convs = _convs_in(jax.jit(jax.grad(lambda p, x: jnp.sum(conv.apply({"params": p}, x) ** 2), argnums=(0, 1)))
                    .lower(params, x))
  assert len(convs) == 3
  for lhs, rhs, out in convs:
    assert lhs.endswith("xi8>") and rhs.endswith("xi8>") and out.endswith("xi32>"), (lhs, rhs, out)


def test_fp8_int_engine_convolves_fp8_codes():
  e4m3 = lpnum.OperandQuant("float8_e4m3fn", granularity=lpnum.per_channel())
  grad = lpnum.BackwardQuant(grad=lpnum.OperandQuant("float8_e5m2", granularity=lpnum.per_channel()), operand=e4m3)
  cfg = lpnum.DotConfig(lhs=e4m3, rhs=e4m3, dlhs=grad, drhs=grad, engine="int")
  conv = _quant_conv(4, (3, 3), cfg, strides=2, use_bias=False)
  x = data((2, 8, 8, 3), 47)
  params = jax.jit(conv.init)(jax.random.key(0), x)["params"]
  w = np.asarray(params["kernel"])
  qx = ref_fp8(x.reshape(2, -1), ml_dtypes.float8_e4m3fn, (1, 8 * 8 * 3)).reshape(x.shape)
  qw = np.moveaxis(ref_fp8(w.reshape(-1, 4).T, ml_dtypes.float8_e4m3fn, (1, 27)), 0, 1).reshape(w.shape)
  want = nn.Conv(4, (3, 3), strides=2, use_bias=False).apply({"params": {"kernel": qw}}, qx)
  np.testing.assert_allclose(np.asarray(jax.jit(conv.apply)({"params": params}, x)), np.asarray(want), rtol=1e-5,
                             atol=1e-5)
  loss = lambda p, x: jnp.sum(conv.apply({"params": p}, x) ** 2)
  fwd, *bwd = _convs_in(jax.jit(jax.grad(loss, argnums=(0, 1))).lower(params, x))
  assert fwd[0].endswith("xf8E4M3FN>") and fwd[1].endswith("xf8E4M3FN>") and fwd[2].endswith("xf32>")
  # E5M2 gradients meet E4M3 codes in bfloat16, which holds both exactly.
  assert len(bwd) == 2 and all(a.endswith("xbf16>") and b.endswith("xbf16>") and o.endswith("xf32>")
                               for a, b, o in bwd)


@pytest.mark.slow
def test_w8a8_model_runs_int8_convolutions_forward_and_backward():
  """Rule('.*', w8a8) on the zoo's CNN: every convolution, forward and both backward, is int8 x int8 -> int32."""
  model = lnn.quantize_model(CNN(channels=(4,), num_classes=3), [lnn.Rule(".*", W8A8)])
  x = data((2, 8, 8, 1), 41)
  variables = jax.jit(lambda x: model.init(jax.random.key(0), x, train=False))(x)

  def loss(params, x):
    y, _ = model.apply({**variables, "params": params}, x, train=True, mutable=["batch_stats"])
    return jnp.sum(y ** 2)

  lowered = jax.jit(jax.grad(loss, argnums=(0, 1))).lower(variables["params"], x)
  convs = _convs_in(lowered)
  leaves = jax.tree_util.tree_leaves_with_path(variables["params"])
  kernels = [p for p, _ in leaves if "Conv" in jax.tree_util.keystr(p)]
  assert len(kernels) == 3 and len(convs) == 3 * len(kernels)
  for lhs, rhs, out in convs:
    assert lhs.endswith("xi8>") and rhs.endswith("xi8>") and out.endswith("xi32>"), (lhs, rhs, out)
  assert all(np.isfinite(np.asarray(v)).all() for v in jax.tree.leaves(lowered.compile()(variables["params"], x)))


def test_nnx_w8a8_conv_matches_linen():
  x = data((2, 6, 6, 3), 42)
  layer = nnx.Conv(3, 5, (3, 3), strides=2, padding="VALID", conv_general_dilated=lnn.nnx.QuantConv(W8A8),
                   rngs=nnx.Rngs(0))
  w = np.asarray(layer.kernel[...])
  qx, sx = _codes(x, 0)
  qw, sw = _codes(w, 3)
  want = (cref.conv(qx, qw, (2, 2), [(0, 0), (0, 0)]).astype(F32) * sx[:, None, None, None]) * sw
  y = nnx.jit(lambda m, x: m(x))(layer, x)
  np.testing.assert_array_equal(np.asarray(y) - np.asarray(layer.bias[...]), want)


def test_ptq_packed_kernel_runs_the_w8a8_convolution():
  # The packed int8 kernel's values re-quantize to the same codes and scales (abs-max per output feature).
  conv = nn.Conv(4, (3, 3), strides=2, use_bias=False)
  x = data((2, 8, 8, 3), 48)
  params = jax.jit(conv.init)(jax.random.key(0), x)["params"]
  rules = [lnn.Rule(".*", W8A8)]
  y = jax.jit(lnn.quantize_model(conv, rules).apply)({"params": lnn.ptq(params, rules)}, x)
  qx, sx = _codes(x, 0)
  qw, sw = _codes(np.asarray(params["kernel"]), 3)
  pads = [cref.same_padding(8, 3, 2)] * 2
  want = (cref.conv(qx, qw, (2, 2), pads).astype(F32) * sx[:, None, None, None]) * sw
  np.testing.assert_array_equal(np.asarray(y), want)


# ---- granularities of the fake-quantized convolution -------------------------------------------------------------
@pytest.mark.parametrize("stride, padding",
                         default_share([(1, "SAME"), (2, "SAME"), (3, "VALID")], keep=[(3, "VALID")], unpack=True))
def test_lhs_per_channel_is_per_example_and_blocks_run_along_input_features(stride, padding):
  x = data((3, 9, 9, 4), 43)
  cases = {
      "per-example": (lpnum.per_channel(), ref_int(x.reshape(3, -1), 8, (1, 9 * 9 * 4))[0].reshape(x.shape)),
      "blocks-of-2": (lpnum.per_block(2), ref_int(x.reshape(-1, 4), 8, (1, 2))[0].reshape(x.shape)),
  }
  for granularity, qx in cases.values():
    cfg = lpnum.DotConfig(lhs=lpnum.OperandQuant("int8", granularity))
    conv = _quant_conv(5, (3, 3), cfg, strides=stride, padding=padding)
    v = jax.jit(conv.init)(jax.random.key(0), x)
    want = nn.Conv(5, (3, 3), strides=stride, padding=padding).apply(v, qx)
    np.testing.assert_allclose(np.asarray(jax.jit(conv.apply)(v, x)), np.asarray(want), rtol=1e-5, atol=1e-5)


def test_lhs_blocks_that_do_not_divide_the_input_features_end_in_a_partial_block():
  """Blocks of 2 over 3 input features: per pixel, features (0, 1) share a scale and feature 2 has its own (a
  grayscale or RGB first layer under an MX rule quantizes as it always did)."""
  x = data((2, 6, 6, 3), 45)
  pixels = x.reshape(-1, 3)
  qx = np.concatenate([ref_int(pixels[:, :2], 8, (1, 2))[0], ref_int(pixels[:, 2:], 8, (1, 1))[0]], axis=1)
  cfg = lpnum.DotConfig(lhs=lpnum.OperandQuant("int8", lpnum.per_block(2)))
  conv = _quant_conv(4, (3, 3), cfg)
  v = jax.jit(conv.init)(jax.random.key(0), x)
  want = nn.Conv(4, (3, 3)).apply(v, qx.reshape(x.shape))
  np.testing.assert_allclose(np.asarray(jax.jit(conv.apply)(v, x)), np.asarray(want), rtol=1e-5, atol=1e-5)


def test_rhs_per_channel_is_per_output_feature_in_fake_mode():
  x = data((2, 7, 7, 3), 44)
  cfg = lpnum.DotConfig(rhs=lpnum.OperandQuant("int4", lpnum.per_channel()))
  conv = _quant_conv(4, (3, 3), cfg, strides=2, padding="VALID")
  v = jax.jit(conv.init)(jax.random.key(0), x)
  w = np.asarray(v["params"]["kernel"])
  qw = ref_int(w.reshape(-1, 4), 4, (27, 1))[0].reshape(w.shape)
  want = nn.Conv(4, (3, 3), strides=2, padding="VALID").apply({"params": {**v["params"], "kernel": qw}}, x)
  np.testing.assert_allclose(np.asarray(conv.apply(v, x)), np.asarray(want), rtol=1e-5, atol=1e-5)


# ---- bad configs ---------------------------------------------------------------------------------------------------
def test_bad_conv_configs_raise_clear_errors():
  x = data((2, 6, 6, 3), 45)
  with pytest.raises(ValueError, match="engine='kernel'"):
    _quant_conv(4, (3, 3), lpnum.DotConfig(rhs="int8", engine="kernel")).init(jax.random.key(0), x)
  hook = lnn.make_conv_general_dilated(W8A8)
  w = jnp.ones((3, 3, 2, 4))
  with pytest.raises(ValueError, match="batch_group_count=2"):
    hook(jnp.ones((2, 6, 6, 2)), w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"), batch_group_count=2)
