"""Mixed-precision training (lpnum.nn.mixed_precision): master weights keep updates that float16 loses, loss
scaling keeps gradients that float16 flushes to zero, overflowing steps are skipped bit for bit, and a float16
MLP trains."""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from lpnum.nn import mixed_precision as mp

F16 = jnp.float16


def _bits_equal(a, b) -> bool:
  """Same tree, same dtypes, same bits."""
  la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
  if jax.tree.structure(a) != jax.tree.structure(b) or len(la) != len(lb):
    return False
  return all(np.asarray(x).dtype == np.asarray(y).dtype and np.asarray(x).shape == np.asarray(y).shape
             and np.asarray(x).tobytes() == np.asarray(y).tobytes() for x, y in zip(la, lb))


def test_master_weights_accumulate_updates_float16_loses():
  step16 = F16(1e-4)  # float16's 1e-4 is 1.00016594e-4, below half an ulp (2^-11) of 1.0
  direct = jax.lax.fori_loop(0, 1000, lambda i, w: w + step16, F16(1.0))
  assert direct.dtype == F16 and float(direct) == 1.0

  opt = mp.master_weights(optax.sgd(1.0), F16)
  master = {"w": jnp.float32(1.0)}
  params, state = mp.cast_floats(master, F16), opt.init(master)
  grads = {"w": -step16}

  def body(_, carry):
    params, state = carry
    updates, state = opt.update(grads, state, params)
    return optax.apply_updates(params, updates), state

  params, state = jax.jit(lambda c: jax.lax.fori_loop(0, 1000, body, c))((params, state))
  want = np.float32(1.0)
  for _ in range(1000):  # the same float32 additions, one rounding each
    want = np.float32(want + np.float32(step16))
  got = mp.master_params(state)["w"]
  assert got.dtype == jnp.float32 and np.float32(got) == want
  assert abs(float(got) - 1.1) < 1e-4
  assert params["w"].dtype == F16 and params["w"] == got.astype(F16)


def _linear_loss(p, b):
  return jnp.mean((b["x"] @ p["w"] + p["b"] - b["y"]) ** 2)


def _linear_setup(seed=0):
  rng = np.random.default_rng(seed)
  master = {"w": jnp.asarray(rng.standard_normal((4, 2)) * 0.3, jnp.float32), "b": jnp.zeros(2, jnp.float32)}
  batch = {"x": jnp.asarray(rng.standard_normal((16, 4)), F16), "y": jnp.asarray(rng.standard_normal((16, 2)), F16)}
  return master, batch


def test_overflowing_steps_are_skipped_bit_for_bit():
  master, batch = _linear_setup()
  opt = mp.master_weights(optax.adam(1e-2), F16)
  step = jax.jit(functools.partial(mp.mixed_precision_step, _linear_loss, opt))
  params, state, scale = mp.cast_floats(master, F16), opt.init(master), mp.LossScale.create(2.0**10)
  params, state, scale, _, skipped = step(params, state, scale, batch)  # a real step: Adam's moments are nonzero
  assert not skipped and scale.good_steps == 1
  huge = dict(batch, x=batch["x"] * F16(200))  # 2^10 x gradients of order 1e5 overflow float16
  bad_target = dict(batch, y=batch["y"].at[0, 0].set(jnp.inf))  # inf loss, NaN gradients
  for bad in (huge, bad_target):
    new_params, new_state, new_scale, loss, skipped = step(params, state, scale, bad)
    assert skipped
    assert _bits_equal(new_params, params) and _bits_equal(new_state, state)
    assert new_scale.scale == scale.scale / 2 and new_scale.good_steps == 0
  params2, _, scale2, _, skipped = step(params, state, scale, batch)
  assert not skipped and not _bits_equal(params2, params) and scale2.scale == scale.scale


