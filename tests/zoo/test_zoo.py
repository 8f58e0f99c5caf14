"""The model zoo, the bundled data sets and the training loop: shapes, stock layers only, data splits, learning."""

from __future__ import annotations

import collections
import itertools
import sys

import flax.linen as nn
import jax
import jax.extend
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from sklearn.datasets import load_digits

from lpnum.zoo import data
from lpnum.zoo import models as zoo, train

STOCK_LAYERS = (nn.Dense, nn.DenseGeneral, nn.Conv, nn.BatchNorm, nn.LayerNorm, nn.Embed,
                nn.MultiHeadDotProductAttention)
COMPOSITES = (zoo.MLP, zoo.CNN, zoo.ResidualBlock, zoo.Transformer, zoo.TransformerBlock)
NUM_CLASSES = {"mlp": 10, "cnn": 10, "transformer": 16}


@pytest.fixture(scope="module")
def initialized() -> dict[str, tuple[zoo.ZooEntry, dict]]:
  """Every ZOO model, initialized once for the module (initializing the CNN compiles for seconds)."""
  out = {}
  for name, make in zoo.ZOO.items():
    entry = make()
    out[name] = entry, train.train_state(entry.model, entry.example_input, optax.sgd(0.1), seed=0).variables
  return out


def _eval_kwargs(entry: zoo.ZooEntry) -> dict:
  return {"train": False} if isinstance(entry.model, zoo.CNN) else {}


# ---- the zoo ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(zoo.ZOO))
def test_zoo_models_give_logits_under_jit(name, initialized):
  entry, variables = initialized[name]
  assert entry.task in ("digits", "sequence")
  out = jax.jit(lambda v, x: entry.model.apply(v, x, **_eval_kwargs(entry)))(variables, entry.example_input)
  assert out.shape == (len(entry.example_input), NUM_CLASSES[name])
  assert out.dtype == jnp.float32 and bool(jnp.isfinite(out).all())


def test_cnn_updates_batch_stats_in_training_and_requires_train(initialized):
  entry, variables = initialized["cnn"]
  assert set(variables) == {"params", "batch_stats"}
  x = np.random.default_rng(0).uniform(size=entry.example_input.shape).astype(np.float32)
  _, updates = jax.jit(lambda v, x: entry.model.apply(v, x, train=True, mutable=["batch_stats"]))(variables, x)
  changed = jax.tree.map(lambda a, b: bool(jnp.any(a != b)), variables["batch_stats"], updates["batch_stats"])
  assert all(jax.tree.leaves(changed))
  with pytest.raises(TypeError, match="train"):
    entry.model.apply(variables, x)


def _sub_jaxprs(value):
  """The jaxprs inside an equation's parameter (pjit, scan, cond... hold them bare, closed or in tuples)."""
  if isinstance(value, jax.extend.core.ClosedJaxpr):
    yield value.jaxpr
  elif isinstance(value, jax.extend.core.Jaxpr):
    yield value
  elif isinstance(value, tuple | list):
    for v in value:
      yield from _sub_jaxprs(v)


def _count(jaxpr, primitive: str) -> int:
  n = 0
  for eqn in jaxpr.eqns:
    n += eqn.primitive.name == primitive
    for sub in _sub_jaxprs(tuple(eqn.params.values())):
      n += _count(sub, primitive)
  return n


@pytest.mark.parametrize("name", sorted(zoo.ZOO))
def test_zoo_matmuls_all_come_from_stock_layers(name, initialized):
  entry, variables = initialized[name]
  calls = collections.Counter()

  def record(next_fun, args, kwargs, context):
    if context.method_name == "__call__":
      assert isinstance(context.module, STOCK_LAYERS + COMPOSITES), type(context.module)
      calls[type(context.module)] += 1
    return next_fun(*args, **kwargs)

  def apply(v, x):
    with nn.intercept_methods(record):
      return entry.model.apply(v, x, **_eval_kwargs(entry))

  jaxpr = jax.make_jaxpr(apply)(variables, entry.example_input).jaxpr
  dense = calls[nn.Dense] + calls[nn.DenseGeneral]
  # Each attention layer's own products: queries x keys and weights x values.
  assert _count(jaxpr, "dot_general") == dense + 2 * calls[nn.MultiHeadDotProductAttention]
  assert _count(jaxpr, "conv_general_dilated") == calls[nn.Conv]
  assert dense > 0


