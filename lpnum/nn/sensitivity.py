"""Per-layer Hessian sensitivity (HAWQ-V2): Hutchinson's trace estimator and the quantization perturbation.

HAWQ-V2 (Dong, Yao, Arfeen, Gholami, Mahoney, Keutzer, NeurIPS 2020) measures how much quantizing layer ``l`` to
format ``f`` costs the loss by the layer's average Hessian eigenvalue times the squared weight perturbation:

  ``Omega_l(f) = Tr(H_l) / n_l * ||Q_f(W_l) - W_l||_2^2``

``H_l`` the block of the loss Hessian for the kernel ``W_l`` (``n_l`` entries) and ``Q_f`` the quantizer of ``f``
(a second-order Taylor model of the loss with the perturbation spread evenly over the block's eigenvalues).

The trace is estimated without forming the Hessian, by Hutchinson's estimator: for ``v`` with independent
Rademacher (+-1) entries, ``E[v^T A v] = Tr(A)``. One probe ``v`` spans every layer's kernel at once (zeros on the
other params); ``H v`` is a Hessian-vector product, ``jax.jvp`` of ``jax.grad`` of the loss; and
``v_l . (H v)_l`` estimates ``Tr(H_l)`` without bias (the cross-layer terms ``v_l^T H_lm v_m`` have mean zero, as
``v_l`` and ``v_m`` are independent). Each layer's estimate is the mean over the probes, and its standard error
the probes' sample standard deviation over ``sqrt(probes)``. Probes are drawn in chunks (``jax.vmap`` of the
Hessian-vector product) until every layer's standard error is at most ``tol`` times its estimate's magnitude (after
``min_probes``), or ``max_probes`` are spent; the result says which.

A layer is a module whose params hold a ``kernel`` (flax ``Dense``, ``DenseGeneral``, ``Conv``: what a
:class:`lpnum.nn.Rule` quantizes), named by its module path (``"Dense_0"``, ``"ResidualBlock_1/Conv_0"``). ``Q_f``
is the quantization :func:`lpnum.nn.ptq` applies to the kernel under the candidate's config (its weight format, in
the 2-D view the layer multiplies by), dequantized: the weights the post-training-quantized model computes with
(:func:`quantized_kernel`, one fused :func:`lpnum.fake_quantize` pass, equal bit for bit to ptq's quantize and
dequantize).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from lpnum.nn.ptq import _path_str, weight_format, _weight_scale
from lpnum.qdot import DotConfig
from lpnum.scaled import fake_quantize
from lpnum.validate import as_float_array, check_int, check_key, check_number, short

__all__ = ["HessianTrace", "layer_paths", "hessian_trace", "quantized_kernel", "sensitivity"]


@dataclasses.dataclass(frozen=True)
class HessianTrace:
  """Hutchinson estimates of each layer's Hessian trace (:func:`hessian_trace`).

  Attributes:
    trace: layer path -> estimate of ``Tr(H_l)``, the mean of the probes' ``v_l . (H v)_l``.
    stderr: layer path -> standard error of that mean (sample standard deviation over ``sqrt(probes)``).
    n_params: layer path -> ``n_l``, the number of kernel entries.
    probes: how many probes were used.
    converged: whether every layer's ``stderr <= tol * |trace|`` when the estimator stopped (False: it stopped at
      ``max_probes``).
    tol: the relative standard error asked for.
  """

  trace: dict[str, float]
  stderr: dict[str, float]
  n_params: dict[str, int]
  probes: int
  converged: bool
  tol: float

  def mean_eigenvalue(self) -> dict[str, float]:
    """Layer path -> ``Tr(H_l) / n_l``, HAWQ-V2's average Hessian eigenvalue of the layer."""
    return {path: t / self.n_params[path] for path, t in self.trace.items()}


