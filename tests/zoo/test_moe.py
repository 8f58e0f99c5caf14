"""The mixture-of-experts layer (linen and nnx), float, under rules (fake quantization) and after PTQ (packed
experts), against a dense per-expert NumPy computation: each token through its top-k experts one by one, in float64,
with each expert's weights quantized on their own by ``lpnum.quantize_scaled``.

By default one format (int4 per channel) and each path once; the other format and layout run with -m slow."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import lpnum
from lpnum import nn as lnn
from lpnum.nn.ptq import weight_format
from lpnum.zoo.moe import MoE, NnxMoE

MOE = MoE(num_experts=4, top_k=2, hidden=32)
X = jax.random.normal(jax.random.key(1), (2, 5, 32))
VARIABLES = MOE.init(jax.random.key(0), X)
EXPERT_RULES = {
    "int4": lnn.Rule("up|down", lpnum.DotConfig.weight_only("int4")),
    "mxfp4": lnn.Rule("up|down", lpnum.DotConfig.weight_only("mxfp4_e2m1")),
}
RULE_PARAMS = [pytest.param("int4"), pytest.param("mxfp4", marks=pytest.mark.slow)]


def _gelu(v):
  return 0.5 * v * (1 + np.tanh(np.sqrt(2 / np.pi) * (v + 0.044715 * v ** 3)))


@functools.lru_cache(maxsize=None)
def _per_expert(layer, fmt):
  """Layer ``layer``'s experts quantized and dequantized each on its own (or float if fmt is None), as float64."""
  kernel = VARIABLES["params"][layer]["kernel"]
  if fmt is None:
    return np.asarray(kernel, np.float64)
  return np.stack([np.asarray(_quantize_dequantize(k, fmt), np.float64) for k in kernel])


@functools.partial(jax.jit, static_argnums=1)
def _quantize_dequantize(k, fmt):
  return lpnum.dequantize(lpnum.quantize_scaled(k, fmt, pad=True))


@functools.lru_cache(maxsize=None)
def _dense_moe(fmt=None):
  """Token by token through the MoE with VARIABLES on X: router, softmax over its top-2 logits, each chosen
  expert's MLP, gated sum (float64)."""
  p = jax.tree.map(lambda a: np.asarray(a, np.float64), VARIABLES["params"])
  up, down = _per_expert("up", fmt), _per_expert("down", fmt)
  tokens = np.asarray(X, np.float64).reshape(-1, X.shape[-1])
  out = np.zeros_like(tokens)
  for t, v in enumerate(tokens):
    logits = v @ p["router"]["kernel"] + p["router"]["bias"]
    top = np.argsort(-logits, kind="stable")[:2]
    gates = np.exp(logits[top] - logits[top].max())
    gates /= gates.sum()
    for e, g in zip(top, gates):
      out[t] += g * (_gelu(v @ up[e]) @ down[e])
  return out.reshape(X.shape)


def _fmt(rule):
  return weight_format(rule.config)


