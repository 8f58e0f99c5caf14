"""lpnum.nn.pam: a Flax model's matmuls with PAM. Outputs against a NumPy forward pass of PAM products (the
exact-formula reference of tests/support/pam_reference.py); the lowered training step holds no float matmul."""

import collections
import re

import flax.linen as nn
import jax
import jax.extend
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import pam_reference as ref
from lpnum import pam
from lpnum.nn.pam import pam_attention_fn, pam_model
from lpnum.zoo.models import MLP, Transformer


def _mlp_reference(params, x):
  """Dense -> ReLU -> Dense with PAM matmuls (NumPy loop, float32 sums in order) and float32 bias adds."""
  h = ref.pam_matmul_np(x, np.asarray(params["Dense_0"]["kernel"])) + np.asarray(params["Dense_0"]["bias"])
  h = np.maximum(h, 0)
  return ref.pam_matmul_np(h, np.asarray(params["Dense_1"]["kernel"])) + np.asarray(params["Dense_1"]["bias"])


def test_linen_mlp_matches_a_numpy_pam_forward():
  model = MLP(features=(16,), num_classes=3)
  x = np.random.default_rng(0).standard_normal((5, 12)).astype(np.float32)
  pmodel = pam_model(model)
  variables = pmodel.init(jax.random.key(0), x)
  assert jax.tree.structure(variables) == jax.tree.structure(model.init(jax.random.key(0), x))
  got = jax.jit(pmodel.apply)(variables, x)
  np.testing.assert_array_equal(got, _mlp_reference(variables["params"], x))
  head_only = pam_model(model, "Dense_1").apply(variables, x)
  assert not np.array_equal(head_only, got) and not np.array_equal(head_only, model.apply(variables, x))


def _primitives(jaxpr, counts):
  for eqn in jaxpr.eqns:
    counts[eqn.primitive.name] += 1
    for value in eqn.params.values():
      for sub in value if isinstance(value, tuple | list) else (value,):
        if isinstance(sub, jax.extend.core.ClosedJaxpr):
          _primitives(sub.jaxpr, counts)
        elif isinstance(sub, jax.extend.core.Jaxpr):
          _primitives(sub, counts)
  return counts


def test_transformer_training_step_has_no_float_matmul():
  """Every Dense/DenseGeneral and both attention products, forward and backward: 8 matmuls per block and the head,
  each a PAM scan, three per matmul in a training step; no dot_general primitive is left."""
  model = Transformer(vocab=8, length=6, dim=8, heads=2, layers=1, mlp_dim=16)
  tokens = jnp.zeros((2, 6), jnp.int32)
  pmodel = pam_model(model)
  variables = jax.eval_shape(pmodel.init, jax.random.key(0), tokens)
  loss = lambda p: pmodel.apply({"params": p}, tokens).sum()
  counts = _primitives(jax.make_jaxpr(jax.grad(loss))(variables["params"]).jaxpr, collections.Counter())
  assert counts["dot_general"] == 0
  assert counts["scan"] == 3 * (8 + 1)


def test_attention_products_are_pam():
  layer = nn.MultiHeadDotProductAttention(num_heads=1, qkv_features=4, attention_fn=pam_attention_fn())
  x = np.random.default_rng(1).standard_normal((1, 3, 4)).astype(np.float32)
  variables = layer.init(jax.random.key(0), x)
  plain = nn.MultiHeadDotProductAttention(num_heads=1, qkv_features=4)
  _, state = plain.apply(variables, x, mutable=["intermediates"],
                         capture_intermediates=lambda m, _: isinstance(m, nn.DenseGeneral))
  q, k = (np.asarray(state["intermediates"][n]["__call__"][0])[0, :, 0] for n in ("query", "key"))
  weights = jax.nn.softmax(ref.pam_matmul_np(q / np.float32(2.0), k.T), axis=-1)  # 1/sqrt(4) as flax scales
  v = np.asarray(state["intermediates"]["value"]["__call__"][0])[0, :, 0]
  mixed = ref.pam_matmul_np(np.asarray(weights), v)
  out = layer.apply(variables, x)
  kernel, bias = (np.asarray(variables["params"]["out"][n]) for n in ("kernel", "bias"))
  np.testing.assert_allclose(out[0], mixed @ kernel[0] + bias, rtol=1e-6, atol=1e-6)
  assert pam_attention_fn(pam_attention_fn()) is not None


def test_nnx_linear_in_place():
  layer = nnx.Linear(6, 3, rngs=nnx.Rngs(0))
  x = np.random.default_rng(2).standard_normal((4, 6)).astype(np.float32)
  assert pam_model(layer) is layer and layer.dot_general is pam.dot_general
  np.testing.assert_array_equal(layer(x), ref.pam_matmul_np(x, np.asarray(layer.kernel[...])) + layer.bias[...])


def test_bad_arguments():
  with pytest.raises(ValueError, match="pattern='Conv_0' matches no Dense"):
    pam_model(MLP(features=(4,)), "Conv_0").init(jax.random.key(0), jnp.ones((1, 3)))
  with pytest.raises(ValueError, match=re.escape("pattern='(' is not a regular expression")):
    pam_model(MLP(), "(")
  with pytest.raises(TypeError, match="pattern=3 must be a str"):
    pam_model(MLP(), 3)
  with pytest.raises(TypeError, match="model must be a flax.linen or flax.nnx Module, got str"):
    pam_model("mlp")
  with pytest.raises(ValueError, match="matches no Linear"):
    pam_model(nnx.Linear(2, 2, rngs=nnx.Rngs(0)), "other")
  with pytest.raises(ValueError, match="has no einsum_dot_general parameter"):
    pam_attention_fn(lambda q, k, v: q)
  with pytest.raises(ValueError, match="has a dot_general_cls"):
    dense = nn.Dense(2, dot_general_cls=lambda: jax.lax.dot_general)
    pam_model(dense).init(jax.random.key(0), jnp.ones((1, 2)))