def test_apply_if_finite_skips_with_master_weights():
  master, _ = _linear_setup()
  grads = {"w": jnp.full((4, 2), 0.5, F16), "b": jnp.ones(2, F16)}
  bad = dict(grads, b=jnp.array([1.0, jnp.nan], F16))
  opt = mp.master_weights(optax.apply_if_finite(optax.adam(1e-2), max_consecutive_errors=2), F16)
  params, state = mp.cast_floats(master, F16), opt.init(master)
  update = jax.jit(opt.update)
  updates, state = update(grads, state, params)
  params = optax.apply_updates(params, updates)
  for i in range(2):  # two skipped steps: params, master and Adam's state unchanged; the skips are counted
    updates, new_state = update(bad, state, params)
    assert _bits_equal(optax.apply_updates(params, updates), params)
    assert _bits_equal(new_state.master, state.master)
    assert _bits_equal(new_state.inner_state.inner_state, state.inner_state.inner_state)
    assert int(new_state.inner_state.notfinite_count) == i + 1
    state = new_state
  updates, state = update(grads, state, params)
  new = optax.apply_updates(params, updates)
  assert not _bits_equal(new, params) and int(state.inner_state.notfinite_count) == 0
  assert _bits_equal(new, mp.cast_floats(mp.master_params(state), F16))


def test_scale_doubles_after_period_and_halves_on_overflow():
  s = mp.LossScale.create(4.0, period=3, max_scale=16.0)
  update = jax.jit(mp.update_loss_scale)
  seen = []
  for finite in [True] * 9 + [False, False, True]:
    s = update(s, finite)
    seen.append((float(s.scale), int(s.good_steps)))
  assert seen == [(4, 1), (4, 2), (8, 0), (8, 1), (8, 2), (16, 0), (16, 1), (16, 2), (16, 0),
                  (8, 0), (4, 0), (4, 1)]
  one = mp.LossScale.create(1.0)
  assert float(mp.update_loss_scale(one, False).scale) == 1.0  # not below 1
  # Through the training step, with a small period.
  master, batch = _linear_setup()
  opt = mp.master_weights(optax.sgd(1e-2), F16)
  step = jax.jit(functools.partial(mp.mixed_precision_step, _linear_loss, opt))
  params, state, scale = mp.cast_floats(master, F16), opt.init(master), mp.LossScale.create(2.0**8, period=4)
  for i in range(8):
    params, state, scale, _, skipped = step(params, state, scale, batch)
    assert not skipped
    assert float(scale.scale) == 2.0 ** (8 + (i + 1) // 4)


def test_loss_scaling_keeps_gradients_that_underflow_in_float16():
  x = jnp.full(3, 1e-4, F16)

  def loss_fn(p, x):
    return 1e-4 * jnp.sum(p["w"] * x)  # float16 throughout; d/dw = 1e-8, below float16's 2^-25

  params = {"w": jnp.zeros(3, F16)}
  grads = jax.grad(loss_fn)(params, x)["w"]
  assert grads.dtype == F16 and (grads == 0).all()
  scale = mp.LossScale.create()
  scaled = mp.unscale(jax.grad(lambda p: mp.scale_loss(loss_fn(p, x), scale))(params), scale)["w"]
  assert scaled.dtype == jnp.float32
  np.testing.assert_allclose(scaled, 1e-8, rtol=2e-3)

  opt = mp.master_weights(optax.sgd(1.0), F16)
  step = jax.jit(functools.partial(mp.mixed_precision_step, loss_fn, opt))
  masters = []
  for s in (mp.LossScale.create(1.0), scale):
    state = opt.init({"w": jnp.zeros(3)})
    _, state, _, _, skipped = step(params, state, s, x)
    assert not skipped
    masters.append(mp.master_params(state)["w"])
  assert (masters[0] == 0).all()
  np.testing.assert_allclose(masters[1], -1e-8, rtol=2e-3)


class _MLP(nn.Module):

  @nn.compact
  def __call__(self, x):
    x = nn.relu(nn.Dense(32, dtype=F16, param_dtype=jnp.float32)(x))
    return nn.Dense(1, dtype=F16, param_dtype=jnp.float32)(x)[:, 0]


def test_float16_mlp_trains_with_float32_master_weights():
  rng = np.random.default_rng(0)
  x = rng.standard_normal((128, 4)).astype(np.float32)
  y = np.sin(x @ np.array([1.0, -0.5, 0.25, 0.8])) + 0.1 * x[:, 0] ** 2
  batch = (jnp.asarray(x, F16), jnp.asarray(y, F16))
  model = _MLP()
  master = jax.jit(model.init)(jax.random.key(0), batch[0][:1])

  def loss_fn(p, b):
    assert all(leaf.dtype == F16 for leaf in jax.tree.leaves(p))
    pred = model.apply(p, b[0])
    assert pred.dtype == F16
    return jnp.mean((pred - b[1]) ** 2)

  opt = mp.master_weights(optax.adam(1e-2), F16)
  params, state, scale = mp.cast_floats(master, F16), opt.init(master), mp.LossScale.create()
  # The forward runs in float16: every matmul takes and gives float16.
  jaxpr = jax.make_jaxpr(loss_fn)(params, batch)
  dots = [e for e in jaxpr.eqns if e.primitive.name == "dot_general"]
  assert len(dots) == 2
  assert all(v.aval.dtype == F16 for e in dots for v in (*e.invars, *e.outvars))

  @jax.jit
  def train(params, state, scale):
    def body(carry, _):
      out = mp.mixed_precision_step(loss_fn, opt, *carry, batch)
      return (out.params, out.opt_state, out.loss_scale), (out.loss, out.skipped)
    return jax.lax.scan(body, (params, state, scale), length=200)

  (params, state, scale), (losses, skipped) = train(params, state, scale)
  losses = np.asarray(losses)
  assert np.isfinite(losses).all()
  assert losses[-10:].mean() < losses[0] / 20  # measured: 0.77 -> 0.008
  assert int(skipped.sum()) < 10
  assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(mp.master_params(state)))
  assert _bits_equal(params, mp.cast_floats(mp.master_params(state), F16))


