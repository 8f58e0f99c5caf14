"""One format per layer, chosen exactly by an integer linear program (HAWQ-V3's ILP over FLIQS's format space).

HAWQ-V3 (Yao et al., ICML 2021) picks each layer's bit width by an integer linear program: minimize the summed
HAWQ-V2 sensitivities (:func:`lpnum.nn.sensitivity.sensitivity`) subject to budgets on model size and on
bit-operations. FLIQS (Dotzel et al., 2023) searches one format per layer among integer *and* floating-point
formats. Here the candidates are any :class:`lpnum.DotConfig` values (integer per channel or per group, FP8, FP4,
MX, NVFP4, float), and the program is

  ``minimize   sum_{l,f} Omega_l(f) x_{l,f}``
  ``subject to sum_f x_{l,f} = 1 for every layer l,   x_{l,f} in {0, 1}``
  ``           fixed_bytes + sum_{l,f} bytes_l(f) x_{l,f} <= max_bytes``
  ``           sum_{l,f} MACs_l * wbits(f) * abits(f) x_{l,f} <= max_bops   (optional)``

solved by ``scipy.optimize.milp`` (HiGHS branch and bound, relative gap 0). ``bytes_l(f)`` are the bytes
:func:`lpnum.nn.ptq` stores the kernel in (codes, scales and layout padding, measured on an abstract trace of
``ptq``: ``jax.eval_shape``, nothing quantized), ``fixed_bytes`` every other param of the tree (biases, norms,
embeddings: :func:`lpnum.nn.params_nbytes` counts the same), so the budget is on the whole PTQ'd model.
HAWQ-V3's bit-operations of a layer are its multiply-accumulates for one call times the weight and activation
bits (the element formats' bits; 32 for a float operand): ``wbits * abits * MACs`` (:func:`layer_macs`).

The result is an :class:`Allocation` whose ``rules`` (one :class:`lpnum.nn.Rule` per layer, matching its path
exactly) go to :func:`lpnum.nn.ptq` and :func:`lpnum.nn.quantize_model` on any Flax model.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Mapping, Sequence

import flax.linen as nn
import jax
import numpy as np
from scipy import optimize

from lpnum.nn.ptq import params_nbytes, ptq
from lpnum.nn.rule import Rule
from lpnum.nn.rules import _LINEN_CONV, _LINEN_DOT, _contracted
from lpnum.nn.sensitivity import _check_candidates, _kernels, _layers
from lpnum.qdot import DotConfig
from lpnum.validate import check_int, check_number, short

__all__ = ["Allocation", "allocate", "solve", "layer_nbytes", "layer_macs", "bits"]

#: The bits of a float operand in the bit-operation count.
FLOAT_BITS = 32


@dataclasses.dataclass(frozen=True)
class Allocation:
  """An optimal format per layer (:func:`allocate`).

  Attributes:
    choice: layer path -> the chosen candidate's label.
    rules: one :class:`lpnum.nn.Rule` per layer (its path, escaped, as the pattern; the chosen config), for
      :func:`lpnum.nn.ptq` and :func:`lpnum.nn.quantize_model`.
    objective: the summed sensitivity of the choice.
    nbytes: the PTQ'd model's bytes (the chosen kernels as :func:`lpnum.nn.ptq` stores them, every other param
      as it is).
    bops: the searched layers' bit-operations (None without ``macs``).
    layer_nbytes: layer path -> its kernel's bytes under the choice.
    layer_bops: layer path -> its bit-operations (empty without ``macs``).
  """

  choice: dict[str, str]
  rules: tuple[Rule, ...]
  objective: float
  nbytes: int
  bops: int | None
  layer_nbytes: dict[str, int]
  layer_bops: dict[str, int]

  def summary(self) -> str:
    """A table: each layer's format, kernel bytes and bit-operations, then the totals and the objective."""
    width = max(len(p) for p in self.choice)
    lines = [f"{'layer':<{width}}  {'format':<16} {'bytes':>10} {'BOPs':>14}"]
    for path, label in self.choice.items():
      bops = self.layer_bops.get(path)
      lines.append(f"{path:<{width}}  {label:<16} {self.layer_nbytes[path]:>10} "
                   f"{'-' if bops is None else bops:>14}")
    lines.append(f"model bytes {self.nbytes}, BOPs {'-' if self.bops is None else self.bops}, "
                 f"objective {self.objective:.6g}")
    return "\n".join(lines)


