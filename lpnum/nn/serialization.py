"""flax.serialization for lpnum's array types, QArray, PackedWeights, GroupedWeights and QuantizedKernel, with their
descriptions.

The core (:mod:`lpnum`) does not import flax; importing :mod:`lpnum.nn` registers these types, so that
``flax.serialization.to_bytes`` / ``to_state_dict`` save each as its array leaves plus a ``"description"`` leaf
(:mod:`lpnum.description`: the UTF-8 JSON of ``describe()`` as uint8), and ``from_bytes`` / ``from_state_dict``
restore it into a target only if the stored description matches the target's (names and calibration aside):
otherwise a ValueError names both. Leaves are never cast: a restored leaf has the stored dtype and must be the one
the target's format needs.

- Without a target: :func:`restore_state` rebuilds every described value from its description alone
  (``restore_state(flax.serialization.msgpack_restore(blob))``).
- A state saved by a plain orbax save of the pytree (no description leaf, but the ``lpnum_format_<fingerprint>``
  key of :mod:`lpnum.description`) is checked by fingerprint; it cannot be restored without a target.
- Checkpoints written before descriptions existed (layout version 1 without a ``"description"`` leaf) load into
  a target with a ``UserWarning`` that their format cannot be checked; the leaves must still have the shapes and
  dtypes the target's format needs.
"""

from __future__ import annotations

import warnings
from typing import Any

import jax.numpy as jnp
import numpy as np
from flax import serialization

from lpnum import description
from lpnum.kernels.grouped_matmul import layout as grouped_layout
from lpnum.kernels.grouped_matmul.layout import GroupedWeights
from lpnum.kernels.packed_matmul import layout
from lpnum.kernels.packed_matmul.layout import PackedWeights
from lpnum.kernels.planes import plane_bits
from lpnum.nn.ptq import QuantizedKernel
from lpnum.qarray import LAYOUT_VERSION, QArray
from lpnum.scaled import ScaledFormat

__all__ = ["restore_state"]

_QARRAY_FIELDS = ("data", "scales", "zero_point", "tensor_scale")


def _with_description(state: dict, desc: dict) -> dict:
  return {**state, description.DESCRIPTION_KEY: description.encode(desc)}


def _arrays(state: Any, fields: tuple[str, ...]) -> dict:
  """The stored leaves by name: a list (an orbax checkpoint of the pytree before it had keys) is read by position;
  None entries and keys of the description are dropped."""
  if isinstance(state, list | tuple):
    state = dict(zip(fields, state))
  if not isinstance(state, dict):
    raise ValueError(f"expected the state dict of an lpnum value, got {type(state).__name__}")
  return {k: v for k, v in state.items()
          if v is not None and k != description.DESCRIPTION_KEY and not k.startswith(description.TAG_PREFIX)}


def _check(target_desc: dict, state: Any) -> None:
  """Compares the stored description (or fingerprint) with the target's; warns for a checkpoint with neither."""
  kind = target_desc["type"]
  if isinstance(state, dict) and description.DESCRIPTION_KEY in state:
    description.check_same(description.decode(state[description.DESCRIPTION_KEY]), target_desc, "the checkpoint")
    return
  tags = [k for k in state if k.startswith(description.TAG_PREFIX)] if isinstance(state, dict) else []
  if tags:
    want = description.tag(target_desc).name
    if tags != [want]:
      raise ValueError(f"the checkpoint of this {kind} has format fingerprint {tags[0]}, but the target is "
                       f"{description.summary(target_desc)} (fingerprint {want}): restore into a target of the "
                       "stored format")
    return
  warnings.warn(f"this {kind} checkpoint has no format description (written before lpnum recorded them): its "
                f"format cannot be checked and is taken from the target, {description.summary(target_desc)}",
                UserWarning, stacklevel=4)


def _needed(name: str, arrays: dict, wanted: bool, kind: str, fmt: ScaledFormat):
  if wanted != (name in arrays):
    have = "has a" if name in arrays else "has no"
    raise ValueError(f"the checkpoint of this {kind} {have} {name} leaf, but the target's format {fmt.name} "
                     f"needs {'one' if wanted else 'none'}")
  return jnp.asarray(arrays[name]) if wanted else None


def _qarray_to_state(q: QArray) -> dict:
  state = {"data": q.data, "scales": q.scales}
  if q.zero_point is not None:
    state["zero_point"] = q.zero_point
  if q.tensor_scale is not None:
    state["tensor_scale"] = q.tensor_scale
  return _with_description(state, q.describe())


def _qarray_from_state(q: QArray, state: Any) -> QArray:
  _check(q.describe(), state)
  return _qarray(q.fmt, tuple(q.shape), q.dtype, tuple(q.block), _arrays(state, _QARRAY_FIELDS))