def test_models_reject_bad_configurations():
  with pytest.raises(ValueError, match=r"channels=\(\)"):
    zoo.CNN(channels=()).init(jax.random.key(0), jnp.zeros((1, 8, 8, 1)), train=False)
  model = zoo.Transformer(vocab=8, length=4, dim=8, heads=2, layers=1, mlp_dim=8)
  with pytest.raises(ValueError, match="length=4"):
    model.init(jax.random.key(0), jnp.zeros((1, 5), jnp.int32))
  with pytest.raises(ValueError, match="heads=3"):
    zoo.Transformer(vocab=8, length=4, dim=8, heads=3).init(jax.random.key(0), jnp.zeros((1, 4), jnp.int32))


# ---- data -------------------------------------------------------------------------------------------------------
def test_digits_splits_are_stratified_and_deterministic():
  x_train, y_train = data.digits("train")
  x_test, y_test = data.digits("test")
  assert x_train.shape == (1438, 8, 8, 1) and x_test.shape == (359, 8, 8, 1)
  assert x_train.dtype == np.float32 and y_train.dtype == np.int32
  assert x_train.min() == 0.0 and x_train.max() == 1.0
  counts = np.bincount(y_train, minlength=10) + np.bincount(y_test, minlength=10)
  assert np.all(np.abs(np.bincount(y_test, minlength=10) - 0.2 * counts) <= 1)
  again = data.digits("train")
  np.testing.assert_array_equal(x_train, again[0])
  np.testing.assert_array_equal(y_train, again[1])
  flat, _ = data.digits("train", flat=True)
  np.testing.assert_array_equal(flat, x_train.reshape(-1, 64))
  other, _ = data.digits("test", seed=1)
  assert other.shape == x_test.shape and not np.array_equal(other, x_test)
  assert len(data.digits("test", test_fraction=0.5)[1]) in range(890, 910)


def test_digits_without_scikit_learn_says_how_to_install(monkeypatch):
  monkeypatch.setitem(sys.modules, "sklearn.datasets", None)
  data._load_digits.cache_clear()
  with pytest.raises(ImportError, match="pip install scikit-learn"):
    data.digits()


def _rows(x, y) -> collections.Counter:
  pixels = np.rint(np.asarray(x).reshape(len(y), 64) * 16).astype(np.int8)
  return collections.Counter(zip(map(bytes, pixels), np.asarray(y).tolist()))


@pytest.mark.parametrize("seed", [0, 3])
def test_digits_train_and_test_partition_the_data_set(seed):
  full = load_digits()
  everything = _rows(full.images / 16.0, full.target)
  train_rows = _rows(*data.digits("train", seed=seed))
  test_rows = _rows(*data.digits("test", seed=seed))
  assert train_rows + test_rows == everything
  assert sum(train_rows.values()) + sum(test_rows.values()) == len(full.target) == 1797


def test_sequence_task_labels_are_the_pointed_tokens():
  x, y = data.sequence_task(500, length=10, vocab=7, seed=4)
  assert x.shape == (500, 10) and y.shape == (500,) and x.dtype == y.dtype == np.int32
  assert x.min() == 0 and x.max() == 6
  assert set(np.unique(x[:, 0]).tolist()) == set(range(1, 7))
  np.testing.assert_array_equal(y, x[np.arange(500), x[:, 0]])
  again = data.sequence_task(500, length=10, vocab=7, seed=4)
  np.testing.assert_array_equal(x, again[0])
  assert not np.array_equal(x, data.sequence_task(500, length=10, vocab=7, seed=5)[0])
  long, _ = data.sequence_task(200, length=40, vocab=16)
  assert set(np.unique(long[:, 0]).tolist()) == set(range(1, 16))


def test_batches_shuffle_each_epoch_deterministically():
  x = np.arange(10)
  epochs = list(data.batches(x, x * 2, 3, seed=1, epochs=2))
  assert len(epochs) == 6
  for xb, yb in epochs:
    assert xb.shape == (3,)
    np.testing.assert_array_equal(yb, xb * 2)
  first, second = np.concatenate([b[0] for b in epochs[:3]]), np.concatenate([b[0] for b in epochs[3:]])
  assert len(set(first.tolist())) == 9 and len(set(second.tolist())) == 9
  assert not np.array_equal(first, second)
  again = [b[0] for b in data.batches(x, x * 2, 3, seed=1, epochs=2)]
  np.testing.assert_array_equal(np.concatenate(again), np.concatenate([first, second]))
  forever = data.batches(x, x, 4, seed=0)
  assert len(list(itertools.islice(forever, 50))) == 50