def bits(config: DotConfig | None) -> tuple[int, int]:
  """``(weight bits, activation bits)`` of a candidate: its element formats' bits, :data:`FLOAT_BITS` for a float
  operand.

  Example:
    >>> import lpnum
    >>> from lpnum.nn import allocation
    >>> allocation.bits(lpnum.DotConfig.weight_only("mxfp4_e2m1")), allocation.bits(lpnum.DotConfig.w8a8())
    ((4, 32), (8, 8))
  """
  if config is not None and not isinstance(config, DotConfig):
    raise TypeError(f"config={short(config)} must be a DotConfig or None")
  out = []
  for oq in (None, None) if config is None else (config.rhs, config.lhs):
    if oq is None:
      out.append(FLOAT_BITS)
    elif oq.element is None:
      raise ValueError(f"config={short(config)}: an operand without an element format ({oq.estimator!r}) has no "
                       "bit width to count")
    else:
      out.append(oq.element.bits)
  return out[0], out[1]


def layer_nbytes(params, candidates: Mapping[str, DotConfig | None], *, layers: Sequence[str] | None = None,
                 views: Mapping[str, int] | None = None, kernel_name: str = "kernel") -> dict[str, dict[str, int]]:
  """The bytes :func:`lpnum.nn.ptq` stores each layer's kernel in, per candidate (codes, scales and layout
  padding; a float candidate (None): the kernel as it is). Measured on ``jax.eval_shape`` of ``ptq``.

  Args:
    params: the float params tree.
    candidates: label -> :class:`lpnum.DotConfig` (or None: float).
    layers: the layer paths (default: every layer of ``params``).
    views: as for :func:`lpnum.nn.ptq`.
    kernel_name: the leaf name of kernels.

  Returns:
    layer path -> candidate label -> bytes.

  Example:
    >>> import jax.numpy as jnp, lpnum
    >>> from lpnum.nn import allocation
    >>> params = {"Dense_0": {"kernel": jnp.zeros((64, 16))}}
    >>> allocation.layer_nbytes(params, {"int4": lpnum.DotConfig.weight_only("int4"), "mxfp4":
    ...                                  lpnum.DotConfig.weight_only("mxfp4_e2m1"), "float32": None})
    {'Dense_0': {'int4': 576, 'mxfp4': 544, 'float32': 4096}}
  """
  candidates = _check_candidates(candidates)
  paths = _layers(params, layers, kernel_name)
  kernels = _kernels(params, kernel_name)
  sub = {p: {kernel_name: jax.ShapeDtypeStruct(np.shape(kernels[p]), kernels[p].dtype)} for p in paths}
  out: dict[str, dict[str, int]] = {p: {} for p in paths}
  for label, config in candidates.items():
    if config is None:
      packed = sub
    else:
      try:
        packed = jax.eval_shape(lambda t, c=config: ptq(t, [Rule(".*", c)], views=views, kernel_name=kernel_name),
                                sub)
      except ValueError as e:
        raise ValueError(f"candidates[{label!r}]: {e}") from None
    for p in paths:
      out[p][label] = params_nbytes(packed[p])
  return out


def layer_macs(model: nn.Module, *args, **kwargs) -> dict[str, int]:
  """Multiply-accumulates of each quantizable layer (linen ``Dense``, ``DenseGeneral``, ``Conv``) in one call
  ``model.init(key, *args, **kwargs)``, traced abstractly: output elements times the products per output (the
  kernel's contracted size). A layer called twice counts twice.

  Example:
    >>> import jax.numpy as jnp
    >>> from lpnum.nn import allocation
    >>> from lpnum.zoo.models import MLP
    >>> allocation.layer_macs(MLP(features=(32,)), jnp.zeros((1, 8, 8, 1)))
    {'Dense_0': 2048, 'Dense_1': 320}
  """
  if not isinstance(model, nn.Module):
    raise TypeError(f"model must be a flax.linen Module (for nnx models pass macs to allocate yourself), got "
                    f"{type(model).__name__}")
  macs: dict[str, int] = {}

  def record(next_fun, args_, kwargs_, context):
    out = next_fun(*args_, **kwargs_)
    module = context.module
    if context.method_name == "__call__" and isinstance(module, _LINEN_DOT + _LINEN_CONV):
      kernel = module.scope.get_variable("params", "kernel")
      k = math.prod(np.shape(kernel)[:_contracted(module)])
      path = "/".join(module.scope.path)
      macs[path] = macs.get(path, 0) + int(np.size(out)) * k
    return out

  def init():
    with nn.intercept_methods(record):
      return model.init(jax.random.key(0), *args, **kwargs)

  jax.eval_shape(init)
  return macs