def layer_paths(params, kernel_name: str = "kernel") -> tuple[str, ...]:
  """The module paths of a params tree's layers (modules whose params hold a ``kernel_name`` leaf), in tree order.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from lpnum.nn import sensitivity
    >>> from lpnum.zoo.models import MLP
    >>> params = MLP(features=(8,)).init(jax.random.key(0), jnp.zeros((1, 4)))["params"]
    >>> sensitivity.layer_paths(params)
    ('Dense_0', 'Dense_1')
  """
  if not isinstance(kernel_name, str) or not kernel_name:
    raise TypeError(f"kernel_name={short(kernel_name)} must be a non-empty str (the leaf name of kernels)")
  if not isinstance(params, Mapping):
    raise TypeError(f"params={short(params)} must be a params tree: a mapping of module names (variables['params'])")
  out = []
  for path, _ in jax.tree_util.tree_flatten_with_path(params)[0]:
    names = _path_str(path).split("/")
    if names[-1] == kernel_name:
      out.append("/".join(names[:-1]))
  return tuple(out)


def _layers(params, layers: Sequence[str] | None, kernel_name: str, what: str = "layers") -> tuple[str, ...]:
  """The layer paths to measure: ``layers`` (the argument named ``what``), checked against params, or all."""
  found = layer_paths(params, kernel_name)
  if not found:
    raise ValueError(f"kernel_name={kernel_name!r}: params hold no such leaf, so no layer to measure")
  if layers is None:
    return found
  if isinstance(layers, str) or not isinstance(layers, Sequence):
    raise TypeError(f"{what}={short(layers)} must be a sequence of module paths or None")
  for path in layers:
    if path not in found:
      raise ValueError(f"{what}: {path!r} is not a layer of params (with kernel_name={kernel_name!r}); its layers "
                       f"are {list(found)}")
  if not layers or len(set(layers)) != len(layers):
    raise ValueError(f"{what}={list(layers)} must name distinct layers, at least one")
  return tuple(layers)


def _kernels(params, kernel_name: str) -> dict[str, jax.Array]:
  """Layer path -> kernel."""
  return {"/".join(_path_str(p).split("/")[:-1]): leaf for p, leaf in jax.tree_util.tree_flatten_with_path(params)[0]
          if _path_str(p).split("/")[-1] == kernel_name}


