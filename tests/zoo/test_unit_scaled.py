"""The zoo's unit-scaled Transformer: unit-variance activations and gradients of every op at initialization (and
the standard Transformer's gradients far from it), the twin's shapes, and its FP8 casts."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from lpnum import unit_scaling as us
from lpnum.nn import Rule, quantize_model
from lpnum.zoo import data
from lpnum.zoo.models import Transformer
from lpnum.zoo.unit_scaled import UnitTransformer

#: Random sequences of the task (16 tokens over 16 symbols) the statistics are taken over.
TOKENS, LABELS = (jnp.asarray(a) for a in data.sequence_task(256, seed=5))


def named(tree):
  return {jax.tree_util.keystr(p, simple=True, separator="/"): v for p, v in jax.tree_util.tree_leaves_with_path(tree)}


def unit_stats(layers):
  """Standard deviations of every tapped op's output (sow) and of the loss's gradient with respect to it
  (perturbations), at initialization, for the zoo-sized twin with ``layers`` blocks."""
  model = UnitTransformer(vocab=16, length=16, layers=layers, probe=True)
  variables = jax.jit(model.init)(jax.random.key(0), TOKENS)

  def loss(params, perturbations):
    logits, state = model.apply({"params": params, "perturbations": perturbations}, TOKENS,
                                mutable=["intermediates"])
    return us.cross_entropy(logits, LABELS), state["intermediates"]

  grads, acts = jax.jit(jax.grad(loss, argnums=1, has_aux=True))(variables["params"], variables["perturbations"])
  return ({k.removesuffix("/0"): float(jnp.std(v)) for k, v in named(acts).items()},
          {k: float(jnp.std(v)) for k, v in named(grads).items()})


@pytest.mark.parametrize("layers", [1, pytest.param(2, marks=pytest.mark.slow)])
def test_every_op_of_the_unit_scaled_transformer_is_unit_scaled_at_init(layers):
  acts, grads = unit_stats(layers)
  ops = {"embed", "final_norm", "pool", "logits"} | {
      f"UnitTransformerBlock_{i}/{op}" for i in range(layers)
      for op in ("attention_norm", "attention", "attention_residual", "mlp_norm", "mlp_in", "gelu", "mlp_out",
                 "mlp_residual")}
  assert set(acts) == set(grads) == ops
  outside = {f"{k} {kind}": v for kind, stats in (("output", acts), ("gradient", grads)) for k, v in stats.items()
             if not 0.5 <= v <= 2}
  assert not outside


def standard_gradient_stds():
  """A one-block standard Transformer's module outputs' gradients' standard deviations at initialization (through
  zero perturbations added to every module's output by an interceptor)."""
  model = Transformer(vocab=16, length=16, dim=32, heads=2, layers=1, mlp_dim=64)

  def tap(next_fun, args, kwargs, context):
    out = next_fun(*args, **kwargs)
    if context.method_name == "__call__" and jnp.issubdtype(out.dtype, jnp.floating):
      return context.module.perturb("output_probe", out)
    return out

  with nn.intercept_methods(tap):
    variables = jax.jit(model.init)(jax.random.key(0), TOKENS)

  def loss(params, perturbations):
    with nn.intercept_methods(tap):
      logits = model.apply({"params": params, "perturbations": perturbations}, TOKENS)
    return optax.softmax_cross_entropy_with_integer_labels(logits, LABELS).mean()

  grads = jax.jit(jax.grad(loss, argnums=1))(variables["params"], variables["perturbations"])
  return {k: float(jnp.std(v)) for k, v in named(grads).items()}


def test_the_standard_transformer_is_not_unit_scaled_its_gradients_reach_e5m2_subnormals():
  grads = standard_gradient_stds()
  assert len(grads) > 12                              # every Dense, DenseGeneral, LayerNorm, Embed, block, attention
  assert max(grads.values()) < 0.05                   # every op's gradient is far below unit scale
  assert min(grads.values()) < 2.0 ** -14             # and some are below E5M2's smallest normal number


def test_the_twin_has_the_standard_transformers_parameter_count_and_outputs():
  count = lambda v: sum(int(np.size(p)) for p in jax.tree.leaves(v["params"]))
  standard, unit = Transformer(vocab=16, length=16), UnitTransformer(vocab=16, length=16)
  v_std = jax.eval_shape(standard.init, jax.random.key(0), TOKENS)
  v_unit = jax.eval_shape(unit.init, jax.random.key(0), TOKENS)
  assert count(v_std) == count(v_unit)
  assert jax.eval_shape(unit.apply, v_unit, TOKENS).shape == (256, 16)


@pytest.mark.slow
def test_fp8_toggle_changes_both_models_forward_passes():
  """FP8_CAST through the unit model's config and through quantize_model on the standard one both change the
  forward pass (which layers are cast is tested in tests/nn/test_unit_layers.py)."""
  x = TOKENS[:4]
  unit = UnitTransformer(vocab=16, length=16, dim=16, heads=2, layers=1, mlp_dim=32)
  variables = jax.jit(unit.init)(jax.random.key(0), x)
  assert not np.allclose(jax.jit(unit.copy(config=us.FP8_CAST).apply)(variables, x), jax.jit(unit.apply)(variables, x))
  standard = Transformer(vocab=16, length=16, dim=16, heads=2, layers=1, mlp_dim=32)
  v_std = jax.jit(standard.init)(jax.random.key(0), x)
  q_apply = quantize_model(standard, [Rule(".*", us.FP8_CAST)]).apply
  assert not np.allclose(jax.jit(q_apply)(v_std, x), jax.jit(standard.apply)(v_std, x))


def test_unit_transformer_rejects_bad_configurations():
  with pytest.raises(ValueError, match="heads=3 must divide dim=64"):
    UnitTransformer(vocab=16, length=16, heads=3).init(jax.random.key(0), TOKENS[:2])
  with pytest.raises(ValueError, match="must be"):
    UnitTransformer(vocab=16, length=8).init(jax.random.key(0), TOKENS[:2])
  with pytest.raises(ValueError, match="tau=1.5"):
    UnitTransformer(vocab=16, length=16, tau=1.5).init(jax.random.key(0), TOKENS[:2])
