"""A small, generic training loop for Flax classifiers: softmax cross-entropy, optax, one jitted step.

It knows nothing about quantization: it takes a module and, optionally, a replacement for ``module.apply``
(for example one that runs the module under ``nn.intercept_methods``), so any wrapped model trains the same way.

Conventions: the module's ``__call__`` takes the input batch and, if it has such a parameter, ``train`` (passed
``True`` while fitting, ``False`` to evaluate). Every variable collection other than ``params`` (BatchNorm's
``batch_stats``, say) is model state: mutable while fitting, carried between steps, never differentiated.

Compiled programs are reused: the jitted initialization, training step and evaluation are cached on the model,
the ``apply_fn``, the optimizer and the loss (hashable arguments, compared as Python compares them: a bound method
or a closure by identity), so a second :func:`fit` with the same ones on data of the same shapes runs the step
already compiled (it neither retraces nor recompiles it). Unhashable ones get a fresh jitted function per call.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from lpnum.zoo.data import batches

__all__ = ["TrainState", "train_state", "fit", "accuracy", "logits"]


@flax.struct.dataclass
class TrainState:
  """Parameters, model state (non-``params`` collections) and optimizer state after ``step`` updates."""
  step: jax.Array
  params: Any
  model_state: dict[str, Any]
  opt_state: optax.OptState

  @property
  def variables(self) -> dict[str, Any]:
    """The variables to pass to ``apply``: ``{"params": ..., **model_state}``."""
    return {"params": self.params, **self.model_state}


def _takes_train(model: nn.Module) -> bool:
  return "train" in inspect.signature(model.__call__).parameters


def _train_kwargs(takes_train: bool, train: bool) -> dict[str, bool]:
  return {"train": train} if takes_train else {}


def _check_seed(seed) -> int:
  if isinstance(seed, bool) or not isinstance(seed, int | np.integer):
    raise TypeError(f"seed={seed!r} must be an integer")
  return int(seed)


def _cached(factory: Callable[..., Any], *args) -> Any:
  """``factory(*args)`` from its ``lru_cache``, or built afresh if an argument is unhashable."""
  try:
    return factory(*args)
  except TypeError:  # an unhashable argument (a module with unhashable attributes, say): no caching
    return factory.__wrapped__(*args)


@functools.lru_cache(maxsize=32)
def _jitted_init(model: nn.Module) -> Callable[..., Any]:
  train_kwargs = _train_kwargs(_takes_train(model), False)
  return jax.jit(lambda key, x: model.init(key, x, **train_kwargs))


@functools.lru_cache(maxsize=32)
def _jitted_step(apply_fn: Callable[..., Any], optimizer: optax.GradientTransformation, takes_train: bool,
                 loss: Callable[[jax.Array, jax.Array], jax.Array]) -> Callable[..., Any]:
  return jax.jit(functools.partial(_step, apply_fn, optimizer, _train_kwargs(takes_train, True), loss))


@functools.lru_cache(maxsize=32)
def _jitted_predict(apply_fn: Callable[..., Any], takes_train: bool) -> Callable[..., Any]:
  train_kwargs = _train_kwargs(takes_train, False)
  return jax.jit(lambda v, xb: apply_fn(v, xb, **train_kwargs))


def train_state(model: nn.Module, example_input: Any, optimizer: optax.GradientTransformation, *,
                seed: int) -> TrainState:
  """Initializes ``model`` on ``example_input`` (with ``train=False`` if it takes ``train``) and ``optimizer``.

  Example:
    >>> import jax.numpy as jnp, optax
    >>> from lpnum.zoo.train import train_state
    >>> from lpnum.zoo.models import MLP
    >>> state = train_state(MLP(features=(8,)), jnp.zeros((2, 4)), optax.sgd(0.1), seed=0)
    >>> int(state.step), sorted(state.params), state.model_state
    (0, ['Dense_0', 'Dense_1'], {})
  """
  if not isinstance(model, nn.Module):
    raise TypeError(f"model={type(model).__name__} must be a flax.linen.Module")
  key = jax.random.key(_check_seed(seed))
  variables = _cached(_jitted_init, model)(key, example_input)
  if "params" not in variables:
    raise ValueError(f"model={type(model).__name__} has no parameters to train")
  return _start(variables, optimizer)


def _start(variables: Any, optimizer: optax.GradientTransformation) -> TrainState:
  model_state = {k: v for k, v in variables.items() if k != "params"}
  return TrainState(step=jnp.zeros((), jnp.int32), params=variables["params"], model_state=model_state,
                    opt_state=optimizer.init(variables["params"]))


def _loss(logits: jax.Array, labels: jax.Array) -> jax.Array:
  return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


def fit(model: nn.Module, data: tuple[Any, Any], *, steps: int, batch_size: int = 128,
        optimizer: optax.GradientTransformation | None = None, seed: int = 0,
        apply_fn: Callable[..., Any] | None = None, variables: Any = None,
        loss: Callable[[jax.Array, jax.Array], jax.Array] | None = None) -> tuple[dict[str, Any], list[float]]:
  """Trains a classifier with softmax cross-entropy on integer labels for ``steps`` mini-batch updates.

  Batches come from :func:`lpnum.zoo.data.batches` (shuffled, every batch full, as many epochs as needed), and
  ``seed`` seeds both the initialization and the shuffling, so the result is a function of the arguments.
  The jitted step is cached on ``apply_fn`` (or the model) and ``optimizer``: calls that pass the same objects
  and data of the same shapes reuse one compiled step (see the module docs).

  Args:
    model: a Flax module mapping an input batch to logits.
    data: ``(x, y)`` arrays, ``y`` integer class labels.
    steps: number of updates.
    batch_size: examples per update, at most ``len(x)``.
    optimizer: an optax optimizer; default ``optax.adam(1e-3)``.
    seed: seed of initialization and shuffling.
    apply_fn: called as ``apply_fn(variables, x, [train=True,] mutable=[...])`` in place of ``model.apply``.
    variables: start from these variables (a trained model's, say, to fine-tune it) instead of initializing
      the model; ``seed`` then only shuffles.
    loss: ``loss(logits, labels)`` -> the scalar to minimize, in place of the mean softmax cross-entropy (the
      unit-scaled :func:`lpnum.unit_scaling.cross_entropy`, say).

  Returns:
    ``(variables, losses)``: the trained variables (``params`` and model state) and each step's mean loss.

  Example:
    >>> import numpy as np, optax
    >>> from lpnum.zoo.train import accuracy, fit
    >>> from lpnum.zoo.models import MLP
    >>> x = np.random.default_rng(0).standard_normal((64, 4)).astype(np.float32)
    >>> y = (x[:, 0] > 0).astype(np.int32)
    >>> model = MLP(features=(16,), num_classes=2)
    >>> variables, losses = fit(model, (x, y), steps=50, batch_size=32, optimizer=optax.adam(1e-2),
    ...                         seed=0)
    >>> len(losses), losses[-1] < losses[0] / 2, accuracy(model, variables, x, y) > 0.9
    (50, True, True)
  """
  if isinstance(steps, bool) or not isinstance(steps, int | np.integer):
    raise TypeError(f"steps={steps!r} must be an integer")
  if steps <= 0:
    raise ValueError(f"steps={steps} must be positive")
  if not isinstance(data, tuple | list) or len(data) != 2:
    raise TypeError(f"data must be an (x, y) pair of arrays, got {type(data).__name__}")
  x, y = np.asarray(data[0]), np.asarray(data[1])
  if not np.issubdtype(y.dtype, np.integer):
    raise TypeError(f"data labels must be integers, got dtype {y.dtype}")
  seed = _check_seed(seed)
  stream = batches(x, y, batch_size, seed=seed)
  optimizer = optax.adam(1e-3) if optimizer is None else optimizer
  apply_fn = model.apply if apply_fn is None else apply_fn
  if variables is None:
    state = train_state(model, x[:batch_size], optimizer, seed=seed)
  elif not hasattr(variables, "items") or "params" not in variables:
    raise ValueError(f"variables ({type(variables).__name__}) must be a mapping with a 'params' collection")
  else:
    state = _start(variables, optimizer)
  if loss is not None and not callable(loss):
    raise TypeError(f"loss={loss!r} must be a function loss(logits, labels) or None")
  step = _cached(_jitted_step, apply_fn, optimizer, _takes_train(model), _loss if loss is None else loss)
  losses = []
  for _ in range(steps):
    state, value = step(state, *next(stream))
    losses.append(value)
  return state.variables, [float(v) for v in jax.device_get(losses)]


def _step(apply_fn, optimizer, train_kwargs, loss, state: TrainState, x, y):
  def loss_fn(params):
    out, model_state = apply_fn({"params": params, **state.model_state}, x, **train_kwargs,
                                mutable=list(state.model_state))
    return loss(out, y), model_state

  (loss, model_state), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  return TrainState(step=state.step + 1, params=params, model_state=dict(model_state), opt_state=opt_state), loss


def logits(model: nn.Module, variables: dict[str, Any], x: Any, *, batch_size: int = 1024,
           apply_fn: Callable[..., Any] | None = None) -> np.ndarray:
  """The model's outputs on ``x`` in evaluation mode (``train=False`` if it takes ``train``), ``batch_size``
  examples at a time, by one jitted apply (cached on ``apply_fn`` or the model, as :func:`fit`'s step).

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from lpnum.zoo.train import logits
    >>> from lpnum.zoo.models import MLP
    >>> model = MLP(features=(8,), num_classes=3)
    >>> variables = model.init(jax.random.key(0), jnp.zeros((1, 4)))
    >>> logits(model, variables, jnp.ones((5, 4)), batch_size=2).shape
    (5, 3)
  """
  if isinstance(batch_size, bool) or not isinstance(batch_size, int | np.integer):
    raise TypeError(f"batch_size={batch_size!r} must be an integer")
  if batch_size <= 0:
    raise ValueError(f"batch_size={batch_size} must be positive")
  apply_fn = model.apply if apply_fn is None else apply_fn
  predict = _cached(_jitted_predict, apply_fn, _takes_train(model))
  x = np.asarray(x)
  if x.ndim == 0 or len(x) == 0:
    raise ValueError(f"x of shape {x.shape} must hold at least one example")
  size = min(batch_size, len(x))
  out = []
  for i in range(0, len(x), size):
    xb = x[i:i + size]
    pad = size - len(xb)
    if pad:
      xb = np.concatenate([xb, np.zeros((pad, *xb.shape[1:]), xb.dtype)])
    out.append(np.asarray(predict(variables, xb))[:size - pad])
  return np.concatenate(out)


def accuracy(model: nn.Module, variables: dict[str, Any], x: Any, y: Any, *, batch_size: int = 1024,
             apply_fn: Callable[..., Any] | None = None) -> float:
  """Fraction of examples whose largest logit is at their label, in evaluation mode.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from lpnum.zoo.train import accuracy
    >>> from lpnum.zoo.models import MLP
    >>> model = MLP(features=(), num_classes=2)
    >>> variables = {"params": {"Dense_0": {"kernel": jnp.array([[1.0, -1.0]]), "bias": jnp.zeros(2)}}}
    >>> accuracy(model, variables, jnp.array([[1.0], [-1.0], [2.0], [-3.0]]), jnp.array([0, 1, 1, 1]))
    0.75
  """
  y = np.asarray(y)
  predictions = logits(model, variables, x, batch_size=batch_size, apply_fn=apply_fn).argmax(-1)
  if predictions.shape != y.shape:
    raise ValueError(f"y of shape {y.shape} must match the {predictions.shape} predictions")
  return float(np.mean(predictions == y))