def _qarray(fmt: ScaledFormat, shape, dtype, block, arrays: dict) -> QArray:
  extra = set(arrays) - set(_QARRAY_FIELDS)
  if extra:
    raise ValueError(f"the checkpoint of this QArray has leaves {sorted(extra)} that a QArray does not have")
  for name in ("data", "scales"):
    if name not in arrays:
      raise ValueError(f"the checkpoint of this QArray has no {name} leaf")
  q = QArray(jnp.asarray(arrays["data"]), jnp.asarray(arrays["scales"]),
             _needed("zero_point", arrays, fmt.asymmetric, "QArray", fmt),
             _needed("tensor_scale", arrays, fmt.tensor_scale, "QArray", fmt), fmt, shape, np.dtype(dtype), block)
  if grouped_layout.is_stacked(q):  # a bank of experts (QuantizedKernel of an expert bank): each expert's QArray
    experts = {np.shape(a)[0] for a in (q.data, q.scales, q.zero_point, q.tensor_scale) if a is not None}
    if len(experts) != 1:
      raise ValueError(f"the checkpoint of this stacked QArray has leaves with {sorted(experts)} experts; they must "
                       "agree")
    for e in range(q.data.shape[0]):
      grouped_layout.expert(q, e).check()
  else:
    q.check()
  return q


def _packed_fields(fmt: ScaledFormat) -> tuple[str, ...]:
  n = len(plane_bits(fmt.element.bits))
  return (*(str(i) for i in range(n)), "scales", *(["zero_point"] if fmt.asymmetric else []),
          *(["tensor_scale"] if fmt.tensor_scale else []))


def _packed_to_state(w: PackedWeights | GroupedWeights) -> dict:
  """The array leaves by position (planes, scales, then the zero points and the tensor scale if any)."""
  return _with_description({str(i): leaf for i, leaf in enumerate(_leaves(w))}, w.describe())


def _packed_leaves(state: Any, kind: str) -> list:
  """The stored leaves in order: by position (lpnum's state dicts), or by name (orbax of the keyed pytree)."""
  arrays = _arrays(state, ())
  if "planes" in arrays:
    planes = arrays["planes"]
    planes = [planes[k] for k in sorted(planes, key=int)] if isinstance(planes, dict) else list(planes)
    return [*planes, *(arrays[k] for k in ("scales", "zero_point", "tensor_scale") if k in arrays)]
  if any(not k.isdigit() for k in arrays) or set(arrays) != {str(i) for i in range(len(arrays))}:
    raise ValueError(f"the checkpoint of this {kind} has leaves {sorted(arrays)}, not 0, 1, ...")
  return [arrays[str(i)] for i in range(len(arrays))]


def _packed_from_state(w: PackedWeights | GroupedWeights, state: Any) -> PackedWeights | GroupedWeights:
  _check(w.describe(), state)
  return _packed(type(w), w.fmt, tuple(w.shape), w.tile_k, w.group, _packed_leaves(state, type(w).__name__), w)


def _packed(cls: type, fmt: ScaledFormat, shape, tile_k: int, group: int, leaves: list, target=None):
  """A ``cls`` (PackedWeights or GroupedWeights: the same leaves, per expert for the latter) from its stored leaves,
  checked against ``target``'s leaves if given, else against the dtypes ``fmt`` needs."""
  kind, fields = cls.__name__, _packed_fields(fmt)
  if len(leaves) != len(fields):
    raise ValueError(f"the checkpoint of this {kind} has {len(leaves)} leaves; format {fmt.name} in the "
                     f"kernel layout has {len(fields)} ({', '.join(fields)})")
  leaves = [jnp.asarray(a) for a in leaves]
  n = len(plane_bits(fmt.element.bits))
  planes, rest = tuple(leaves[:n]), dict(zip(fields[n:], leaves[n:]))
  w = cls(planes, rest["scales"], rest.get("zero_point"), rest.get("tensor_scale"), fmt, shape, tile_k, group)
  want = [(a.shape, a.dtype) for a in ([] if target is None else _leaves(target))]
  got = [(a.shape, a.dtype) for a in _leaves(w)]
  if target is not None and got != want:
    raise ValueError(f"the checkpoint of this {kind} has leaves {got}; the target's are {want}")
  dtypes = [np.dtype(a.dtype) for a in planes] + [np.dtype(w.scales.dtype)]
  plane = layout.plane_dtype(fmt) if cls is PackedWeights else np.dtype(np.uint8)
  if dtypes != [plane] * n + [np.dtype(fmt.scale_format.code_dtype)]:
    raise ValueError(f"the checkpoint of this {kind} has plane and scale dtypes {dtypes}; format {fmt.name} "
                     f"needs {plane} planes and {np.dtype(fmt.scale_format.code_dtype)} scales")
  return w


