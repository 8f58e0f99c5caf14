"""Mixed-precision training: float32 master weights and dynamic loss scaling.

After Micikevicius et al., "Mixed Precision Training", ICLR 2018. The forward and backward passes run in a low
precision ``compute_dtype`` (float16 or bfloat16) while the optimizer keeps a float32 master copy of the weights:

* :func:`master_weights` wraps any optax optimizer. Its state holds the float32 master weights; the gradients
  (in ``compute_dtype``) are cast to float32, the inner optimizer updates the master weights in float32, and the
  updates it returns take the model's parameters to the new master weights rounded to ``compute_dtype``. Updates
  too small to change a float16 weight therefore accumulate in the master copy instead of vanishing.
* Loss scaling keeps small gradients out of float16's underflow range: the loss is multiplied by a scale ``S``
  (:func:`scale_loss`), the gradients are divided by it in float32 (:func:`unscale`). :class:`LossScale` is the
  dynamic rule of the paper (as in NVIDIA Apex): a step with non-finite gradients is skipped and halves ``S`` (not
  below 1); ``period`` consecutive finite steps double it (up to ``max_scale``). See :func:`update_loss_scale`.
* :func:`mixed_precision_step` puts it together for a loss function ``loss_fn(params, batch)``.

``master_weights(optax.apply_if_finite(inner, max_consecutive_errors), dtype)`` is the optax-level way to skip
non-finite steps without loss scaling (e.g. in bfloat16, whose range is float32's): a skipped step leaves the
master weights and the inner state unchanged and returns zero updates. (Wrap ``inner``, not the
``master_weights`` optimizer: its updates are float32 while the gradients are not, and ``apply_if_finite``
needs both in one dtype.) Everything here is jit-compatible.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.typing import ArrayLike

__all__ = ["MasterWeightsState", "master_weights", "master_params", "cast_floats", "LossScale", "scale_loss",
           "unscale", "all_finite", "update_loss_scale", "StepResult", "mixed_precision_step"]


def _float_dtype(dtype: Any, name: str) -> np.dtype:
  if dtype is None or isinstance(dtype, bool):
    raise TypeError(f"{name}={dtype!r} must be a floating dtype (e.g. jnp.float16, jnp.bfloat16)")
  try:
    dt = jnp.dtype(dtype)
  except TypeError:
    raise TypeError(f"{name}={dtype!r} is not a dtype; expected a floating dtype (e.g. jnp.float16)") from None
  if not jnp.issubdtype(dt, jnp.floating):
    raise TypeError(f"{name}={dtype!r} must be a floating dtype (e.g. jnp.float16, jnp.bfloat16), got {dt}")
  return dt


def _is_float(x) -> bool:
  return jnp.issubdtype(jnp.result_type(x), jnp.floating)


def _wide(x) -> jax.Array:
  """``x`` as float32 (or wider if it already is)."""
  x = jnp.asarray(x)
  return x.astype(jnp.promote_types(x.dtype, jnp.float32))


def cast_floats(tree: Any, dtype: Any) -> Any:
  """``tree`` with its floating-point leaves cast to ``dtype`` (other leaves unchanged).

  Example:
    >>> import jax.numpy as jnp
    >>> from lpnum.nn.mixed_precision import cast_floats
    >>> tree = cast_floats({"w": jnp.ones(2), "step": jnp.int32(3)}, jnp.bfloat16)
    >>> tree["w"].dtype, tree["step"].dtype
    (dtype(bfloat16), dtype('int32'))
  """
  dt = _float_dtype(dtype, "dtype")
  return jax.tree.map(lambda x: jnp.asarray(x).astype(dt) if _is_float(x) else x, tree)


# ---- master weights ---------------------------------------------------------------------------------------------
class MasterWeightsState(NamedTuple):
  """State of :func:`master_weights`.

  Attributes:
    master: the float32 master weights (floating leaves float32, or wider if they were; other leaves as given).
    inner_state: the wrapped optimizer's state, for the master weights.
  """

  master: Any
  inner_state: Any


def master_weights(inner: optax.GradientTransformation, compute_dtype: Any) -> optax.GradientTransformationExtraArgs:
  """Wraps ``inner`` to keep float32 master weights while the model runs in ``compute_dtype``.

  ``init(params)`` stores ``params`` (cast to float32) as the master weights and initialises ``inner`` on them:
  pass the float32 parameters and give the model :func:`cast_floats(params, compute_dtype) <cast_floats>`.
  ``update(grads, state, params)`` casts ``grads`` to float32, runs ``inner.update(grads, inner_state, master)``,
  adds its updates to the master weights in float32 and returns, for every floating leaf,
  ``new_master.astype(compute_dtype) - params`` in float32. ``optax.apply_updates(params, updates)`` (which adds
  in float32 and rounds to the dtype of ``params``) then gives the new master weights rounded to
  ``compute_dtype``: exactly, unless a weight shrinks more than about 2^12-fold (float16; 2^15-fold for bfloat16)
  in one step, when the float32 addition may miss it by about 2^-23 times the old weight. Without ``params`` the
  updates start from the old master weights rounded to ``compute_dtype``.
  :func:`master_params` reads the master weights from the state. To skip non-finite steps, wrap ``inner`` in
  ``optax.apply_if_finite`` (not this optimizer, whose float32 updates differ in dtype from the gradients).

  Args:
    inner: the optimizer to run in float32 (any ``optax.GradientTransformation``; extra arguments of
      ``update`` are passed on).
    compute_dtype: the floating dtype of the model's parameters and gradients (``jnp.float16``,
      ``jnp.bfloat16``...).

  Returns:
    An ``optax.GradientTransformationExtraArgs`` whose state is a :class:`MasterWeightsState`.

  Raises:
    TypeError: ``inner`` is not a GradientTransformation or ``compute_dtype`` is not a floating dtype.

  Example:
    >>> import jax.numpy as jnp, optax
    >>> from lpnum.nn.mixed_precision import cast_floats, master_params, master_weights
    >>> opt = master_weights(optax.sgd(1.0), jnp.float16)
    >>> master = {"w": jnp.ones(())}
    >>> params, state = cast_floats(master, jnp.float16), opt.init(master)
    >>> grads = {"w": jnp.float16(-2.0**-14)}  # below half a float16 ulp of 1.0
    >>> for _ in range(10):
    ...   updates, state = opt.update(grads, state, params)
    ...   params = optax.apply_updates(params, updates)
    >>> (params["w"] + jnp.float16(2.0**-14)).tolist()  # adding in float16 is lost
    1.0009765625
    >>> master_params(state)["w"].tolist(), params["w"].tolist()  # 1 + 10 * 2^-14, and it rounded to float16
    (1.0006103515625, 1.0009765625)
  """
  if not isinstance(inner, optax.GradientTransformation):
    raise TypeError(f"inner={inner!r} must be an optax.GradientTransformation")
  dtype = _float_dtype(compute_dtype, "compute_dtype")
  inner = optax.with_extra_args_support(inner)

  def init(params):
    master = jax.tree.map(lambda x: _wide(x) if _is_float(x) else x, params)
    return MasterWeightsState(master, inner.init(master))

  def update(grads, state, params=None, **extra_args):
    grads = jax.tree.map(lambda g: _wide(g) if _is_float(g) else g, grads)
    updates, inner_state = inner.update(grads, state.inner_state, state.master, **extra_args)
    master = optax.apply_updates(state.master, updates)
    if params is None:
      params = cast_floats(state.master, dtype)

    def step(new, old):
      if not _is_float(new):
        return jnp.zeros_like(old)
      return _wide(jnp.asarray(new).astype(dtype)) - _wide(old)

    return jax.tree.map(step, master, params), MasterWeightsState(master, inner_state)

  return optax.GradientTransformationExtraArgs(init, update)


def master_params(opt_state: Any) -> Any:
  """The float32 master weights held by the :func:`master_weights` state in ``opt_state`` (which may be nested in
  the state of an outer transformation, e.g. ``optax.chain``).

  Raises:
    ValueError: ``opt_state`` holds no :class:`MasterWeightsState`, or more than one.

  Example:
    >>> import jax.numpy as jnp, optax
    >>> from lpnum.nn.mixed_precision import master_params, master_weights
    >>> opt = master_weights(optax.apply_if_finite(optax.sgd(0.1), max_consecutive_errors=5), jnp.bfloat16)
    >>> master_params(opt.init({"w": jnp.ones(2, jnp.bfloat16)}))["w"].dtype
    dtype('float32')
  """
  found = [s for s in jax.tree.leaves(opt_state, is_leaf=lambda s: isinstance(s, MasterWeightsState))
           if isinstance(s, MasterWeightsState)]
  if len(found) != 1:
    raise ValueError(f"opt_state holds {len(found)} MasterWeightsState; expected exactly one (the state of an "
                     "optimizer built with master_weights)")
  return found[0].master


# ---- dynamic loss scaling ---------------------------------------------------------------------------------------
@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class LossScale:
  """Dynamic loss scale state (a pytree: it passes through ``jit``; ``period`` and ``max_scale`` are static).

  Create it with :meth:`create`; :func:`update_loss_scale` gives the next state.

  Attributes:
    scale: float32 scalar, the current loss scale ``S``.
    good_steps: int32 scalar, consecutive steps with finite gradients since ``S`` last changed (or was doubled).
    period: finite steps after which ``S`` doubles.
    max_scale: the largest scale.
  """

  scale: jax.Array
  good_steps: jax.Array
  period: int = dataclasses.field(default=2000, metadata=dict(static=True))
  max_scale: float = dataclasses.field(default=2.0**24, metadata=dict(static=True))

  @classmethod
  def create(cls, initial_scale: float = 2.0**15, *, period: int = 2000, max_scale: float = 2.0**24) -> LossScale:
    """A loss scale starting at ``initial_scale`` (powers of two keep scaling and unscaling exact).

    Args:
      initial_scale: the first scale, in [1, max_scale].
      period: consecutive finite steps after which the scale doubles, a positive integer.
      max_scale: the cap on doubling, a finite float32 value >= 1.

    Raises:
      ValueError: an argument out of range (named in the message).

    Example:
      >>> from lpnum.nn.mixed_precision import LossScale
      >>> s = LossScale.create(period=100)
      >>> s.scale.tolist(), s.good_steps.tolist(), s.period
      (32768.0, 0, 100)
    """
    if isinstance(period, bool) or not isinstance(period, int | np.integer) or not 1 <= period <= 2**31 - 1:
      raise ValueError(f"period={period!r} must be a positive integer (at most 2^31 - 1)")
    for name, value in (("max_scale", max_scale), ("initial_scale", initial_scale)):
      if isinstance(value, bool) or not isinstance(value, int | float | np.integer | np.floating):
        raise TypeError(f"{name}={value!r} must be a number")
    if not (math.isfinite(max_scale) and 1 <= max_scale <= float(np.finfo(np.float32).max)):
      raise ValueError(f"max_scale={max_scale!r} must be a finite float32 value >= 1")
    if not (math.isfinite(initial_scale) and 1 <= initial_scale <= max_scale):
      raise ValueError(f"initial_scale={initial_scale!r} must be in [1, max_scale={max_scale!r}]")
    return cls(jnp.float32(initial_scale), jnp.int32(0), int(period), float(max_scale))


def scale_loss(loss: ArrayLike, loss_scale: LossScale) -> jax.Array:
  """``loss * S`` in float32 (or wider): differentiate this to get gradients scaled by ``S``.

  The cotangent that reaches a float16 loss is ``S`` itself, so scales above 65504 overflow there (and are then
  halved by the dynamic rule).

  Example:
    >>> import jax.numpy as jnp
    >>> from lpnum.nn.mixed_precision import LossScale, scale_loss
    >>> scale_loss(jnp.float16(0.5), LossScale.create(1024.0)).tolist()
    512.0
  """
  return _wide(loss) * loss_scale.scale


def unscale(grads: Any, loss_scale: LossScale) -> Any:
  """The floating leaves of ``grads`` cast to float32 (or wider) and divided by the scale ``S``.

  Example:
    >>> import jax.numpy as jnp
    >>> from lpnum.nn.mixed_precision import LossScale, unscale
    >>> g = unscale({"w": jnp.array([1.0, 2.0], jnp.float16)}, LossScale.create(4.0))
    >>> g["w"].tolist(), g["w"].dtype
    ([0.25, 0.5], dtype('float32'))
  """
  return jax.tree.map(lambda g: _wide(g) / loss_scale.scale if _is_float(g) else g, grads)


def all_finite(tree: Any) -> jax.Array:
  """Whether every element of every leaf of ``tree`` is finite (a bool scalar; True for an empty tree).

  Example:
    >>> import jax.numpy as jnp
    >>> from lpnum.nn.mixed_precision import all_finite
    >>> all_finite({"a": jnp.ones(2), "b": jnp.array([1.0, jnp.inf])}).tolist()
    False
  """
  leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]
  return jnp.all(jnp.stack(leaves)) if leaves else jnp.array(True)


def update_loss_scale(loss_scale: LossScale, grads_finite: ArrayLike) -> LossScale:
  """The next loss scale after a step whose gradients were finite or not.

  Non-finite gradients (the step is skipped): ``S <- max(S / 2, 1)`` and the counter restarts at 0. Finite: the
  counter counts the step; when it reaches ``period``, ``S <- min(2 S, max_scale)`` and it restarts at 0.

  Example:
    >>> from lpnum.nn.mixed_precision import LossScale, update_loss_scale
    >>> s = LossScale.create(8.0, period=2)
    >>> s = update_loss_scale(s, False); s.scale.tolist()
    4.0
    >>> s = update_loss_scale(update_loss_scale(s, True), True); s.scale.tolist(), s.good_steps.tolist()
    (8.0, 0)
  """
  finite = jnp.asarray(grads_finite, bool)
  good = jnp.where(finite, loss_scale.good_steps + 1, 0).astype(jnp.int32)
  grow = good >= loss_scale.period
  scale = jnp.where(finite, jnp.where(grow, jnp.minimum(loss_scale.scale * 2, loss_scale.max_scale), loss_scale.scale),
                    jnp.maximum(loss_scale.scale / 2, 1)).astype(jnp.float32)
  return dataclasses.replace(loss_scale, scale=scale, good_steps=jnp.where(grow, 0, good).astype(jnp.int32))


# ---- one training step ------------------------------------------------------------------------------------------
class StepResult(NamedTuple):
  """What :func:`mixed_precision_step` returns.

  Attributes:
    params: the new model parameters (unchanged, bit for bit, if the step was skipped).
    opt_state: the new optimizer state (unchanged if skipped).
    loss_scale: the next :class:`LossScale`.
    loss: the (unscaled) loss at the old parameters, float32.
    skipped: bool scalar, whether the gradients were not finite and the step was skipped.
  """

  params: Any
  opt_state: Any
  loss_scale: LossScale
  loss: jax.Array
  skipped: jax.Array


def mixed_precision_step(loss_fn: Callable[[Any, Any], ArrayLike], optimizer: optax.GradientTransformation,
                         params: Any, opt_state: Any, loss_scale: LossScale, batch: Any) -> StepResult:
  """One mixed-precision training step with dynamic loss scaling.

  Computes the gradients of ``scale_loss(loss_fn(params, batch), loss_scale)`` (in the dtype of ``params`` and
  of the model's computation), unscales them in float32, and, if they are all finite, applies
  ``optimizer.update`` and ``optax.apply_updates``; otherwise params and optimizer state are returned unchanged.
  The loss scale is updated by :func:`update_loss_scale` either way. With ``optimizer = master_weights(inner,
  compute_dtype)`` and ``params`` in ``compute_dtype`` this is the recipe of Micikevicius et al.; it also works
  with any optax optimizer and float32 parameters.

  Jit it with the function and the optimizer fixed:
  ``jax.jit(functools.partial(mixed_precision_step, loss_fn, optimizer))``.

  Args:
    loss_fn: ``loss_fn(params, batch)`` -> scalar loss.
    optimizer: an optax optimizer, typically :func:`master_weights`.
    params: the model's parameters (in the compute dtype).
    opt_state: ``optimizer``'s state.
    loss_scale: a :class:`LossScale`.
    batch: passed to ``loss_fn`` unchanged.

  Returns:
    A :class:`StepResult` ``(params, opt_state, loss_scale, loss, skipped)``.

  Raises:
    TypeError: ``optimizer`` is not a GradientTransformation or ``loss_scale`` not a LossScale.

  Example:
    >>> import functools, jax, jax.numpy as jnp, optax
    >>> from lpnum.nn import mixed_precision as mp
    >>> opt = mp.master_weights(optax.sgd(0.75), jnp.float16)
    >>> master = {"w": jnp.zeros(3)}
    >>> params, state, scale = mp.cast_floats(master, jnp.float16), opt.init(master), mp.LossScale.create()
    >>> batch = (jnp.eye(3, dtype=jnp.float16), jnp.array([1.0, 2.0, 3.0], jnp.float16))
    >>> loss_fn = lambda p, b: jnp.mean((b[0] @ p["w"] - b[1]) ** 2)
    >>> step = jax.jit(functools.partial(mp.mixed_precision_step, loss_fn, opt))
    >>> params, state, scale, loss, skipped = step(params, state, scale, batch)
    >>> skipped.tolist(), scale.scale.tolist()  # 2^15 * gradient overflows float16: skipped, scale halved
    (True, 16384.0)
    >>> for _ in range(30):
    ...   params, state, scale, loss, skipped = step(params, state, scale, batch)
    >>> params["w"].tolist(), params["w"].dtype, mp.master_params(state)["w"].dtype, scale.scale.tolist()
    ([1.0, 2.0, 3.0], dtype('float16'), dtype('float32'), 16384.0)
  """
  if not isinstance(optimizer, optax.GradientTransformation):
    raise TypeError(f"optimizer={optimizer!r} must be an optax.GradientTransformation")
  if not isinstance(loss_scale, LossScale):
    raise TypeError(f"loss_scale={loss_scale!r} must be a LossScale (LossScale.create())")

  def scaled(p):
    loss = loss_fn(p, batch)
    return scale_loss(loss, loss_scale), _wide(loss)

  (_, loss), grads = jax.value_and_grad(scaled, has_aux=True)(params)
  grads = unscale(grads, loss_scale)
  finite = all_finite(grads)
  updates, new_state = optimizer.update(grads, opt_state, params)
  new_params = optax.apply_updates(params, updates)

  def keep(new, old):
    return jax.tree.map(lambda a, b: jnp.where(finite, a, b), new, old)

  return StepResult(keep(new_params, params), keep(new_state, opt_state), update_loss_scale(loss_scale, finite),
                    loss, jnp.logical_not(finite))