def test_float_moe_matches_the_dense_per_expert_computation():
  y = jax.jit(MOE.apply)(VARIABLES, X)
  np.testing.assert_allclose(np.asarray(y), _dense_moe(), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name", RULE_PARAMS)
def test_rules_fake_quantize_each_expert(name):
  rule = EXPERT_RULES[name]
  y = jax.jit(lnn.quantize_model(MOE, [rule]).apply)(VARIABLES, X)
  np.testing.assert_allclose(np.asarray(y), _dense_moe(_fmt(rule)), rtol=1e-4, atol=1e-4)
  assert lnn.kernel_views(MOE, X) == {"router": 1, "up": "experts", "down": "experts"}


@pytest.mark.parametrize("layout", ["kernel", pytest.param("auto", marks=pytest.mark.slow)])
@pytest.mark.parametrize("name", RULE_PARAMS)
def test_ptq_packs_each_expert(name, layout):
  rule = EXPERT_RULES[name]
  qparams = lnn.ptq(VARIABLES["params"], [rule], views=lnn.kernel_views(MOE, X), layout=layout)
  # "auto" keeps these small experts as stacked QArrays: the kernel layout's padding would cost more than 1%.
  assert type(qparams["up"]["kernel"].value).__name__ == ("GroupedWeights" if layout == "kernel" else "QArray")
  np.testing.assert_array_equal(np.asarray(lnn.dequantize_kernel(qparams["down"]["kernel"].unbox())),
                                _per_expert("down", _fmt(rule)).astype(np.float32))
  yp = jax.jit(lnn.quantize_model(MOE, [rule]).apply)({"params": qparams}, X)
  np.testing.assert_allclose(np.asarray(yp), _dense_moe(_fmt(rule)), rtol=1e-4, atol=1e-4)


def _nnx_moe():
  """An NnxMoE holding the linen MoE's parameters."""
  model = NnxMoE(32, num_experts=4, top_k=2, hidden=32, rngs=nnx.Rngs(0))
  p = VARIABLES["params"]
  model.router.kernel[...], model.router.bias[...] = p["router"]["kernel"], p["router"]["bias"]
  model.up.kernel[...], model.down.kernel[...] = p["up"]["kernel"], p["down"]["kernel"]
  return model


def test_nnx_moe_float_and_ptq_match_the_dense_per_expert_computation():
  call = nnx.jit(lambda m, x: m(x))
  model = _nnx_moe()
  np.testing.assert_allclose(np.asarray(call(model, X)), _dense_moe(), rtol=1e-4, atol=1e-4)
  assert lnn.kernel_views(model) == {"router": 1, "up": "experts", "down": "experts"}
  rule = EXPERT_RULES["int4"]
  lnn.ptq_nnx(model, [rule], layout="kernel")
  assert type(model.up.kernel[...].value).__name__ == "GroupedWeights" and model.up.config == rule.config
  want = _dense_moe(_fmt(rule))
  np.testing.assert_allclose(np.asarray(call(model, X)), want, rtol=1e-4, atol=1e-4)
  with pytest.raises(ValueError, match="params at (up|down)/kernel were packed"):
    lnn.quantize_model(model, [EXPERT_RULES["mxfp4"]])


@pytest.mark.slow
def test_nnx_rules_fake_quantize_each_expert():
  rule = EXPERT_RULES["mxfp4"]
  model = lnn.quantize_model(_nnx_moe(), [rule])
  assert model.down.config == rule.config and model.router.kernel[...].dtype == jnp.float32
  np.testing.assert_allclose(np.asarray(nnx.jit(lambda m, x: m(x))(model, X)),
                             _dense_moe(_fmt(rule)), rtol=1e-4, atol=1e-4)
  with pytest.raises(NotImplementedError, match="backward=False"):
    lnn.quantize_model(_nnx_moe(), [lnn.Rule("up|down", lpnum.DotConfig.w8a8())])


def test_training_under_a_rule_updates_the_float_experts_straight_through():
  rule = EXPERT_RULES["int4"]
  qmodel = lnn.quantize_model(MOE, [rule])
  loss = lambda params, m: jnp.sum(m.apply({"params": params}, X) ** 2)
  grads = jax.jit(jax.grad(lambda p: loss(p, qmodel)))(VARIABLES["params"])
  fmt = _fmt(rule)
  fake = jax.tree.map(lambda a: a, VARIABLES["params"])
  for name in ("up", "down"):
    fake[name] = {"kernel": jnp.asarray(_per_expert(name, fmt), jnp.float32)}
  want = jax.jit(jax.grad(lambda p: loss(p, MOE)))(fake)
  for name in ("up", "down"):
    assert np.abs(np.asarray(grads[name]["kernel"])).max() > 0
    np.testing.assert_allclose(np.asarray(grads[name]["kernel"]), np.asarray(want[name]["kernel"]), rtol=1e-4,
                               atol=1e-5)


def test_unsupported_rules_and_mismatched_packed_params_raise():
  with pytest.raises(NotImplementedError, match="backward=False"):
    lnn.quantize_model(MOE, [lnn.Rule("up|down", lpnum.DotConfig.w8a8())]).apply(VARIABLES, X)
  qparams = lnn.ptq(VARIABLES["params"], [EXPERT_RULES["int4"]], views=lnn.kernel_views(MOE, X))
  with pytest.raises(ValueError, match="params at up/kernel were packed"):
    lnn.quantize_model(MOE, [EXPERT_RULES["mxfp4"]]).apply({"params": qparams}, X)
  with pytest.raises(ValueError, match="must be \\(E, K, N\\)"):
    lnn.ptq({"up": {"kernel": jnp.ones((4, 8))}}, [EXPERT_RULES["int4"]], views={"up": "experts"})


@pytest.mark.slow
def test_w8a8_without_quantized_backward_runs():
  w8a8 = lnn.quantize_model(MOE, [lnn.Rule("up|down", lpnum.DotConfig.w8a8(backward=False))])
  assert np.isfinite(np.asarray(jax.jit(w8a8.apply)(VARIABLES, X))).all()
