"""Integer-only inference (lpnum.nn.integer_only): batch-norm folding against flax's unfolded layers, the integer
MLP and CNN programs bit for bit against an independent NumPy int64 re-implementation
(tests/support/integer_only_reference.py), the lowered programs integer-only, and accuracy against fake-quantized
inference of the same quantized model."""

from __future__ import annotations

import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import integer_only_reference as iref
from lpnum.nn import integer_only as io
from lpnum.zoo import data, train
from lpnum.zoo.models import CNN, MLP

def _init(model, x, **kwargs):
  """``model.init`` compiled once (eager flax init compiles every op of the model separately)."""
  return jax.jit(lambda key, v: model.init(key, v, **kwargs))(jax.random.key(1), x)


FLOAT_TYPES = re.compile(r"\b(f16|bf16|f32|f64|f8E\w+)\b|tensor<[^>]*x?f(16|32|64)>")


def _random_stats(variables, seed):
  """batch_stats with random means and variances, and random BN scales and offsets (so folding matters)."""
  rng = np.random.default_rng(seed)
  randomize = lambda path, a: jnp.asarray(  # noqa: E731
      rng.uniform(0.5, 2.0, a.shape) if path[-1].key in ("var", "scale") else rng.normal(0, 0.3, a.shape),
      jnp.float32)
  return {"params": jax.tree_util.tree_map_with_path(
              lambda p, a: randomize(p, a) if "BatchNorm" in jax.tree_util.keystr(p) else a, variables["params"]),
          "batch_stats": jax.tree_util.tree_map_with_path(randomize, variables["batch_stats"])}


# ---- batch-norm folding ---------------------------------------------------------------------------------------
class _ConvBN(nn.Module):
  features: int
  strides: int
  use_bias: bool

  @nn.compact
  def __call__(self, x):
    y = nn.Conv(self.features, (3, 3), strides=self.strides, use_bias=self.use_bias)(x)
    return nn.BatchNorm(use_running_average=True, epsilon=1e-3)(y)


@pytest.mark.parametrize("use_bias, strides", [(False, 1), (True, 2)])
def test_fold_batch_norm_matches_the_unfolded_conv_and_bn(use_bias, strides):
  x = jax.random.normal(jax.random.key(0), (4, 9, 9, 3))
  module = _ConvBN(6, strides, use_bias)
  variables = _random_stats(_init(module, x), seed=2)
  p, s = variables["params"], variables["batch_stats"]["BatchNorm_0"]
  kernel, bias = io.fold_batch_norm(p["Conv_0"]["kernel"], p["Conv_0"].get("bias"), p["BatchNorm_0"]["scale"],
                                    p["BatchNorm_0"]["bias"], s["mean"], s["var"], epsilon=1e-3)
  folded = jax.lax.conv_general_dilated(x, kernel, (strides, strides), "SAME",
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                        precision=jax.lax.Precision.HIGHEST) + bias
  np.testing.assert_allclose(folded, module.apply(variables, x), rtol=1e-5, atol=1e-5)


def test_fold_batch_norm_dense_and_bad_inputs():
  dense = nn.Sequential([nn.Dense(5), nn.BatchNorm(use_running_average=True)])
  x = jax.random.normal(jax.random.key(3), (7, 4))
  variables = _random_stats(_init(dense, x), seed=5)
  p, s = variables["params"], variables["batch_stats"]["layers_1"]
  kernel, bias = io.fold_batch_norm(p["layers_0"]["kernel"], p["layers_0"]["bias"], p["layers_1"]["scale"],
                                    p["layers_1"]["bias"], s["mean"], s["var"])
  np.testing.assert_allclose(jnp.dot(x, kernel, precision="highest") + bias, dense.apply(variables, x), rtol=1e-5,
                             atol=1e-5)
  with pytest.raises(ValueError, match=r"mean has shape \(4,\); expected \(5,\)"):
    io.fold_batch_norm(kernel, bias, jnp.ones(5), jnp.zeros(5), jnp.zeros(4), jnp.ones(5))
  with pytest.raises(ValueError, match="epsilon=-1.0 must be at least 0.0"):
    io.fold_batch_norm(kernel, bias, jnp.ones(5), jnp.zeros(5), jnp.zeros(5), jnp.ones(5), epsilon=-1.0)
  with pytest.raises(TypeError, match="kernel must be a float array"):
    io.fold_batch_norm(jnp.ones((4, 5), jnp.int32), None, jnp.ones(5), jnp.zeros(5), jnp.zeros(5), jnp.ones(5))


# ---- the integer programs against the NumPy re-implementation ---------------------------------------------------
@pytest.fixture(scope="module")
def mlp_program():
  x = jax.random.uniform(jax.random.key(6), (64, 8, 8, 1))
  variables = _init(MLP(features=(48, 24)), x)
  return io.integer_mlp(variables, x), x


