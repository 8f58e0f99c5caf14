"""Post-training quantization of a params tree: float kernels become packed quantized kernels.

:func:`ptq` is a pure function of the params: it quantizes the matching kernels one leaf at a time (never the
model, never a second float copy of the tree; ``donate=True`` frees each float kernel as soon as it is packed)
and returns a tree whose kernels are :class:`QuantizedKernel` boxes. The boxes hold a 2-D
:class:`lpnum.kernels.PackedWeights` (the kernel layout, for Dense-shaped kernels whose padding costs under 1%
of the ideal size) or a :class:`lpnum.QArray` (packed along the last axis: conv kernels and small layers), so the
tree, and a checkpoint of it, holds the packed codes and scales only.

Inference runs the stock model on the boxed tree through :func:`lpnum.nn.quantize_model` with the same rules:
Dense layers multiply through :func:`lpnum.kernels.matmul` (dequantization inside the kernel, tile by tile),
conv layers dequantize their (small) kernels.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax.core import meta

from lpnum.kernels import layout as _layout
from lpnum.kernels import matmul as _kernel_matmul
from lpnum.qarray import QArray
from lpnum.scaled import ScaledFormat, dequantize, quantize_scaled

__all__ = ["QuantizedKernel", "ptq", "is_packed", "dequantize_kernel", "params_nbytes"]


class PackedKernel:
  """What a layer sees when it reads a :class:`QuantizedKernel`: the packed value with the float kernel's shape
  and dtype (so Flax's shape checks pass), consumed by lpnum's dot_general and conv."""

  def __init__(self, value: QArray | _layout.PackedWeights, shape: tuple[int, ...], dtype) -> None:
    self.value, self.shape, self.dtype = value, tuple(shape), np.dtype(dtype)

  @property
  def ndim(self) -> int:
    return len(self.shape)


@jax.tree_util.register_pytree_node_class
class QuantizedKernel(meta.AxisMetadata):
  """A params-tree leaf holding a packed kernel (a Flax AxisMetadata box; its leaves are codes and scales).

  Attributes:
    value: the :class:`lpnum.kernels.PackedWeights` or :class:`lpnum.QArray`.
    shape: the float kernel's shape.
    dtype: the float kernel's dtype.
  """

  def __init__(self, value, shape, dtype) -> None:
    self.value, self.shape, self.dtype = value, tuple(shape), np.dtype(dtype)

  def tree_flatten(self):
    return (self.value,), (self.shape, self.dtype.name)

  @classmethod
  def tree_unflatten(cls, aux, children):
    return cls(children[0], aux[0], aux[1])

  def unbox(self) -> PackedKernel:
    return PackedKernel(self.value, self.shape, self.dtype)

  def __getitem__(self, index) -> PackedKernel:
    """``kernel[...]``: how nnx layers read their kernel."""
    if index is not Ellipsis:
      raise TypeError(f"a QuantizedKernel is read whole (kernel[...]), not kernel[{index!r}]")
    return self.unbox()

  def replace_boxed(self, val) -> "QuantizedKernel":
    return QuantizedKernel(val, self.shape, self.dtype)

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
  return isinstance(x, PackedKernel | QArray | _layout.PackedWeights)


def dequantize_kernel(x) -> jax.Array:
  """The float32 kernel, with its original shape, from a packed kernel."""
  value, shape = (x.value, x.shape) if isinstance(x, PackedKernel) else (x, None)
  if isinstance(value, _layout.PackedWeights):
    k, n = value.shape
    w = _layout.dequantize(value)[:k, :n]
  else:
    w = dequantize(value, jnp.float32)
  return w if shape is None else w.reshape(shape)


def packed_matmul(lhs: jax.Array, rhs, dimension_numbers, config, state, preferred_element_type):
  """``lhs @ W`` for a packed ``W`` (a Dense contraction: lhs's last axis with W's first)."""
  from lpnum.nn.dot import dot_general, quantize_operand

  shape = rhs.shape
  (lc, rc), (lb, rb) = dimension_numbers
  dense = (len(shape) == 2 and tuple(lc) in ((lhs.ndim - 1,), (-1,)) and tuple(rc) == (0,) and not lb and not rb)
  value = rhs.value if isinstance(rhs, PackedKernel) else rhs
  out_dtype = preferred_element_type or lhs.dtype
  if not dense or not (isinstance(value, _layout.PackedWeights) or value.ndim == 2):
    if config.backend == "kernel":
      raise ValueError(f"backend='kernel' runs Dense contractions of 2-D packed kernels; got kernel shape {shape} "
                       f"with dimension_numbers={dimension_numbers!r}")
    w = dequantize_kernel(rhs)
    return dot_general(lhs, w, dimension_numbers, dataclasses.replace(config, rhs=None, backend="fake",
                                                                      dlhs=None, drhs=None, accumulator=None),
                       state=state, preferred_element_type=out_dtype)
  lead, k = lhs.shape[:-1], shape[0]
  lhs32 = lhs.astype(jnp.float32).reshape(-1, k)
  x_format = None
  tq = config.lhs
  if tq is not None:
    if tq.scaling == "dynamic" and tq.estimator == "ste" and tq.rounding == "nearest_even":
      x_format = tq.scaled_format("lhs")
      if not isinstance(x_format, ScaledFormat):
        lhs32, x_format = quantize_operand(lhs32, tq, "lhs"), None
    else:
      lhs32 = quantize_operand(lhs32, tq, "lhs", scale=state.lhs_scale, param=state.lhs_param)
  grad = None
  if config.dlhs is not None and config.dlhs.grad is not None:
    grad = config.dlhs.grad.scaled_format("lhs")
  y = _kernel_matmul(lhs32, value, x_format=x_format, grad_format=grad)
  return y.reshape(*lead, shape[1]).astype(out_dtype)


def _path_str(path) -> str:
  return "/".join(str(getattr(k, "key", getattr(k, "name", k))) for k in path)


def _use_kernel_layout(q: QArray) -> bool:
  """The kernel layout pads N to 128 and K to a tile: use it where that costs under 1% of the packed size."""
  if len(q.shape) != 2:
    return False
  try:
    packed = _layout.pack_weights(q)
  except (ValueError, TypeError):
    return False
  ideal = q.nbytes
  return sum(a.nbytes for a in jax.tree_util.tree_leaves(packed)) <= 1.01 * ideal


def ptq(params, rules: Sequence, *, kernel_name: str = "kernel", layout: str = "auto", donate: bool = False,
        on_leaf: Callable[[str], None] | None = None):
  """Quantizes the kernels of a params tree by the rules' weight formats (their ``config.rhs``).

  A kernel at ``a/b/kernel`` belongs to the module path ``a/b``; the first rule whose pattern matches the path
  decides (a rule with ``config=None`` leaves it float). Kernels are seen as ``(K, N)`` with the output features
  last (flax Dense and Conv): ``channel`` granularity gives a scale per output feature, blocks run along K.

  Args:
    params: the float params tree (``variables["params"]``).
    rules: :class:`lpnum.nn.Rule` values (or ``(pattern, config)`` pairs).
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
    >>> import jax, jax.numpy as jnp, flax.linen as nn
    >>> from lpnum import nn as lnn
    >>> params = nn.Dense(256).init(jax.random.key(0), jnp.ones((1, 512)))["params"]
    >>> q = lnn.ptq(params, [lnn.Rule(".*", lnn.QuantConfig.weight_only("int4"))])
    >>> q["kernel"], lnn.params_nbytes(q) / lnn.params_nbytes(params)
    (QuantizedKernel(int4/per_channel(1,)/float32, shape=(512, 256), PackedWeights), 0.1286549707602339)
  """
  from lpnum.nn.rules import as_rules, match

  if layout not in ("auto", "kernel", "qarray"):
    raise ValueError(f"layout={layout!r}; expected 'auto', 'kernel' or 'qarray'")
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
    if rule.config is None or rule.config.rhs is None:
      return leaf
    w = jnp.asarray(leaf)
    if w.ndim < 2 or not jnp.issubdtype(w.dtype, jnp.floating):
      raise ValueError(f"{where}/{kernel_name}: cannot quantize a kernel of shape {w.shape}, dtype {w.dtype}")
    fmt = rule.config.rhs.scaled_format("rhs")
    if not isinstance(fmt, ScaledFormat):
      fmt = ScaledFormat(fmt, scale_format="float32", name=fmt.name)
    try:
      q = quantize_scaled(w.reshape(-1, w.shape[-1]), fmt, pad=True)
    except ValueError as e:
      raise ValueError(f"{where}/{kernel_name}: {e}") from None
    value = q
    if layout == "kernel" or (layout == "auto" and _use_kernel_layout(q)):
      value = _layout.pack_weights(q)
    out = QuantizedKernel(value, w.shape, w.dtype)
    if donate and isinstance(leaf, jax.Array):
      leaf.delete()
    del w
    if on_leaf is not None:
      on_leaf(where)
    return out

  out = jax.tree_util.tree_map_with_path(convert, params, is_leaf=lambda x: isinstance(x, QuantizedKernel))
  for rule in rules:
    if rule not in used:
      raise ValueError(f"rule {rule.pattern!r} matches no kernel in the params tree")
  return out


def params_nbytes(tree) -> int:
  """Bytes held by a params tree (packed kernels count their codes and scales)."""
  leaves = jax.tree_util.tree_leaves(tree)
  return int(sum(math.prod(np.shape(a)) * np.dtype(a.dtype).itemsize for a in leaves))


def fake_quantized_params(params, rules: Sequence, kernel_name: str = "kernel"):
  """The float tree that a PTQ'd tree stands for (each quantized kernel dequantized): for references and
  accuracy reports."""
  def convert(x):
    return dequantize_kernel(x.unbox()).astype(x.dtype) if isinstance(x, QuantizedKernel) else x

  return jax.tree_util.tree_map(convert, ptq(params, rules, kernel_name=kernel_name, layout="qarray"),
                                is_leaf=lambda x: isinstance(x, QuantizedKernel))



def _register_flax() -> None:
  """flax.serialization for packed kernels: a QuantizedKernel saves its value's state; PackedWeights saves its
  array leaves by position and restores them into the target's structure (static layout from the target)."""
  from flax import serialization

  def packed_to_state(w: _layout.PackedWeights) -> dict:
    return {str(i): leaf for i, leaf in enumerate(jax.tree_util.tree_leaves(w))}

  def packed_from_state(w: _layout.PackedWeights, state: dict) -> _layout.PackedWeights:
    leaves, treedef = jax.tree_util.tree_flatten(w)
    if set(state) != {str(i) for i in range(len(leaves))}:
      raise ValueError(f"PackedWeights state has leaves {sorted(state)}, the target {len(leaves)}")
    restored = [jnp.asarray(state[str(i)]) for i in range(len(leaves))]
    for new, old in zip(restored, leaves):
      if new.shape != old.shape or new.dtype != old.dtype:
        raise ValueError(f"PackedWeights leaf {new.shape} {new.dtype} does not fit the target's {old.shape} "
                         f"{old.dtype}")
    return jax.tree_util.tree_unflatten(treedef, restored)

  def kernel_to_state(k: QuantizedKernel) -> dict:
    return {"value": serialization.to_state_dict(k.value)}

  def kernel_from_state(k: QuantizedKernel, state: dict) -> QuantizedKernel:
    return QuantizedKernel(serialization.from_state_dict(k.value, state["value"]), k.shape, k.dtype)

  serialization.register_serialization_state(_layout.PackedWeights, packed_to_state, packed_from_state)
  serialization.register_serialization_state(QuantizedKernel, kernel_to_state, kernel_from_state)


_register_flax()
