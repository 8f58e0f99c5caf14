"""The mixture-of-experts layer, float, under rules (fake quantization) and after PTQ (packed experts), against a
dense per-expert NumPy computation: each token through its top-k experts one by one, in float64, with each expert's
weights quantized on their own by ``lpnum.quantize_scaled``."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import lpnum
from lpnum import nn as lnn
from lpnum.zoo.moe import MoE

MOE = MoE(num_experts=4, top_k=2, hidden=64)
X = jax.random.normal(jax.random.key(1), (2, 5, 32))
VARIABLES = MOE.init(jax.random.key(0), X)
EXPERT_RULES = {
    "int4": lnn.Rule("up|down", lpnum.DotConfig.weight_only("int4")),
    "mxfp4": lnn.Rule("up|down", lpnum.DotConfig.weight_only("mxfp4_e2m1")),
}


def _gelu(v):
  return 0.5 * v * (1 + np.tanh(np.sqrt(2 / np.pi) * (v + 0.044715 * v ** 3)))


def _per_expert(kernel, fmt):
  """Each expert's kernel quantized and dequantized on its own (or float if fmt is None), as float64."""
  if fmt is None:
    return np.asarray(kernel, np.float64)
  return np.stack([np.asarray(lpnum.dequantize(lpnum.quantize_scaled(k, fmt, pad=True)), np.float64)
                   for k in kernel])


def _dense_moe(params, x, fmt=None):
  """Token by token: router, softmax over its top-2 logits, each chosen expert's MLP, gated sum (float64)."""
  p = jax.tree.map(lambda a: np.asarray(a, np.float64), params)
  up, down = _per_expert(params["up"]["kernel"], fmt), _per_expert(params["down"]["kernel"], fmt)
  tokens = np.asarray(x, np.float64).reshape(-1, x.shape[-1])
  out = np.zeros_like(tokens)
  for t, v in enumerate(tokens):
    logits = v @ p["router"]["kernel"] + p["router"]["bias"]
    top = np.argsort(-logits, kind="stable")[:2]
    gates = np.exp(logits[top] - logits[top].max())
    gates /= gates.sum()
    for e, g in zip(top, gates):
      out[t] += g * (_gelu(v @ up[e]) @ down[e])
  return out.reshape(x.shape)


def _fmt(rule):
  return lnn.ptq.__globals__["weight_format"](rule.config)


def test_float_moe_matches_the_dense_per_expert_computation():
  y = jax.jit(MOE.apply)(VARIABLES, X)
  np.testing.assert_allclose(np.asarray(y), _dense_moe(VARIABLES["params"], X), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name", EXPERT_RULES)
def test_rules_fake_quantize_each_expert_and_ptq_packs_them(name):
  rule = EXPERT_RULES[name]
  qmodel = lnn.quantize_model(MOE, [rule])
  want = _dense_moe(VARIABLES["params"], X, _fmt(rule))
  y = jax.jit(qmodel.apply)(VARIABLES, X)
  np.testing.assert_allclose(np.asarray(y), want, rtol=1e-4, atol=1e-4)
  views = lnn.kernel_views(MOE, X)
  assert views == {"router": 1, "up": "experts", "down": "experts"}
  auto = lnn.ptq(VARIABLES["params"], [rule], views=views)  # small experts: the layout's padding costs > 1%
  assert lpnum.QArray is type(auto["up"]["kernel"].value)
  np.testing.assert_allclose(np.asarray(jax.jit(qmodel.apply)({"params": auto}, X)), want, rtol=1e-4, atol=1e-4)
  qparams = lnn.ptq(VARIABLES["params"], [rule], views=views, layout="kernel")
  assert type(qparams["up"]["kernel"].value).__name__ == "GroupedWeights"
  np.testing.assert_array_equal(np.asarray(lnn.dequantize_kernel(qparams["down"]["kernel"].unbox())),
                                _per_expert(VARIABLES["params"]["down"]["kernel"], _fmt(rule)).astype(np.float32))
  yp = jax.jit(qmodel.apply)({"params": qparams}, X)
  np.testing.assert_allclose(np.asarray(yp), want, rtol=1e-4, atol=1e-4)


def test_training_under_a_rule_updates_the_float_experts_straight_through():
  rule = EXPERT_RULES["int4"]
  qmodel = lnn.quantize_model(MOE, [rule])
  loss = lambda params, m: jnp.sum(m.apply({"params": params}, X) ** 2)
  grads = jax.jit(jax.grad(lambda p: loss(p, qmodel)))(VARIABLES["params"])
  fmt = _fmt(rule)
  fake = jax.tree.map(lambda a: a, VARIABLES["params"])
  for name in ("up", "down"):
    fake[name] = {"kernel": jnp.asarray(_per_expert(VARIABLES["params"][name]["kernel"], fmt), jnp.float32)}
  want = jax.grad(lambda p: loss(p, MOE))(fake)
  for name in ("up", "down"):
    assert np.abs(np.asarray(grads[name]["kernel"])).max() > 0
    np.testing.assert_allclose(np.asarray(grads[name]["kernel"]), np.asarray(want[name]["kernel"]), rtol=1e-4,
                               atol=1e-5)


def test_unsupported_rules_and_mismatched_packed_params_raise():
  with pytest.raises(NotImplementedError, match="backward=False"):
    lnn.quantize_model(MOE, [lnn.Rule("up|down", lpnum.DotConfig.w8a8())]).apply(VARIABLES, X)
  y = lnn.quantize_model(MOE, [lnn.Rule("up|down", lpnum.DotConfig.w8a8(backward=False))]).apply(VARIABLES, X)
  assert np.isfinite(np.asarray(y)).all()
  qparams = lnn.ptq(VARIABLES["params"], [EXPERT_RULES["int4"]], views=lnn.kernel_views(MOE, X))
  with pytest.raises(ValueError, match="params at up/kernel were packed"):
    lnn.quantize_model(MOE, [EXPERT_RULES["mxfp4"]]).apply({"params": qparams}, X)
  with pytest.raises(ValueError, match="must be \\(E, K, N\\)"):
    lnn.ptq({"up": {"kernel": jnp.ones((4, 8))}}, [EXPERT_RULES["int4"]], views={"up": "experts"})