@pytest.fixture(scope="module")
def cnn_program():
  x = jax.random.uniform(jax.random.key(8), (16, 8, 8, 1))
  model = CNN(channels=(4, 8))
  variables = _random_stats(_init(model, x, train=False), seed=10)
  return io.integer_cnn(variables, x), x, model, variables


def _run(program, codes):
  return jax.jit(lambda p, q: p(q))(program, codes)


def test_integer_mlp_equals_numpy_reference_bit_for_bit(mlp_program):
  program, x = mlp_program
  codes = program.quantize_input(jax.random.uniform(jax.random.key(11), (40, 8, 8, 1), maxval=1.3))  # saturates
  logits = _run(program, codes)
  assert codes.dtype == jnp.int8 and logits.dtype == jnp.int32
  np.testing.assert_array_equal(np.asarray(logits), iref.mlp(program, np.asarray(codes)))
  per_example = jax.jit(jax.vmap(lambda q: program(q[None])[0]))(codes)  # vmap over examples
  np.testing.assert_array_equal(np.asarray(per_example), np.asarray(logits))


def test_integer_cnn_equals_numpy_reference_bit_for_bit(cnn_program):
  program, x, _, _ = cnn_program
  assert [b.shortcut is None for b in program.blocks] == [True, False]  # identity, then a strided projection
  codes = program.quantize_input(x)
  np.testing.assert_array_equal(np.asarray(_run(program, codes)), iref.cnn(program, np.asarray(codes)))


@pytest.mark.parametrize("which", ["mlp", "cnn"])
def test_lowered_program_holds_only_integer_arithmetic(which, mlp_program, cnn_program):
  program, x = (mlp_program if which == "mlp" else cnn_program)[:2]
  text = jax.jit(lambda p, q: p(q)).lower(program, program.quantize_input(x[:4])).as_text()
  assert not FLOAT_TYPES.search(text), FLOAT_TYPES.search(text)
  ops = set(re.findall(r"stablehlo\.(\w+)", text))
  assert ("convolution" in ops) == (which == "cnn") and "dot_general" in ops
  assert not ops & {"exponential", "log", "sqrt", "rsqrt", "tanh", "logistic", "round_nearest_even", "floor"}
  for product in re.findall(r"stablehlo\.(?:dot_general|convolution).*", text):
    assert re.search(r"\(tensor<[^>]*xi8>, tensor<[^>]*xi8>\) -> tensor<[^>]*xi32>", product), product


@pytest.mark.slow
def test_cnn_dequantized_logits_track_the_float_model(cnn_program):
  """Folding plus int8 quantization keeps the logits near the unfolded float32 model's."""
  program, x, model, variables = cnn_program
  reference = jax.jit(lambda v, x: model.apply(v, x, train=False))(variables, x)
  got = jax.jit(lambda p, x: p.logits(x))(program, x)
  assert float(jnp.max(jnp.abs(got - reference))) < 0.1 * float(jnp.max(jnp.abs(reference)))


@pytest.mark.slow
def test_integer_only_accuracy_close_to_fake_quant_on_digits():
  (x, y), (xt, yt) = data.digits("train", seed=0), data.digits("test", seed=0)
  model = MLP(features=(64,))
  variables, _ = train.fit(model, (x, y), steps=300, batch_size=64, optimizer=optax.adam(3e-3), seed=0)
  program = io.integer_mlp(variables, x[:512])
  integer = np.argmax(program.logits(xt), -1)
  fake = np.argmax(jax.jit(lambda p, v: p.fake_quant_logits(v))(program, xt), -1)
  float_acc = train.accuracy(model, variables, xt, yt)
  assert np.mean(integer == fake) >= 0.98
  assert abs(np.mean(integer == yt) - np.mean(fake == yt)) <= 0.01
  assert np.mean(integer == yt) >= float_acc - 0.02


def test_converters_name_bad_inputs(mlp_program):
  x = jnp.zeros((2, 8, 8, 1))
  with pytest.raises(TypeError, match="variables=.* must be a linen variables dict"):
    io.integer_mlp([1, 2], x)
  with pytest.raises(ValueError, match=r"has no Dense_0, Dense_1\.\.\. entries"):
    io.integer_mlp({"params": {"Conv_0": {}}}, x)
  with pytest.raises(TypeError, match="calibration_x must be a float array"):
    io.integer_mlp({"params": {"Dense_0": {"kernel": jnp.ones((64, 3)), "bias": jnp.zeros(3)}}},
                   jnp.zeros((2, 64), jnp.int32))
  with pytest.raises(ValueError, match="must be a lpnum.zoo.models.CNN's"):
    io.integer_cnn({"params": {"Dense_0": {}}}, x)
  with pytest.raises(TypeError, match="x must be a float array"):
    mlp_program[0].quantize_input(jnp.zeros((2, 64), jnp.int8))
