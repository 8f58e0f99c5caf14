"""Self-describing checkpoints: the canonical description of a quantized array and how two are compared.

Every stored quantized value (:class:`lpnum.QArray`, the kernel layouts :class:`lpnum.kernels.PackedWeights` and
:class:`lpnum.kernels.grouped_matmul.GroupedWeights`, the PTQ box :class:`lpnum.nn.QuantizedKernel`) has a ``describe()``: a small JSON-able dict holding its type, its layout
version, and everything that decides what its codes mean (element format, granularity and block, scale format and
rule, tensor scale, zero point, shape, dtype). Descriptions also record display names and the calibration, which
rebuild the format exactly but do not change what the codes mean: :func:`essential` drops them, and two values are
the same kind of value when their essential descriptions are equal.

A description travels with the arrays in two ways, both set up by :mod:`lpnum.nn` (the core does not import flax
or orbax):

- in state dicts (``flax.serialization``, and orbax through :mod:`lpnum.nn.checkpoint`): a ``"description"`` leaf,
  the UTF-8 JSON of the description as a uint8 array (:func:`encode`, :func:`decode`);
- in the pytree itself: the values flatten with a key path (``data``, ``scales``...) plus one empty child whose
  key is :func:`tag` (``lpnum_format_<fingerprint>``), so a plain orbax checkpoint records the fingerprint in its
  tree metadata and orbax refuses to restore it into a template whose fingerprint differs. The empty child holds
  no array: jit, vmap and sharding see the same leaves as before.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import jax
import numpy as np

__all__ = ["DESCRIPTION_KEY", "TAG_PREFIX", "essential", "fingerprint", "tag", "encode", "decode", "summary",
           "differences", "check_same"]

#: The state-dict key of a value's description.
DESCRIPTION_KEY = "description"

#: The key prefix of the empty pytree child carrying a value's fingerprint.
TAG_PREFIX = "lpnum_format_"

_NOT_ESSENTIAL = ("name", "calibration")


def essential(desc: Any) -> Any:
  """``desc`` without display names and calibration (what the codes mean, and nothing else)."""
  if isinstance(desc, dict):
    return {k: essential(v) for k, v in desc.items() if k not in _NOT_ESSENTIAL}
  if isinstance(desc, list | tuple):
    return [essential(v) for v in desc]
  return desc


def _canonical(desc: dict) -> str:
  return json.dumps(essential(desc), sort_keys=True, separators=(",", ":"))


def fingerprint(desc: dict) -> str:
  """The first 16 hex digits of the SHA-256 of the canonical JSON of ``essential(desc)``."""
  return hashlib.sha256(_canonical(desc).encode()).hexdigest()[:16]


def tag(desc: dict) -> jax.tree_util.GetAttrKey:
  """The key of the empty pytree child that carries ``desc``'s fingerprint (see the module docstring)."""
  return jax.tree_util.GetAttrKey(TAG_PREFIX + fingerprint(desc))


def encode(desc: dict) -> np.ndarray:
  """``desc`` as a uint8 array of its UTF-8 JSON (a leaf that msgpack and orbax store as they store any array)."""
  return np.frombuffer(json.dumps(desc, sort_keys=True, separators=(",", ":")).encode(), np.uint8).copy()


def decode(array: Any) -> dict:
  """The description stored by :func:`encode`; ValueError if ``array`` does not hold one."""
  a = np.asarray(array)
  if a.dtype != np.uint8 or a.ndim != 1:
    raise ValueError(f"a description is a 1-D uint8 array, got {a.dtype} of shape {a.shape}")
  try:
    desc = json.loads(a.tobytes().decode())
  except (UnicodeDecodeError, json.JSONDecodeError) as e:
    raise ValueError(f"the description leaf is not UTF-8 JSON: {e}") from None
  if not isinstance(desc, dict) or "type" not in desc:
    raise ValueError(f"the description leaf holds {desc!r}, not a description with a 'type'")
  return desc


def summary(desc: dict) -> str:
  """``desc`` on one line, element and scale formats by name, without calibration (e.g. ``QArray mxfp4_e2m1
  {layout_version=1, format={element=float4_e2m1fn, ...}, shape=[2, 32], dtype=float32, block=[1, 32]}``)."""
  def brief(v: Any) -> str:
    if isinstance(v, dict) and "family" in v:
      return str(v.get("name") or v["family"])
    if isinstance(v, dict):
      return "{" + ", ".join(f"{k}={brief(x)}" for k, x in sorted(v.items())
                     if k not in _NOT_ESSENTIAL + ("type",)) + "}"
    return str(v)

  fmt = desc.get("format")
  name = f" {fmt['name']}" if isinstance(fmt, dict) and fmt.get("name") else ""
  return f"{desc.get('type')}{name} {brief(desc)}"


def differences(a: Any, b: Any, path: str = "") -> list[str]:
  """The dotted paths of the fields where descriptions ``a`` and ``b`` differ (``["format.element.exponent_bits",
  ...]``)."""
  if isinstance(a, dict) and isinstance(b, dict):
    out = []
    for k in sorted(set(a) | set(b)):
      out += differences(a.get(k), b.get(k), f"{path}.{k}" if path else k)
    return out
  return [] if a == b else [path or "(all)"]


def check_same(found: dict, expected: dict, what: str = "the checkpoint") -> None:
  """Raises ValueError naming both descriptions and the fields they differ in, unless their essentials agree.

  Args:
    found: the description stored in ``what``.
    expected: the description of the restore target.
    what: how to name where ``found`` comes from.
  """
  diff = differences(essential(found), essential(expected))
  if diff:
    raise ValueError(f"{what} holds {summary(found)}, but the target is {summary(expected)}; they differ in "
                     f"{', '.join(diff)}. Restore into a target of the stored format, or without a target "
                     "(lpnum.nn.serialization.restore_state, lpnum.nn.checkpoint.restore)")