def _as_matrix(name: str, value, shape: tuple[int, ...] | None = None) -> np.ndarray:
  try:
    a = np.asarray(value, np.float64)
  except (TypeError, ValueError):
    raise TypeError(f"{name} must be a (layers, candidates) array of numbers, got {short(value)}") from None
  if a.ndim != 2 or 0 in a.shape:
    raise ValueError(f"{name} of shape {a.shape} must be a non-empty (layers, candidates) array")
  if shape is not None and a.shape != shape:
    raise ValueError(f"{name} of shape {a.shape} must have the objective's shape {shape}")
  if not np.all(np.isfinite(a)):
    raise ValueError(f"{name} must be finite")
  return a


def solve(objective, constraints: Mapping[str, tuple[object, float]] | None = None) -> tuple[np.ndarray, float]:
  """Chooses one candidate per layer minimizing the summed ``objective`` under budget constraints, exactly, as an
  integer linear program (``scipy.optimize.milp``).

  Args:
    objective: ``(layers, candidates)`` costs.
    constraints: name -> ``(costs, budget)``, ``costs`` of the objective's shape: the chosen costs must sum to at
      most ``budget``.

  Returns:
    ``(choice, value)``: the chosen candidate index of each layer and the summed objective of the choice.

  Raises:
    ValueError: an infeasible program (the message names the budgets and the least each needs), bad shapes or
      non-finite values.

  Example:
    >>> import numpy as np
    >>> from lpnum.nn import allocation
    >>> sens = np.array([[0.0, 5.0], [0.0, 1.0]])     # two layers, candidates (8-bit, 4-bit)
    >>> size = np.array([[8, 4], [8, 4]])
    >>> allocation.solve(sens, {"max_bytes": (size, 12)})   # room for one 4-bit layer: the less sensitive
    (array([0, 1]), 1.0)
  """
  c = _as_matrix("objective", objective)
  constraints = {} if constraints is None else constraints
  if not isinstance(constraints, Mapping):
    raise TypeError(f"constraints={short(constraints)} must be a mapping of names to (costs, budget) pairs")
  layers, cands = c.shape
  rows, budgets = [], []
  for name, pair in constraints.items():
    if not isinstance(pair, tuple | list) or len(pair) != 2:
      raise TypeError(f"constraints[{name!r}]={short(pair)} must be a (costs, budget) pair")
    costs = _as_matrix(f"constraints[{name!r}] costs", pair[0], c.shape)
    budget = check_number(name, pair[1])
    least = float(costs.min(axis=1).sum())
    if least > budget:
      raise ValueError(f"{name}={budget:g} is infeasible: the least any choice needs is {least:g} (every layer at "
                       "its cheapest candidate)")
    rows.append(optimize.LinearConstraint(costs.reshape(1, -1), -np.inf, budget))
    budgets.append(name)
  one_each = np.kron(np.eye(layers), np.ones((1, cands)))
  rows.append(optimize.LinearConstraint(one_each, 1, 1))
  # Shifting each layer's costs by their minimum and scaling by the largest spread changes no optimum (one
  # candidate per layer) and keeps HiGHS's absolute tolerances relative to the problem's own scale.
  shifted = c - c.min(axis=1, keepdims=True)
  scale = shifted.max()
  normalized = shifted / scale if scale > 0 else shifted
  result = optimize.milp(normalized.ravel(), integrality=np.ones(c.size), bounds=optimize.Bounds(0, 1),
                         constraints=rows, options={"mip_rel_gap": 0.0})
  if result.status == 2:
    raise ValueError(f"the budgets {' and '.join(budgets)} cannot be met together (each alone can)")
  if result.status != 0:
    raise RuntimeError(f"scipy.optimize.milp did not solve the program: {result.message}")
  choice = np.argmax(result.x.reshape(layers, cands), axis=1)
  return choice, float(c[np.arange(layers), choice].sum())