@pytest.mark.parametrize("call, error, match", [
    (lambda: data.digits("validation"), ValueError, "split='validation'"),
    (lambda: data.digits(test_fraction=0.0), ValueError, "test_fraction=0.0"),
    (lambda: data.digits(test_fraction=1), ValueError, "test_fraction=1"),
    (lambda: data.digits(test_fraction=-0.5), ValueError, "test_fraction=-0.5"),
    (lambda: data.digits(test_fraction="0.2"), TypeError, "test_fraction='0.2'"),
    (lambda: data.digits(seed=0.5), TypeError, "seed=0.5"),
    (lambda: data.sequence_task(0), ValueError, "n=0"),
    (lambda: data.sequence_task(-3), ValueError, "n=-3"),
    (lambda: data.sequence_task(4.0), TypeError, "n=4.0"),
    (lambda: data.sequence_task(4, length=1), ValueError, "length=1"),
    (lambda: data.sequence_task(4, vocab=1), ValueError, "vocab=1"),
    (lambda: data.sequence_task(4, vocab=0), ValueError, "vocab=0"),
    (lambda: data.batches(np.zeros(4), np.zeros(4), 0, seed=0), ValueError, "batch_size=0"),
    (lambda: data.batches(np.zeros(4), np.zeros(4), 5, seed=0), ValueError, "batch_size=5"),
    (lambda: data.batches(np.zeros(4), np.zeros(4), 2, seed=0, epochs=0), ValueError, "epochs=0"),
    (lambda: data.batches(np.zeros(4), np.zeros(3), 2, seed=0), ValueError, "same"),
    (lambda: data.batches(np.zeros(4), np.zeros(4), 2, seed=None), TypeError, "seed=None"),
])
def test_data_rejects_bad_arguments(call, error, match):
  with pytest.raises(error, match=match):
    call()


# ---- training ---------------------------------------------------------------------------------------------------
def test_mlp_learns_digits():
  x_train, y_train = data.digits("train")
  x_test, y_test = data.digits("test")
  model = zoo.MLP()
  variables, losses = train.fit(model, (x_train, y_train), steps=300, batch_size=128, seed=0)
  assert len(losses) == 300
  assert train.accuracy(model, variables, x_test, y_test) > 0.95


def test_fit_is_deterministic_and_accepts_a_wrapped_apply():
  x, y = data.digits("train", flat=True)
  model = zoo.MLP(features=(32,))
  calls = collections.Counter()

  def count(next_fun, args, kwargs, context):
    calls[type(context.module).__name__] += 1
    return next_fun(*args, **kwargs)

  def wrapped(*args, **kwargs):
    with nn.intercept_methods(count):
      return model.apply(*args, **kwargs)

  plain, plain_losses = train.fit(model, (x, y), steps=20, batch_size=64, seed=2)
  intercepted, intercepted_losses = train.fit(model, (x, y), steps=20, batch_size=64, seed=2, apply_fn=wrapped)
  assert calls["Dense"] > 0
  assert plain_losses == intercepted_losses
  jax.tree.map(np.testing.assert_array_equal, plain, intercepted)
  assert train.accuracy(model, plain, x, y) == train.accuracy(model, intercepted, x, y, apply_fn=wrapped)


def test_a_second_fit_with_the_same_apply_and_optimizer_does_not_retrace():
  x, y = data.digits("train", flat=True)
  model = zoo.MLP(features=(16,))
  optimizer = optax.adam(1e-2)
  traces = []

  def apply_fn(*args, **kwargs):  # runs only while a jitted function is traced
    traces.append("mutable" in kwargs)
    return model.apply(*args, **kwargs)

  first, first_losses = train.fit(model, (x, y), steps=3, batch_size=32, optimizer=optimizer, seed=0,
                                  apply_fn=apply_fn)
  _, other_losses = train.fit(model, (x, y), steps=3, batch_size=32, optimizer=optimizer, seed=1, apply_fn=apply_fn)
  again, again_losses = train.fit(model, (x, y), steps=3, batch_size=32, optimizer=optimizer, seed=0,
                                  apply_fn=apply_fn)
  assert traces == [True]
  assert other_losses != first_losses and again_losses == first_losses
  jax.tree.map(np.testing.assert_array_equal, first, again)
  for _ in range(2):
    train.accuracy(model, first, x, y, apply_fn=apply_fn)
  assert traces == [True, False]
  train.fit(model, (x, y), steps=1, batch_size=32, optimizer=optax.adam(1e-2), seed=0, apply_fn=apply_fn)
  assert traces == [True, False, True]  # another optimizer object: another step


