"""Post-training quantization of a params tree: float kernels become packed quantized kernels.

:func:`ptq` is a pure function of the params: it quantizes the matching kernels one leaf at a time (never the
model, never a second float copy of the tree; ``donate=True`` frees each float kernel as soon as it is packed)
and returns a tree whose kernels are :class:`QuantizedKernel` boxes. The boxes hold a 2-D
:class:`lpnum.kernels.PackedWeights` (the kernel layout, for Dense-shaped kernels whose padding costs under 1%
of the ideal size) or a :class:`lpnum.QArray` (packed along the last axis: conv kernels and small layers), so the
tree, and a checkpoint of it, holds the packed codes and scales only.

Inference runs the stock model on the boxed tree through :func:`lpnum.nn.quantize_model` with the same rules:
Dense layers multiply through :func:`lpnum.kernels.matmul` (dequantization inside the kernel, tile by tile),
conv layers dequantize their (small) kernels. A packed kernel applied under a rule whose weight format differs
from the one it was packed in is an error naming the layer and both formats (:func:`check_rule`).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax.core import meta

from lpnum import description
from lpnum.estimators import STE
from lpnum.kernels.grouped_matmul import layout as _grouped
from lpnum.kernels.packed_matmul import layout as _layout
from lpnum.kernels import matmul as _kernel_matmul
from lpnum.nn.rule import as_rules, match
from lpnum.qarray import QArray
from lpnum.qdot import (DotConfig, Engine, OperandState, Scaling, dot_general, normalize_dimension_numbers,
                        quantize_operand)
from lpnum.rounding import Rounding
from lpnum.scaled import ScaledFormat, dequantize, quantize_scaled
from lpnum.scaled.xla_cpu import per_block
from lpnum.validate import check_flag, short

__all__ = ["QuantizedKernel", "ptq", "is_packed", "dequantize_kernel", "params_nbytes", "weight_format", "check_rule",
           "EXPERTS"]

#: The ``views`` entry of an expert bank's ``(E, K, N)`` kernel (:class:`lpnum.nn.grouped.GroupedDense`): each
#: expert is quantized on its own in its ``(K, N)`` view and packed as
#: :class:`lpnum.kernels.grouped_matmul.GroupedWeights` (contract 1: axis 1, K, of each expert).
EXPERTS = "experts"


class PackedKernel:
  """What a layer sees when it reads a :class:`QuantizedKernel`: the packed value with the float kernel's shape
  and dtype (so Flax's shape checks pass), consumed by lpnum's dot_general (it multiplies itself:
  :meth:`packed_dot`) and conv."""

  def __init__(self, value: QArray | _layout.PackedWeights, shape: tuple[int, ...], dtype, contract: int) -> None:
    self.value, self.shape, self.dtype, self.contract = value, tuple(shape), np.dtype(dtype), contract

  @property
  def ndim(self) -> int:
    return len(self.shape)

  @property
  def matrix_shape(self) -> tuple[int, int]:
    """The 2-D view the kernel was quantized in: ``(K, N)``, K the product of the ``contract`` leading axes."""
    return math.prod(self.shape[:self.contract]), math.prod(self.shape[self.contract:])

  def packed_dot(self, lhs: jax.Array, dimension_numbers, config: DotConfig, state: OperandState,
                 preferred_element_type) -> jax.Array:
    """``lhs @ W`` for this packed ``W`` (the :class:`lpnum.qdot.PackedOperand` protocol): Dense-shaped
    contractions (lhs's trailing axes with W's leading ones, no batch axes) run :func:`lpnum.kernels.matmul` on the
    packed 2-D view; others multiply the dequantized kernel."""
    shape, c = self.shape, self.contract
    lc, rc, lb, rb = normalize_dimension_numbers(dimension_numbers, lhs.ndim, len(shape))
    if rc != tuple(range(c)):
      raise ValueError(f"the layer contracts kernel axes {rc}, but the kernel of shape {shape} was quantized by ptq "
                       f"with its first {c} axes as K: pass ptq(..., views=lpnum.nn.kernel_views(model, x))")
    dense = lc == tuple(range(lhs.ndim - c, lhs.ndim)) and not lb
    out_dtype = preferred_element_type or lhs.dtype
    if not dense:
      if config.engine is Engine.KERNEL:
        raise ValueError(f"engine='kernel' runs Dense-shaped contractions; got dimension_numbers="
                         f"{dimension_numbers!r}")
      w = dequantize_kernel(self)
      return dot_general(lhs, w, dimension_numbers, dataclasses.replace(config, rhs=None, engine=Engine.FAKE,
                                                                        dlhs=None, drhs=None, accumulator=None),
                         state=state, preferred_element_type=out_dtype)
    value = self.value
    k, lead = self.matrix_shape[0], lhs.shape[:lhs.ndim - c]
    lhs32 = lhs.astype(jnp.float32).reshape(-1, k)
    x_format = None
    oq = config.lhs
    if oq is not None:
      if (oq.scaling is Scaling.DYNAMIC and isinstance(oq.estimator, STE)
          and oq.rounding is Rounding.NEAREST_EVEN and isinstance(oq.lhs_format, ScaledFormat)):
        x_format = oq.lhs_format
      else:
        lhs32 = quantize_operand(lhs32, oq, "lhs", scale=state.lhs_scale, param=state.lhs_param)
    grad = None
    if config.dlhs is not None and config.dlhs.grad is not None:
      grad = config.dlhs.grad.lhs_format
    if isinstance(value, QArray) and x_format is None and grad is None and config.engine is not Engine.KERNEL:
      # Small layers (kept as QArrays because the kernel layout's padding would cost more than 1%): dequantize once
      # and let XLA multiply, rather than re-laying out the weights on every call.
      y = jnp.dot(lhs32, dequantize_kernel(value), preferred_element_type=jnp.float32)
    else:
      y = _kernel_matmul(lhs32, value, x_format=x_format, grad_format=grad)
    return y.reshape(*lead, *shape[c:]).astype(out_dtype)



@jax.tree_util.register_pytree_with_keys_class
class QuantizedKernel(meta.AxisMetadata):
  """A params-tree leaf holding a packed kernel (a Flax AxisMetadata box; its leaves are codes and scales).

  Attributes:
    value: the :class:`lpnum.kernels.PackedWeights` or :class:`lpnum.QArray` of the 2-D view.
    shape: the float kernel's shape.
    dtype: the float kernel's dtype.
    contract: how many leading axes of the kernel the layer contracts: the 2-D view is
      ``(prod(shape[:contract]), prod(shape[contract:]))`` (an expert bank's value, GroupedWeights or a stacked
      QArray, holds ``(K, N)`` views of its experts, and ``contract`` is 1).
    checkpoint_tag: the empty pytree child whose key carries the description's fingerprint (as
      :class:`lpnum.QArray`'s).
  """

  def __init__(self, value, shape, dtype, contract: int, checkpoint_tag=None) -> None:
    self.value, self.shape, self.dtype, self.contract = value, tuple(shape), np.dtype(dtype), int(contract)
    self.checkpoint_tag = checkpoint_tag

  def tree_flatten(self):
    return (self.value, self.checkpoint_tag), (self.shape, self.dtype.name, self.contract)

  def tree_flatten_with_keys(self):
    children, aux = self.tree_flatten()
    return [(jax.tree_util.GetAttrKey("value"), children[0]), (description.tag(self.describe()), children[1])], aux

  @classmethod
  def tree_unflatten(cls, aux, children):
    return cls(children[0], *aux, children[1])

  def describe(self) -> dict:
    """The box's own metadata as JSON-able data (its value describes itself): the float kernel's shape and
    dtype, the contracted axes and the value's type (see :mod:`lpnum.description`)."""
    return {"type": "QuantizedKernel", "shape": list(self.shape), "dtype": self.dtype.name,
            "contract": self.contract, "value_type": type(self.value).__name__}

  def unbox(self) -> PackedKernel:
    return PackedKernel(self.value, self.shape, self.dtype, self.contract)

  def __getitem__(self, index) -> PackedKernel:
    """``kernel[...]``: how nnx layers read their kernel."""
    if index is not Ellipsis:
      raise TypeError(f"a QuantizedKernel is read whole (kernel[...]), not kernel[{index!r}]")
    return self.unbox()

  def replace_boxed(self, val) -> "QuantizedKernel":
    return QuantizedKernel(val, self.shape, self.dtype, self.contract)

  def add_axis(self, index, params) -> "QuantizedKernel":
    raise ValueError("a QuantizedKernel cannot be vmapped or scanned over (nn.vmap / nn.scan)")

  remove_axis = add_axis

  @property
  def nbytes(self) -> int:
    return sum(int(np.prod(a.shape)) * a.dtype.itemsize for a in jax.tree_util.tree_leaves(self.value))

  def __repr__(self) -> str:
    fmt = self.value.fmt
    return f"QuantizedKernel({getattr(fmt, 'name', fmt)}, shape={self.shape}, {type(self.value).__name__})"


def is_packed(x) -> bool:
  """Whether ``x`` is a packed kernel as a layer sees it (or a raw QArray / PackedWeights)."""
  return isinstance(x, PackedKernel | QArray | _layout.PackedWeights | _grouped.GroupedWeights)


def dequantize_kernel(x) -> jax.Array:
  """The float32 kernel, with its original shape, from a packed kernel (a raw QArray / PackedWeights: its 2-D
  view)."""
  value, shape = (x.value, x.shape) if isinstance(x, PackedKernel) else (x, None)
  w = _dequantize_packed(value)
  return w if shape is None else w.reshape(shape)


@jax.jit  # eager calls reuse one compiled program per value structure (the conditional would recompile each time)
def _dequantize_packed(value) -> jax.Array:
  # Computed in a conditional of two equal branches, so that it is materialized once: XLA CPU would otherwise fuse
  # the dequantization into a convolution and redo it for every output position.
  return per_block(_dequantize_value, jax.tree_util.tree_leaves(value)[0].size, value)


def _dequantize_value(value) -> jax.Array:
  if isinstance(value, _layout.PackedWeights):
    k, n = value.shape
    return _layout.dequantize(value)[:k, :n]
  if isinstance(value, _grouped.GroupedWeights):
    _, k, n = value.shape
    return _grouped.dequantize(value)[:, :k, :n]
  if _grouped.is_stacked(value):
    return jax.vmap(lambda q: dequantize(q, jnp.float32))(value)
  return dequantize(value, jnp.float32)


def weight_format(config: DotConfig | None) -> ScaledFormat | None:
  """The format :func:`ptq` packs a kernel in under ``config`` (None: the kernel stays float). A plain element
  format (``scaling="none"``, a direct cast) is packed per tensor with a float32 scale of exactly 1
  (:func:`_weight_scale`), which gives the cast's values bit for bit.

  Raises:
    ValueError: a direct cast to a format whose scaled form lpnum does not build (bfloat16, whose smallest
      subnormal is below 2^-100), naming the format.
  """
  if config is None or config.rhs is None:
    return None
  fmt = config.rhs.rhs_format
  if fmt is None:
    return None
  if isinstance(fmt, ScaledFormat):
    return fmt
  try:
    return ScaledFormat(fmt, scale_format="float32", name=fmt.name)
  except ValueError as e:
    raise ValueError(f"ptq cannot pack weights cast directly to {fmt.name} ({e}); leave those layers float in "
                     "the ptq rules (config=None) and keep the cast rule for the fake-quantized model") from None


def _weight_scale(config: DotConfig | None) -> float | None:
  """The static scale :func:`ptq` packs a kernel with under ``config``: 1 for a direct cast (``scaling="none"``),
  None (the format's own scaling, e.g. abs-max) otherwise."""
  return 1.0 if config is not None and config.rhs is not None and config.rhs.scaling is Scaling.NONE else None


def check_rule(path: str, kernel, config: DotConfig | None) -> None:
  """Raises ValueError if the packed ``kernel`` of layer ``path`` was packed in another format than ``config``
  packs weights in (names and calibration aside): params packed under one rule must be applied under it.

  Args:
    path: the layer's module path.
    kernel: a :class:`QuantizedKernel` or what a layer reads from one (other values are not checked).
    config: the config of the rule that matches ``path`` (None: no rule, or a float rule).
  """
  if not isinstance(kernel, QuantizedKernel | PackedKernel):
    return
  packed = kernel.value.fmt.describe()
  try:
    fmt = weight_format(config)
  except ValueError:  # a direct cast that ptq cannot pack: not what these params were packed in
    raise ValueError(f"params at {path}/kernel were packed by lpnum.nn.ptq as {packed['name']}, but the rule for "
                     f"layer {path!r} casts weights directly to {config.rhs.rhs_format.name}: apply with the rules "
                     "the params were quantized with") from None
  if fmt is None:
    raise ValueError(f"params at {path}/kernel hold a kernel packed by lpnum.nn.ptq as {packed['name']}, but no rule "
                     f"quantizes the weights of layer {path!r}: apply with the rules the params were quantized with")
  diff = description.differences(description.essential(packed), description.essential(fmt.describe()))
  if diff:
    raise ValueError(f"params at {path}/kernel were packed by lpnum.nn.ptq as {packed['name']}, but the rule for layer "
                     f"{path!r} quantizes weights as {fmt.name} (they differ in {', '.join(diff)}): apply with the "
                     "rules the params were quantized with, or run ptq again under these rules")


def _path_str(path) -> str:
  return "/".join(str(getattr(k, "key", getattr(k, "name", k))) for k in path)


def _kernel_layout_if_cheap(q: QArray) -> _layout.PackedWeights | None:
  """``q`` in the kernel layout if its padding (N to 128, K to a tile) costs under 1% of the packed size, else
  None."""
  if len(q.shape) != 2:
    return None
  try:
    packed = _layout.pack_weights(q)
  except (ValueError, TypeError):
    return None
  return packed if sum(a.nbytes for a in jax.tree_util.tree_leaves(packed)) <= 1.01 * q.nbytes else None


def ptq(params, rules: Sequence, *, views: Mapping[str, int] | None = None, kernel_name: str = "kernel",
        layout: str = "auto", donate: bool = False, on_leaf: Callable[[str], None] | None = None):
  """Quantizes the kernels of a params tree by the rules' weight formats (their ``config.rhs.rhs_format``).

  Scaled formats get the scales their format computes (abs-max or MSE, per channel or block); a direct cast
  (``OperandQuant(fmt, scaling="none")``) gets a static scale of exactly 1, so the packed weights are the cast's
  values bit for bit, as the fake-quantized layer computes them (bfloat16 casts cannot be packed: an error).

  A kernel at ``a/b/kernel`` belongs to the module path ``a/b``; the first rule whose pattern matches the path
  decides (a rule with ``config=None`` leaves it float). A kernel is quantized in the 2-D view its layer
  multiplies by, ``(K, N)``: its leading ``views[path]`` axes form K (default: all but the last, as flax Dense and
  Conv contract), so ``channel`` granularity gives a scale per output feature and blocks run along K, exactly as
  the fake-quantized layer sees it. Kernels that contract another number of axes (``DenseGeneral`` with several
  output axes, attention projections) need ``views`` from :func:`lpnum.nn.kernel_views`; a layer that contracts
  other axes than its kernel was quantized for is an error at apply time.

  Args:
    params: the float params tree (``variables["params"]``).
    rules: :class:`lpnum.nn.Rule` values (or ``(pattern, config)`` pairs).
    views: module path -> number of leading kernel axes the layer contracts, or :data:`EXPERTS` for an expert
      bank's ``(E, K, N)`` kernel, quantized per expert along K (:func:`lpnum.nn.kernel_views` gives both).
    kernel_name: the leaf name of kernels.
    layout: ``"auto"`` (kernel layout where its padding costs under 1%, else QArray), ``"kernel"`` or
      ``"qarray"``.
    donate: delete each float kernel once it is packed (the caller's float tree becomes unusable), so that peak
      memory stays at the float tree plus one packed kernel.
    on_leaf: called with each quantized path after it is packed (progress, memory probes).

  Returns:
    The params tree with :class:`QuantizedKernel` leaves.

  Raises:
    ValueError: a rule that matches no kernel, an unknown layout, or a matched kernel that cannot be quantized
      (the message names the path).

  Example:
    >>> import jax, jax.numpy as jnp, flax.linen as nn, lpnum
    >>> from lpnum import nn as lnn
    >>> params = nn.Dense(256).init(jax.random.key(0), jnp.ones((1, 512)))["params"]
    >>> q = lnn.ptq(params, [lnn.Rule(".*", lpnum.DotConfig.weight_only("int4"))])
    >>> q["kernel"], lnn.params_nbytes(q) / lnn.params_nbytes(params)
    (QuantizedKernel(int4/per_channel(1,)/float32, shape=(512, 256), PackedWeights), 0.1286549707602339)
  """
  if layout not in ("auto", "kernel", "qarray"):
    raise ValueError(f"layout={short(layout)}; expected 'auto', 'kernel' or 'qarray'")
  if not isinstance(kernel_name, str) or not kernel_name:
    raise TypeError(f"kernel_name={short(kernel_name)} must be a non-empty str (the leaf name of kernels)")
  if views is not None and not isinstance(views, Mapping):
    raise TypeError(f"views={short(views)} must be a mapping of module paths to ints (lpnum.nn.kernel_views)")
  if on_leaf is not None and not callable(on_leaf):
    raise TypeError(f"on_leaf={short(on_leaf)} must be callable or None")
  check_flag("donate", donate)
  rules = as_rules(rules)
  used = set()

  def convert(path, leaf):
    names = _path_str(path).split("/")
    if names[-1] != kernel_name or isinstance(leaf, QuantizedKernel):
      return leaf
    where = "/".join(names[:-1])
    rule = match(rules, where)
    if rule is None:
      return leaf
    used.add(rule)
    try:
      fmt = weight_format(rule.config)
    except ValueError as e:
      raise ValueError(f"{where}/{kernel_name}: {e}") from None
    if fmt is None:
      return leaf
    scale = _weight_scale(rule.config)
    w = jnp.asarray(leaf)
    if w.ndim < 2 or not jnp.issubdtype(w.dtype, jnp.floating):
      raise ValueError(f"{where}/{kernel_name}: cannot quantize a kernel of shape {w.shape}, dtype {w.dtype}")
    contract = w.ndim - 1 if views is None else views.get(where, w.ndim - 1)
    if contract == EXPERTS:
      return _experts_kernel(where, w, fmt, leaf, scale)
    if isinstance(contract, bool) or not isinstance(contract, int) or not 1 <= contract < w.ndim:
      raise ValueError(f"views[{where!r}]={contract!r} must be an int in [1, {w.ndim}) for a kernel of shape "
                       f"{w.shape}")
    try:
      q = quantize_scaled(w.reshape(math.prod(w.shape[:contract]), -1), fmt, pad=True, scale=scale)
    except ValueError as e:
      raise ValueError(f"{where}/{kernel_name}: {e}") from None
    value = q
    if layout == "kernel":
      value = _layout.pack_weights(q)
    elif layout == "auto":
      packed = _kernel_layout_if_cheap(q)
      value = q if packed is None else packed
    out = QuantizedKernel(value, w.shape, w.dtype, contract)
    if donate and isinstance(leaf, jax.Array):
      leaf.delete()
    del w
    if on_leaf is not None:
      on_leaf(where)
    return out

  def _experts_kernel(where, w, fmt, leaf, scale):
    if w.ndim != 3:
      raise ValueError(f"{where}/{kernel_name}: views marks it {EXPERTS!r}, so it must be (E, K, N), got shape "
                       f"{w.shape}")
    try:
      q = _grouped.quantize_experts(w, fmt, pad=True, scale=scale)
      value = q
      if layout == "kernel" or (layout == "auto" and _grouped.kernels_decode(q)):
        value = _grouped.pack_experts(q)
      if layout == "auto" and value.nbytes > 1.01 * q.nbytes:  # as for Dense kernels: padding must cost under 1%
        value = q
    except ValueError as e:
      raise ValueError(f"{where}/{kernel_name}: {e}") from None
    out = QuantizedKernel(value, w.shape, w.dtype, 1)
    if donate and isinstance(leaf, jax.Array):
      leaf.delete()
    if on_leaf is not None:
      on_leaf(where)
    return out

  out = jax.tree_util.tree_map_with_path(convert, params, is_leaf=lambda x: isinstance(x, QuantizedKernel))
  for rule in rules:
    if rule not in used:
      raise ValueError(f"rules: rule {rule.pattern!r} matches no kernel in the params tree")
  return out


def params_nbytes(tree) -> int:
  """Bytes held by a params tree (packed kernels count their codes and scales)."""
  leaves = jax.tree_util.tree_leaves(tree)
  return int(sum(math.prod(np.shape(a)) * np.dtype(a.dtype).itemsize for a in leaves))


def fake_quantized_params(params, rules: Sequence, kernel_name: str = "kernel", *,
                          views: Mapping[str, int] | None = None):
  """The float tree that a PTQ'd tree stands for (each quantized kernel dequantized): for references and
  accuracy reports. ``views`` as for :func:`ptq`."""
  def convert(x):
    return dequantize_kernel(x.unbox()).astype(x.dtype) if isinstance(x, QuantizedKernel) else x

  return jax.tree_util.tree_map(convert, ptq(params, rules, kernel_name=kernel_name, layout="qarray", views=views),
                                is_leaf=lambda x: isinstance(x, QuantizedKernel))