def allocate(params, omega: Mapping[str, Mapping[str, float]], candidates: Mapping[str, DotConfig | None], *,
             max_bytes: float, max_bops: float | None = None, macs: Mapping[str, int] | None = None,
             views: Mapping[str, int] | None = None, kernel_name: str = "kernel") -> Allocation:
  """The format of each layer that minimizes the summed sensitivity under a model-size budget (and optionally a
  bit-operation budget), solved exactly (see the module docs).

  Args:
    params: the float params tree.
    omega: layer path -> candidate label -> sensitivity (:func:`lpnum.nn.sensitivity.sensitivity`); its layers
      are the ones searched, every other param counts as fixed bytes.
    candidates: label -> :class:`lpnum.DotConfig` (or None: keep float), the labels of ``omega``.
    max_bytes: the most bytes the PTQ'd params tree may hold (all of it: searched kernels and fixed params).
    max_bops: the most bit-operations of the searched layers (needs ``macs``).
    macs: layer path -> multiply-accumulates per call (:func:`layer_macs`); gives the allocation's BOPs.
    views: as for :func:`lpnum.nn.ptq`.
    kernel_name: the leaf name of kernels.

  Returns:
    An :class:`Allocation`.

  Raises:
    ValueError: an infeasible budget (naming it and the least it needs), labels of ``omega`` that are not the
      candidates', ``max_bops`` without ``macs``, or a layer ``macs`` lacks.

  Example:
    >>> import jax, jax.numpy as jnp, lpnum
    >>> from lpnum.nn import allocation
    >>> params = {"a": {"kernel": jnp.ones((64, 32))}, "b": {"kernel": jnp.ones((64, 32))}}
    >>> cands = {"int8": lpnum.DotConfig.weight_only("int8"), "int4": lpnum.DotConfig.weight_only("int4")}
    >>> omega = {"a": {"int8": 0.0, "int4": 3.0}, "b": {"int8": 0.0, "int4": 1.0}}
    >>> alloc = allocation.allocate(params, omega, cands, max_bytes=3500)
    >>> alloc.choice, alloc.nbytes, [r.pattern for r in alloc.rules]
    ({'a': 'int8', 'b': 'int4'}, 3328, ['a', 'b'])
  """
  candidates = _check_candidates(candidates)
  if not isinstance(omega, Mapping) or not omega:
    raise TypeError(f"omega={short(omega)} must be a non-empty mapping of layer paths to per-candidate "
                    "sensitivities")
  paths = _layers(params, list(omega), kernel_name, "omega")
  labels = list(candidates)
  for p in paths:
    if not isinstance(omega[p], Mapping) or set(omega[p]) != set(labels):
      raise ValueError(f"omega[{p!r}] must give every candidate's sensitivity: {labels}, got "
                       f"{short(list(omega[p]) if isinstance(omega[p], Mapping) else omega[p])}")
    for f in labels:
      check_number(f"omega[{p!r}][{f!r}]", omega[p][f])
  max_bytes = check_number("max_bytes", max_bytes)
  if max_bops is not None:
    max_bops = check_number("max_bops", max_bops)
    if macs is None:
      raise ValueError("max_bops needs macs (layer path -> multiply-accumulates, from allocation.layer_macs)")
  if macs is not None:
    if not isinstance(macs, Mapping):
      raise TypeError(f"macs={short(macs)} must be a mapping of layer paths to multiply-accumulates")
    missing = [p for p in paths if p not in macs]
    if missing:
      raise ValueError(f"macs has no count for layers {missing}")
    macs = {p: check_int(f"macs[{p!r}]", macs[p], 0) for p in paths}
  nbytes = layer_nbytes(params, candidates, layers=paths, views=views, kernel_name=kernel_name)
  kernels = _kernels(params, kernel_name)
  fixed = params_nbytes(params) - sum(params_nbytes(kernels[p]) for p in paths)
  size = np.array([[nbytes[p][f] for f in labels] for p in paths], np.float64)
  constraints: dict[str, tuple[object, float]] = {"max_bytes": (size, max_bytes - fixed)}
  bops = None
  if macs is not None:
    widths = [bits(candidates[f]) for f in labels]
    bops = np.array([[int(macs[p]) * w * a for w, a in widths] for p in paths], np.float64)
    if max_bops is not None:
      constraints["max_bops"] = (bops, max_bops)
  sens = np.array([[omega[p][f] for f in labels] for p in paths], np.float64)
  least = int(size.min(axis=1).sum()) + fixed
  if least > max_bytes:
    raise ValueError(f"max_bytes={max_bytes:g} is infeasible: the smallest model has {least} bytes ({fixed} of them "
                     "outside the searched kernels)")
  choice, value = solve(sens, constraints)
  picked = {p: labels[i] for p, i in zip(paths, choice)}
  layer_bytes = {p: nbytes[p][picked[p]] for p in paths}
  layer_bops = {} if bops is None else {p: int(bops[i, choice[i]]) for i, p in enumerate(paths)}
  return Allocation(choice=picked, rules=tuple(Rule(re.escape(p), candidates[picked[p]]) for p in paths),
                    objective=value, nbytes=fixed + sum(layer_bytes.values()),
                    bops=None if bops is None else sum(layer_bops.values()), layer_nbytes=layer_bytes,
                    layer_bops=layer_bops)