def _leaves(w: PackedWeights | GroupedWeights) -> list:
  return [a for a in (*w.planes, w.scales, w.zero_point, w.tensor_scale) if a is not None]


def _kernel_to_state(k: QuantizedKernel) -> dict:
  return _with_description({"value": serialization.to_state_dict(k.value)}, k.describe())


def _kernel_from_state(k: QuantizedKernel, state: Any) -> QuantizedKernel:
  _check(k.describe(), state)
  if not isinstance(state, dict) or "value" not in state:
    raise ValueError("the checkpoint of this QuantizedKernel has no value")
  return QuantizedKernel(serialization.from_state_dict(k.value, state["value"]), k.shape, k.dtype, k.contract)


def _rebuild(desc: dict, state: dict) -> Any:
  kind, version = desc.get("type"), desc.get("layout_version")
  if kind == "QuantizedKernel":
    value = restore_state(state.get("value"))
    if type(value).__name__ != desc["value_type"]:
      raise ValueError(f"the checkpoint of a QuantizedKernel holds a {type(value).__name__}, its description says "
                       f"{desc['value_type']}")
    return QuantizedKernel(value, tuple(desc["shape"]), desc["dtype"], desc["contract"])
  supported = {"QArray": LAYOUT_VERSION, "PackedWeights": layout.LAYOUT_VERSION,
               "GroupedWeights": grouped_layout.LAYOUT_VERSION}
  if kind not in supported:
    raise ValueError(f"a description of type {kind!r}; this lpnum restores {sorted(supported)} and QuantizedKernel")
  if version != supported[kind]:
    raise ValueError(f"the checkpoint holds a {kind} of layout version {version}; this lpnum reads version "
                     f"{supported[kind]}")
  fmt = ScaledFormat.from_description(desc["format"])
  if kind == "QArray":
    value = _qarray(fmt, tuple(desc["shape"]), desc["dtype"], tuple(desc["block"]), _arrays(state, ()))
  else:
    cls = PackedWeights if kind == "PackedWeights" else GroupedWeights
    value = _packed(cls, fmt, tuple(desc["shape"]), desc["tile_k"], desc["group"], _packed_leaves(state, kind))
  description.check_same(desc, value.describe(), "the checkpoint")
  return value


def restore_state(state: Any, target: Any = None) -> Any:
  """A tree from its state dict, checked against ``target`` or, without one, rebuilt from its descriptions.

  Args:
    state: a state dict (``flax.serialization.to_state_dict``, ``msgpack_restore`` of ``to_bytes``, or what
      :func:`lpnum.nn.checkpoint.restore` reads).
    target: a tree of the expected structure and formats (concrete or ``jax.eval_shape``'d), or None: every dict
      holding a ``"description"`` leaf becomes the QArray, PackedWeights, GroupedWeights or QuantizedKernel it
      describes, the
      rest stays as stored.

  Returns:
    The restored tree.

  Raises:
    ValueError: a stored description that differs from the target's (naming both), or, without a target, a
      value saved by a plain orbax save (its fingerprint only). Values of checkpoints older than descriptions
      are plain dicts of arrays and stay so without a target.

  Example:
    >>> import jax.numpy as jnp, lpnum
    >>> from flax import serialization
    >>> from lpnum.nn.serialization import restore_state
    >>> q = lpnum.quantize_scaled(jnp.ones((2, 32)), lpnum.mx.format("mxfp8_e4m3"))
    >>> back = restore_state(serialization.msgpack_restore(serialization.to_bytes({"w": q})))
    >>> back["w"].fmt == q.fmt, bool((back["w"].data == q.data).all())
    (True, True)
  """
  if target is not None:
    return serialization.from_state_dict(target, state)
  if isinstance(state, dict):
    if description.DESCRIPTION_KEY in state:
      return _rebuild(description.decode(state[description.DESCRIPTION_KEY]), state)
    tags = [k for k in state if k.startswith(description.TAG_PREFIX)]
    if tags:
      raise ValueError(f"this value was saved by a plain orbax save, which records only its fingerprint ({tags[0]}): "
                       "restore it with a target, or save with lpnum.nn.checkpoint.save to restore without one")
    return {k: restore_state(v) for k, v in state.items()}
  if isinstance(state, list | tuple):
    return type(state)(restore_state(v) for v in state)
  return state


serialization.register_serialization_state(QArray, _qarray_to_state, _qarray_from_state)
serialization.register_serialization_state(PackedWeights, _packed_to_state, _packed_from_state)
serialization.register_serialization_state(GroupedWeights, _packed_to_state, _packed_from_state)
serialization.register_serialization_state(QuantizedKernel, _kernel_to_state, _kernel_from_state)