def hessian_trace(loss_fn: Callable, params, key: jax.Array, *, batch=None, tol: float = 0.05, min_probes: int = 16,
                  max_probes: int = 512, chunk: int = 16, layers: Sequence[str] | None = None,
                  kernel_name: str = "kernel") -> HessianTrace:
  """Estimates each layer's Hessian trace ``Tr(H_l)`` by Hutchinson's estimator (see the module docs).

  Args:
    loss_fn: ``loss_fn(params) -> scalar``, or ``loss_fn(params, batch)`` when ``batch`` is given; differentiable
      twice in the kernels.
    params: the params tree (``variables["params"]``).
    key: a PRNG key; probe ``i`` is drawn from ``jax.random.fold_in(key, i)``, so the estimate is a function of the
      key and the number of probes, not of ``chunk``.
    batch: the data ``loss_fn`` takes (any pytree), or None.
    tol: stop once every layer's standard error is at most ``tol`` times its estimate's magnitude.
    min_probes: probes drawn before the first check (at least 2).
    max_probes: the most probes drawn.
    chunk: probes per compiled, vmapped batch of Hessian-vector products (the check runs after each chunk).
    layers: the layer paths to measure (default: every layer, :func:`layer_paths`).
    kernel_name: the leaf name of kernels.

  Returns:
    A :class:`HessianTrace`.

  Raises:
    TypeError: a non-callable ``loss_fn``, a bad key or a non-float kernel.
    ValueError: bad probe counts or ``tol``, an unknown layer, or a loss that is not a scalar.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from lpnum.nn import sensitivity
    >>> params = {"Dense_0": {"kernel": jnp.ones((3, 2))}}
    >>> loss = lambda p: jnp.sum(2.0 * p["Dense_0"]["kernel"] ** 2)   # Hessian 4 I: trace 24
    >>> est = sensitivity.hessian_trace(loss, params, jax.random.key(0), min_probes=2)
    >>> est.trace, est.probes, est.converged
    ({'Dense_0': 24.0}, 16, True)
  """
  if not callable(loss_fn):
    raise TypeError(f"loss_fn={short(loss_fn)} must be callable: loss_fn(params) or loss_fn(params, batch)")
  key = check_key("key", key)
  tol = check_number("tol", tol, positive=True)
  min_probes = check_int("min_probes", min_probes, 2)
  max_probes = check_int("max_probes", max_probes, 2)
  if max_probes < min_probes:
    raise ValueError(f"max_probes={max_probes} must be at least min_probes={min_probes}")
  chunk = check_int("chunk", chunk, 1)
  paths = _layers(params, layers, kernel_name)
  kernels = _kernels(params, kernel_name)
  for path in paths:
    if not jnp.issubdtype(jnp.result_type(kernels[path]), jnp.floating):
      raise TypeError(f"{path}/{kernel_name} has dtype {jnp.result_type(kernels[path])}: kernels must be float")
  loss = (lambda p, _: loss_fn(p)) if batch is None else loss_fn
  out = jax.eval_shape(loss, params, batch)
  if not hasattr(out, "shape") or out.shape != () or not jnp.issubdtype(out.dtype, jnp.floating):
    raise ValueError(f"loss_fn must return a float scalar, got {short(out)}")
  leaves, treedef = jax.tree_util.tree_flatten_with_path(params)
  where = {_path_str(p): i for i, (p, _) in enumerate(leaves)}
  index = [where[f"{path}/{kernel_name}" if path else kernel_name] for path in paths]

  def probe_samples(params, batch, keys):
    def one(k):
      flat = [jnp.zeros_like(leaf) for _, leaf in leaves]
      for j, i in enumerate(index):
        flat[i] = jax.random.rademacher(jax.random.fold_in(k, j), flat[i].shape, flat[i].dtype)
      v = jax.tree_util.tree_unflatten(treedef, flat)
      hv = jax.jvp(jax.grad(lambda p: loss(p, batch)), (params,), (v,))[1]
      hv_flat = jax.tree_util.tree_leaves(hv)
      return jnp.stack([jnp.vdot(flat[i], hv_flat[i]) for i in index])

    return jax.vmap(one)(keys)

  run = jax.jit(probe_samples)
  samples = np.zeros((0, len(paths)))
  converged = False
  while len(samples) < max_probes and not converged:
    keys = jax.vmap(lambda i: jax.random.fold_in(key, i))(jnp.arange(len(samples), len(samples) + chunk))
    samples = np.concatenate([samples, np.asarray(run(params, batch, keys), np.float64)])[:max_probes]
    if len(samples) >= min_probes:
      mean, err = samples.mean(0), samples.std(0, ddof=1) / np.sqrt(len(samples))
      converged = bool(np.all(err <= tol * np.abs(mean)))
  mean, err = samples.mean(0), samples.std(0, ddof=1) / np.sqrt(len(samples))
  return HessianTrace(trace={p: float(m) for p, m in zip(paths, mean)},
                      stderr={p: float(e) for p, e in zip(paths, err)},
                      n_params={p: int(np.size(kernels[p])) for p in paths}, probes=len(samples),
                      converged=converged, tol=tol)


def _check_candidates(candidates) -> dict[str, DotConfig | None]:
  if not isinstance(candidates, Mapping) or not candidates:
    raise TypeError(f"candidates={short(candidates)} must be a non-empty mapping of labels to DotConfig (or None: "
                    "keep the layer float)")
  for label, config in candidates.items():
    if not isinstance(label, str):
      raise TypeError(f"candidates: label {label!r} must be a str")
    if config is not None and not isinstance(config, DotConfig):
      raise TypeError(f"candidates[{label!r}]={short(config)} must be a DotConfig or None")
  return dict(candidates)