def test_bfloat16_step_under_jit():
  """bfloat16 compute; the loss scale's period and cap are static pytree fields, its scale and counter traced."""
  master, batch = _linear_setup(1)
  opt = mp.master_weights(optax.sgd(0.1, momentum=0.9), jnp.bfloat16)
  batch = mp.cast_floats(batch, jnp.bfloat16)
  step = jax.jit(functools.partial(mp.mixed_precision_step, _linear_loss, opt))
  for scale in (mp.LossScale.create(), mp.LossScale.create(2.0, period=1, max_scale=4.0)):
    params, state = mp.cast_floats(master, jnp.bfloat16), opt.init(master)
    for _ in range(3):
      params, state, scale, loss, skipped = step(params, state, scale, batch)
      assert not skipped and loss.dtype == jnp.float32
    assert params["w"].dtype == jnp.bfloat16 and mp.master_params(state)["w"].dtype == jnp.float32
    assert _bits_equal(params, mp.cast_floats(mp.master_params(state), jnp.bfloat16))
  assert float(scale.scale) == 4.0 and scale.period == 1


@pytest.mark.parametrize("dtype", [jnp.int32, "int8", "foo", None, True])
def test_compute_dtype_must_be_a_float_dtype(dtype):
  with pytest.raises(TypeError, match="compute_dtype="):
    mp.master_weights(optax.sgd(1.0), dtype)


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(period=0), ValueError, "period=0"),
    (dict(period=-5), ValueError, "period=-5"),
    (dict(period=2.5), ValueError, "period=2.5"),
    (dict(initial_scale=0.0), ValueError, "initial_scale=0.0"),
    (dict(initial_scale=-8.0), ValueError, "initial_scale=-8.0"),
    (dict(initial_scale=float("inf")), ValueError, "initial_scale=inf"),
    (dict(initial_scale=2.0**30), ValueError, "initial_scale="),
    (dict(initial_scale="big"), TypeError, "initial_scale='big'"),
    (dict(max_scale=0.5), ValueError, "max_scale=0.5"),
])
def test_bad_loss_scale_arguments_are_named(kwargs, error, match):
  with pytest.raises(error, match=match):
    mp.LossScale.create(**kwargs)


def test_other_bad_arguments_are_named():
  with pytest.raises(TypeError, match="inner="):
    mp.master_weights("adam", F16)
  master, batch = _linear_setup()
  opt = mp.master_weights(optax.sgd(1.0), F16)
  with pytest.raises(TypeError, match="loss_scale="):
    mp.mixed_precision_step(_linear_loss, opt, mp.cast_floats(master, F16), opt.init(master), 1024.0, batch)
  with pytest.raises(TypeError, match="optimizer="):
    mp.mixed_precision_step(_linear_loss, None, master, None, mp.LossScale.create(), batch)
  with pytest.raises(TypeError, match="dtype="):
    mp.cast_floats(master, jnp.int8)
  with pytest.raises(ValueError, match="0 MasterWeightsState"):
    mp.master_params(optax.adam(1e-3).init(master))