def test_cnn_training_reduces_the_loss_and_evaluates_with_running_stats(initialized):
  x_train, y_train = data.digits("train")
  x_test, y_test = data.digits("test")
  entry, start = initialized["cnn"]
  model = entry.model
  variables, losses = train.fit(model, (x_train, y_train), steps=50, batch_size=64, seed=0, variables=start)
  assert np.mean(losses[-5:]) < np.mean(losses[:5]) / 2
  assert train.accuracy(model, variables, x_test, y_test) > 0.5


def test_transformer_learns_a_short_sequence_task():
  x_train, y_train = data.sequence_task(4096, length=8, vocab=8, seed=0)
  x_test, y_test = data.sequence_task(1024, length=8, vocab=8, seed=1)
  model = zoo.Transformer(vocab=8, length=8, dim=32, heads=4, layers=2, mlp_dim=64)
  variables, losses = train.fit(model, (x_train, y_train), steps=100, batch_size=64, optimizer=optax.adam(3e-3),
                                seed=0)
  assert np.mean(losses[-10:]) < np.mean(losses[:10]) / 3
  # Chance is 1/8; pooling positions without attention (layers=0) reaches about 1/3.
  assert train.accuracy(model, variables, x_test, y_test) > 0.6


@pytest.mark.slow
def test_transformer_solves_the_sequence_task_and_needs_attention():
  x_train, y_train = data.sequence_task(4096, seed=0)
  x_test, y_test = data.sequence_task(1024, seed=1)
  chance = 1 / 16
  results = {}
  for layers in (2, 0):
    model = zoo.Transformer(vocab=16, length=16, layers=layers)
    variables, _ = train.fit(model, (x_train, y_train), steps=200, batch_size=64, optimizer=optax.adam(3e-3),
                             seed=0)
    results[layers] = train.accuracy(model, variables, x_test, y_test)
  assert results[2] > 0.9
  # Without attention, positions are pooled independently: the best guess is the most frequent token.
  assert 2 * chance < results[0] < 0.35


def test_fit_minimizes_the_loss_it_is_given():
  """loss= replaces the mean cross-entropy: a loss of twice the optax cross-entropy reports twice its values at the
  first step (same initialization and batch), and its gradients are twice as large, which Adam divides out."""
  x, y = data.digits("train", flat=True)
  model = zoo.MLP(features=(8,))
  twice = lambda logits, labels: 2 * optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
  _, plain = train.fit(model, (x, y), steps=2, batch_size=32, seed=0)
  _, doubled = train.fit(model, (x, y), steps=2, batch_size=32, seed=0, loss=twice)
  assert doubled[0] == pytest.approx(2 * plain[0], rel=1e-6)
  with pytest.raises(TypeError, match="loss='mse' must be a function"):
    train.fit(model, (x, y), steps=1, loss="mse")


@pytest.mark.parametrize("call, error, match", [
    (lambda m, d: train.fit(m, d, steps=0), ValueError, "steps=0"),
    (lambda m, d: train.fit(m, d, steps=1.5), TypeError, "steps=1.5"),
    (lambda m, d: train.fit(m, d, steps=1, batch_size=0), ValueError, "batch_size=0"),
    (lambda m, d: train.fit(m, d, steps=1, batch_size=10_000), ValueError, "batch_size=10000"),
    (lambda m, d: train.fit(m, d, steps=1, seed="0"), TypeError, "seed='0'"),
    (lambda m, d: train.fit(m, d[0], steps=1), TypeError, "data"),
    (lambda m, d: train.fit(m, (d[0], d[1].astype(np.float32)), steps=1), TypeError, "labels"),
    (lambda m, d: train.fit(m, d, steps=1, variables={"batch_stats": {}}), ValueError, "'params'"),
    (lambda m, d: train.train_state(lambda x: x, d[0], optax.sgd(0.1), seed=0), TypeError, "model="),
    (lambda m, d: train.accuracy(m, {}, d[0], d[1], batch_size=-1), ValueError, "batch_size=-1"),
    (lambda m, d: train.logits(m, {}, d[0][:0]), ValueError, "at least one"),
])
def test_training_rejects_bad_arguments(call, error, match):
  x, y = data.digits("test", flat=True)
  with pytest.raises(error, match=match):
    call(zoo.MLP(features=(4,)), (x, y))