def quantized_kernel(kernel, config: DotConfig | None, *, contract: int | None = None) -> jax.Array:
  """``Q_f(W)``: the kernel as :func:`lpnum.nn.ptq` quantizes it under ``config`` (its weight format, in the 2-D
  view ``(prod(shape[:contract]), prod(shape[contract:]))``), dequantized to the kernel's shape and dtype.

  Args:
    kernel: a float kernel of at least 2 dimensions.
    config: the candidate's :class:`lpnum.DotConfig` (None, or no weight format: the kernel unchanged).
    contract: how many leading axes the layer contracts (:func:`lpnum.nn.kernel_views`); default all but the last.

  Example:
    >>> import jax.numpy as jnp, lpnum
    >>> from lpnum.nn import sensitivity
    >>> sensitivity.quantized_kernel(jnp.array([[0.5, 1.0], [0.3, -1.0]]), lpnum.DotConfig.weight_only("int2"))
    Array([[ 0.5,  1. ],
           [ 0.5, -1. ]], dtype=float32)
  """
  if config is not None and not isinstance(config, DotConfig):
    raise TypeError(f"config={short(config)} must be a DotConfig or None")
  w = as_float_array(kernel, "kernel")
  if w.ndim < 2:
    raise ValueError(f"kernel has shape {w.shape}: it must have at least 2 dimensions")
  contract = w.ndim - 1 if contract is None else check_int("contract", contract, 1, w.ndim - 1)
  fmt = weight_format(config)
  if fmt is None:
    return w
  k = int(np.prod(w.shape[:contract]))
  return fake_quantize(w.reshape(k, -1), fmt, pad=True, scale=_weight_scale(config)).reshape(w.shape)


def sensitivity(params, trace: HessianTrace | Mapping[str, float], candidates: Mapping[str, DotConfig | None], *,
                views: Mapping[str, int] | None = None, kernel_name: str = "kernel") -> dict[str, dict[str, float]]:
  """HAWQ-V2's ``Omega_l(f) = Tr(H_l) / n_l * ||Q_f(W_l) - W_l||_2^2`` for every layer and candidate.

  Args:
    params: the float params tree.
    trace: a :class:`HessianTrace`, or layer path -> ``Tr(H_l)`` (pass ``n_l`` to get the bare perturbation
      ``||Q_f(W_l) - W_l||^2``); its layers are the ones measured.
    candidates: label -> :class:`lpnum.DotConfig` whose weight format quantizes the kernel as :func:`lpnum.nn.ptq`
      does (:func:`quantized_kernel`; ``None``: the layer stays float, ``Omega = 0``).
    views: module path -> leading kernel axes the layer contracts, as for :func:`lpnum.nn.ptq`
      (:func:`lpnum.nn.kernel_views`); default: all but the last.
    kernel_name: the leaf name of kernels.

  Returns:
    layer path -> candidate label -> ``Omega_l(f)`` (the squared norm summed in float64).

  Example:
    >>> import jax, jax.numpy as jnp, lpnum
    >>> from lpnum.nn import sensitivity
    >>> params = {"Dense_0": {"kernel": jnp.array([[0.5, 1.0], [0.3, -1.0]])}}
    >>> omega = sensitivity.sensitivity(params, {"Dense_0": 8.0}, {"int2": lpnum.DotConfig.weight_only("int2")})
    >>> round(omega["Dense_0"]["int2"], 6)   # 8 / 4 * (0.5 - 0.3)^2: column 0's step is 0.5, column 1's exact
    0.08
  """
  candidates = _check_candidates(candidates)
  traces = trace.trace if isinstance(trace, HessianTrace) else trace
  if not isinstance(traces, Mapping) or not traces:
    raise TypeError(f"trace={short(trace)} must be a HessianTrace or a non-empty mapping of layer paths to traces")
  if views is not None and not isinstance(views, Mapping):
    raise TypeError(f"views={short(views)} must be a mapping of module paths to ints (lpnum.nn.kernel_views)")
  paths = _layers(params, list(traces), kernel_name, "trace")
  traces = {p: check_number(f"trace[{p!r}]", traces[p]) for p in paths}
  kernels = _kernels(params, kernel_name)
  out: dict[str, dict[str, float]] = {p: {} for p in paths}
  for p in paths:
    w = np.asarray(kernels[p], np.float64)
    contract = None if views is None else views.get(p)
    if contract is not None:
      contract = check_int(f"views[{p!r}]", contract, 1, w.ndim - 1)
    for label, config in candidates.items():
      try:
        q = quantized_kernel(kernels[p], config, contract=contract)
      except ValueError as e:
        raise ValueError(f"candidates[{label!r}] at {p}/{kernel_name}: {e}") from None
      out[p][label] = traces[p] / w.size * float(np.sum((np.asarray(q, np.float64) - w) ** 2))
  return out
