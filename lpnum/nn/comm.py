"""Low-precision communication for data parallelism: all-reduces whose bytes on the wire are 8-bit codes.

Data-parallel training spends its communication on one all-reduce of the gradients per step. Dettmers ("8-Bit
Approximations for Parallelism in Deep Learning", ICLR 2016) showed that sending 8-bit approximations of the
gradients instead of 32-bit floats keeps the model's accuracy while cutting the traffic by about 4x (with his
dynamic tree data type; here lpnum's int8 and float8 formats with block scales). HALO (Ashkboos et al., "HALO:
Hadamard-Assisted Lower-Precision Optimization and Finetuning of LLMs", 2025) rotates tensors by Hadamard matrices
before low-precision computation and communication, which spreads outliers over their block. This module does
both inside ``jax.shard_map``, with lpnum's formats and rounding.

:func:`compressed_psum` is a two-phase all-reduce over one mesh axis of ``n`` devices. Each device flattens its
tensor, pads it to ``n`` chunks of whole blocks and:

1. quantizes it, block by block, and sends chunk ``j`` (codes and scales) to device ``j`` with
   ``jax.lax.all_to_all`` (the reduce-scatter phase);
2. dequantizes the ``n`` chunks it received and sums them in float32, in device order;
3. quantizes that partial sum the same way and sends it (codes and scales) to every device with
   ``jax.lax.all_gather`` (the all-gather phase);
4. dequantizes the ``n`` gathered chunks and drops the padding.

Every device ends with the same result, as after ``jax.lax.psum``, and the result is marked invariant over the
axis (``out_specs=P()`` is allowed).

Quantization. ``block`` consecutive elements share one float32 scale ``S = absmax / M``, the block's largest
magnitude over the element format's largest value ``M`` (a correctly rounded float32 division), at least
``2^-126`` so that an all-zero block has a normal scale. Elements are the float32 quotients ``x / S`` (IEEE
division) encoded by :func:`lpnum.encode` with the chosen rounding, saturating; values are ``decode(code) * S``,
one float32 product. A NaN in a block makes its scale NaN, and the block's results NaN.

On the wire. Codes travel as ``int8`` arrays, one byte per element: the two's complement values for int8, the
bit patterns (as lpnum encodes them) for the float8 formats. Sending float8 codes as ``float8_e4m3fn`` arrays would
be the same bytes, but XLA's CPU backend converts float8 collectives to float16 and would move twice as many; raw
bytes cannot be widened on any backend. Scales travel as float32 arrays. That is ``1 + 4 / block`` bytes per
element in each phase (1.03 at the default block of 128), against 4 for float32: a ring all-reduce of float32
moves ``2 (n - 1) / n * 4`` bytes per element per device, this one ``2 (n - 1) / n * (1 + 4 / block)``, 3.9x less
at ``block=128``. No float32 tensor of the gradient's size is communicated.

Error bound (round to nearest). Let ``e(v)`` be the error of quantizing one value ``v`` of a block whose scale is
``S = absmax / M`` (``M``: 127 for int8, 448 for float8_e4m3fn, 57344 for float8_e5m2):

* int8: ``|e(v)| <= S / 2``, so at most ``absmax / 254``;
* float8 with ``m`` mantissa bits and smallest normal exponent ``emin``: ``|e(v)| <= 2^-(m+1) |v| + S 2^(emin-m-1)``
  (e4m3fn: ``|v| / 16 + S / 1024``; e5m2: ``|v| / 8 + S / 2^17``),

each up to a relative ``2^-14`` for the float32 roundings of the scale, the quotient and the product. The result
at element ``j`` of a block differs from the exact sum ``sum_i x_ij`` by at most
``sum_i e(x_ij) + e(p_j) + (n - 1) 2^-24 sum_i |x^_ij|``: one quantization error per device (each with its own
block scale), one for the partial sum ``p`` and the float32 summation of the dequantized ``x^``. For int8 that is
about ``(2 / 254) sum_i absmax_b(x_i)``, under 1% of the sum of the block's largest magnitudes. With stochastic
rounding every error is below one step instead of half (``S`` for int8, ``2^-m |v| + S 2^(emin-m)`` for
float8) and the result is unbiased: its expectation is the exact sum (the partial sums' scales depend on
the first phase's draws, but each rounding is unbiased given them).

``rotate=True`` (HALO) multiplies every block by the orthonormal ``block x block`` Hadamard matrix before the
first phase and again after the last (:func:`lpnum.hadamard.fwht`); sums commute with the rotation, and an
outlier's energy is spread over its block, so the other elements of the block keep more precision. The bound
above then holds for the rotated values; the rotation being orthonormal, each block's error keeps its 2-norm
when rotated back (up to the rotation's own float32 rounding).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from lpnum.rounding import Rounding
from lpnum.formats import Format, as_format
from lpnum.hadamard import fwht
from lpnum.quantize import decode, encode
from lpnum.scaled.xla_cpu import abs_max, div

__all__ = ["FORMATS", "compressed_psum", "compressed_mean_grads", "data_parallel_step"]

#: The element formats :func:`compressed_psum` can send.
FORMATS = ("int8", "float8_e4m3fn", "float8_e5m2")

#: The smallest scale, so that an all-zero block divides by a normal float32 (as lpnum.scaled clamps scales).
_MIN_SCALE = 2.0 ** -126


def compressed_psum(
    x: jax.Array,
    axis_name: str,
    fmt: str | Format | None = "int8",
    *,
    block: int = 128,
    rounding: str | Rounding = "nearest_even",
    key: jax.Array | None = None,
    mean: bool = False,
    rotate: bool = False,
) -> jax.Array:
  """The sum of ``x`` over the mesh axis ``axis_name``, communicated as 8-bit codes and float32 block scales.

  Call it inside ``jax.shard_map``, under ``jax.jit`` (run eagerly, shard_map compiles every operation
  separately); see the module docstring for the algorithm, the bytes on the wire and the error bound.

  Args:
    x: this device's float32, bfloat16 or float16 array (any shape; all devices pass the same shape).
    axis_name: the mesh axis to reduce over.
    fmt: the element format on the wire: ``"int8"``, ``"float8_e4m3fn"`` or ``"float8_e5m2"`` (or the lpnum
      format), or ``None`` for an exact float32 ``jax.lax.psum`` (also used for an empty ``x``).
    block: elements per float32 scale, a power of two with ``rotate=True``. The flattened tensor is padded with
      zeros to a multiple of ``block`` times the number of devices, and the padding is dropped again.
    rounding: lpnum rounding mode of both quantizations (``nearest_even``, ``stochastic``...).
    key: a ``jax.random.key``, required for stochastic rounding; the same on every device (each device derives
      its own keys from it and ``jax.lax.axis_index``).
    mean: divide the sum by the number of devices (after the last dequantization).
    rotate: rotate each block by a Hadamard matrix before quantizing, and back after (HALO).

  Returns:
    The (approximate) sum, with the shape and dtype of ``x``, the same on every device.

  Raises:
    ValueError: an unknown ``fmt`` or ``rounding``, a bad ``block``, or stochastic rounding without ``key``.
    TypeError: ``x`` is not a float array.

  Example:
    >>> import jax, jax.numpy as jnp, numpy as np
    >>> from jax.sharding import Mesh, PartitionSpec as P
    >>> from lpnum.nn.comm import compressed_psum
    >>> mesh = Mesh(np.array(jax.devices()), ("data",))
    >>> x = jnp.tile(jnp.array([[1.0, -2.0, 0.5, 127.0]]), (mesh.size, 1))  # one row per device
    >>> f = jax.jit(jax.shard_map(lambda v: compressed_psum(v[0], "data", block=4, mean=True), mesh=mesh,
    ...                           in_specs=P("data"), out_specs=P()))
    >>> f(x).tolist()  # the block's scale is 127 / 127: 0.5 rounds to the even 0
    [1.0, -2.0, 0.0, 127.0]
  """
  element, mode = _check(fmt, block, rounding, key, rotate)
  x = _float_array(x)
  if element is None or x.size == 0:
    return jax.lax.pmean(x, axis_name) if mean else jax.lax.psum(x, axis_name)
  n = jax.lax.axis_size(axis_name)
  chunk = -(-x.size // (n * block)) * block
  v = jnp.pad(x.reshape(-1).astype(jnp.float32), (0, n * chunk - x.size))
  if rotate:
    v = fwht(v, block=block)
  key1 = key2 = None
  if mode is Rounding.STOCHASTIC:
    index = jax.lax.axis_index(axis_name)
    key1, key2 = (jax.random.fold_in(k, index) for k in jax.random.split(key))

  codes, scales = _quantize(v.reshape(n, chunk // block, block), element, mode, key1)
  codes = jax.lax.all_to_all(codes, axis_name, 0, 0)
  scales = jax.lax.all_to_all(scales, axis_name, 0, 0)
  parts = _dequantize(codes, scales, element)
  partial, _ = jax.lax.scan(lambda acc, row: (acc + row, None), parts[0], parts[1:])

  codes, scales = _quantize(partial, element, mode, key2)
  codes = jax.lax.all_gather(codes, axis_name, to="invarying")
  scales = jax.lax.all_gather(scales, axis_name, to="invarying")
  total = _dequantize(codes, scales, element).reshape(-1)
  if rotate:
    total = fwht(total, block=block)
  total = total[:x.size].reshape(x.shape)
  if mean:
    total = total / n
  return total.astype(x.dtype)


def compressed_mean_grads(
    grads: Any,
    axis_name: str,
    fmt: str | Format | None = "int8",
    *,
    block: int = 128,
    rounding: str | Rounding = "nearest_even",
    key: jax.Array | None = None,
    rotate: bool = False,
) -> Any:
  """The mean of a pytree of gradients over the mesh axis ``axis_name``, communicated as 8-bit codes.

  All leaves go through one :func:`compressed_psum` (``mean=True``), so a step costs four collectives whatever
  the number of parameters: each leaf is flattened and padded with zeros to whole blocks, so that no block (and
  no scale) mixes two leaves (a bias never shares a scale with a large weight matrix), and the leaves are
  concatenated into one float32 buffer. The padding adds fewer than ``block`` elements per leaf.

  Args:
    grads: a pytree of float arrays, this device's gradients.
    axis_name: the mesh axis to average over.
    fmt, block, rounding, key, rotate: as for :func:`compressed_psum`.

  Returns:
    The averaged gradients, with the structure, shapes and dtypes of ``grads``, the same on every device.

  Raises:
    ValueError: as :func:`compressed_psum`.
    TypeError: a leaf is not a float array.

  Example:
    >>> import jax, jax.numpy as jnp, numpy as np
    >>> from jax.sharding import Mesh, PartitionSpec as P
    >>> from lpnum.nn.comm import compressed_mean_grads
    >>> mesh = Mesh(np.array(jax.devices()), ("data",))
    >>> grads = {"b": jnp.array([3.0]), "w": jnp.array([[0.5, -1.0]])}
    >>> f = jax.jit(jax.shard_map(lambda g: compressed_mean_grads(g, "data", "float8_e4m3fn", block=2),
    ...                           mesh=mesh, in_specs=P(), out_specs=P()))
    >>> {name: g.tolist() for name, g in f(grads).items()}
    {'b': [3.0], 'w': [[0.5, -1.0]]}
  """
  element, _ = _check(fmt, block, rounding, key, rotate)
  leaves, treedef = jax.tree_util.tree_flatten(grads)
  leaves = [_float_array(g, "grads leaf") for g in leaves]
  if element is None:
    return jax.tree_util.tree_unflatten(treedef, [jax.lax.pmean(g, axis_name) for g in leaves])
  sizes = [g.size for g in leaves]
  padded = [-(-s // block) * block for s in sizes]
  flat = [jnp.pad(g.reshape(-1).astype(jnp.float32), (0, p - s)) for g, s, p in zip(leaves, sizes, padded)]
  buffer = jnp.concatenate(flat) if flat else jnp.zeros((0,), jnp.float32)
  total = compressed_psum(buffer, axis_name, element, block=block, rounding=rounding, key=key, mean=True,
                          rotate=rotate)
  starts = np.cumsum([0] + padded[:-1])
  out = [total[a:a + s].reshape(g.shape).astype(g.dtype) for g, a, s in zip(leaves, starts, sizes)]
  return jax.tree_util.tree_unflatten(treedef, out)


def data_parallel_step(
    loss_fn: Callable[[Any, Any], jax.Array],
    optimizer: optax.GradientTransformation,
    mesh: Mesh,
    axis: str = "data",
    comm_fmt: str | Format | None = "int8",
    *,
    block: int = 128,
    rounding: str | Rounding = "nearest_even",
    rotate: bool = False,
) -> Callable[..., tuple[Any, Any, jax.Array]]:
  """A jitted data-parallel training step whose gradient all-reduce is compressed (:func:`compressed_mean_grads`).

  Parameters and optimizer state are replicated (``NamedSharding(mesh, P())``) and every leaf of the batch is
  split along its first axis over ``axis`` (``P(axis)``); other mesh axes replicate everything. Inside
  ``jax.shard_map`` each device computes the loss and gradients of its shard, the gradients are averaged with
  ``comm_fmt`` on the wire (``None``: an exact float32 ``pmean``) and every device applies the same update.
  Parameters are differentiated as per-device values, so no implicit float32 all-reduce of the gradients
  appears; the loss is averaged with a float32 ``pmean`` of one scalar.

  Args:
    loss_fn: ``loss_fn(params, batch) -> scalar``, the mean loss over the batch (so the mean over equal shards
      is the loss of the whole batch).
    optimizer: an optax gradient transformation.
    mesh: the device mesh.
    axis: the mesh axis the batch is split over.
    comm_fmt: the format on the wire (see :func:`compressed_psum`), or ``None`` for float32.
    block, rounding, rotate: as for :func:`compressed_psum`.

  Returns:
    ``step(params, opt_state, batch, key=None) -> (params, opt_state, loss)``, jitted; ``key`` (a
    ``jax.random.key``, fresh every step) is required with ``rounding="stochastic"``. The batch's first axis must
    be divisible by the size of ``axis``.

  Raises:
    ValueError: ``axis`` is not an axis of ``mesh``, or as :func:`compressed_psum`; the step raises ValueError
      for a batch the axis does not divide or a missing ``key``.
    TypeError: ``mesh`` is not a Mesh or ``optimizer`` not an optax transformation.

  Example:
    >>> import jax, jax.numpy as jnp, numpy as np, optax
    >>> from jax.sharding import Mesh
    >>> from lpnum.nn.comm import data_parallel_step
    >>> mesh = Mesh(np.array(jax.devices()), ("data",))
    >>> loss_fn = lambda w, batch: jnp.mean((batch["x"] @ w - batch["y"]) ** 2)
    >>> step = data_parallel_step(loss_fn, optax.sgd(0.5), mesh)
    >>> x = jnp.tile(jnp.eye(4), (2 * mesh.size, 1))
    >>> batch = {"x": x, "y": x @ jnp.array([1.0, -2.0, 3.0, 0.5])}
    >>> w = jnp.zeros(4)
    >>> state = optax.sgd(0.5).init(w)
    >>> w, state, first = step(w, state, batch)
    >>> for _ in range(10):
    ...   w, state, loss = step(w, state, batch)
    >>> bool(loss < first / 100)
    True
  """
  if not isinstance(mesh, Mesh):
    raise TypeError(f"mesh must be a jax.sharding.Mesh, got {type(mesh).__name__}")
  if axis not in mesh.axis_names:
    raise ValueError(f"axis={axis!r} is not an axis of the mesh, whose axes are {mesh.axis_names}")
  if not (hasattr(optimizer, "init") and hasattr(optimizer, "update")):
    raise TypeError(f"optimizer must be an optax.GradientTransformation, got {type(optimizer).__name__}")
  _, mode = _check(comm_fmt, block, rounding, None, rotate, need_key=False, fmt_arg="comm_fmt")
  n = mesh.shape[axis]
  explicit = dict(zip(mesh.axis_names, mesh.axis_types))[axis] == jax.sharding.AxisType.Explicit

  def local(params, opt_state, batch, key):
    params_here = jax.lax.pcast(params, axis, to="varying")
    loss, grads = jax.value_and_grad(loss_fn)(params_here, batch)
    grads = compressed_mean_grads(grads, axis, comm_fmt, block=block, rounding=mode, key=key, rotate=rotate)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, jax.lax.pmean(loss, axis)

  def place(tree, spec):
    sharding = NamedSharding(mesh, spec)
    if explicit:
      return jax.sharding.reshard(tree, sharding)
    return jax.lax.with_sharding_constraint(tree, sharding)

  @jax.jit
  def step(params, opt_state, batch, key=None):
    for leaf in jax.tree_util.tree_leaves(batch):
      if leaf.ndim == 0 or leaf.shape[0] % n:
        raise ValueError(f"batch has a leaf of shape {leaf.shape}: its first axis must be divisible by the "
                         f"{n} devices of mesh axis {axis!r}")
    if mode is Rounding.STOCHASTIC and key is None:
      raise ValueError("rounding='stochastic' needs key=jax.random.key(...) at every step; got key=None")
    params, opt_state, batch = place(params, P()), place(opt_state, P()), place(batch, P(axis))
    sharded = jax.shard_map(local, mesh=mesh, in_specs=(P(), P(), P(axis), P()), out_specs=(P(), P(), P()))
    return sharded(params, opt_state, batch, key)

  return step


def _check(fmt, block, rounding, key, rotate, need_key=True, fmt_arg="fmt") -> tuple[str | None, Rounding]:
  """Validates the shared arguments; returns the element format's name (None: float32) and the rounding."""
  name = fmt.name if isinstance(fmt, Format) else fmt
  if name is not None and name not in FORMATS:
    raise ValueError(f"{fmt_arg}={fmt!r} must be one of {list(FORMATS)} or None (an exact float32 psum)")
  if isinstance(block, bool) or not isinstance(block, int | np.integer) or block < 1:
    raise ValueError(f"block={block!r} must be a positive integer")
  if rotate and block & (block - 1):
    raise ValueError(f"block={block} must be a power of two with rotate=True (the Hadamard rotation acts on "
                     "whole blocks)")
  mode = Rounding.parse(rounding, "rounding")
  if need_key and mode is Rounding.STOCHASTIC and key is None and name is not None:
    raise ValueError("rounding='stochastic' needs key=jax.random.key(...); got key=None")
  return name, mode


def _float_array(x, name: str = "x") -> jax.Array:
  x = jnp.asarray(x)
  if np.dtype(x.dtype) not in (np.float32, jnp.bfloat16, np.float16):
    raise TypeError(f"{name} must be a float32, bfloat16 or float16 array, got dtype {x.dtype}")
  return x


def _quantize(v: jax.Array, element: str, mode: Rounding, key: jax.Array | None) -> tuple[jax.Array, jax.Array]:
  """Blocks ``v (..., block)`` as int8 bytes of element codes and float32 scales ``(...)``, as they travel."""
  top = jnp.float32(as_format(element).max_finite)
  scale = jnp.maximum(div(abs_max(v, (-1,)), top), jnp.float32(_MIN_SCALE))
  codes = encode(div(v, scale), element, rounding=mode, key=key)
  return jax.lax.bitcast_convert_type(codes, jnp.int8), scale[..., 0]


def _dequantize(codes: jax.Array, scales: jax.Array, element: str) -> jax.Array:
  """``code value * scale`` per element, rounded once to float32."""
  return decode(jax.lax.bitcast_convert_type(codes, jnp.uint8), element) * scales[..., None]
