"""The public face of the emulated accumulators: the accumulator values, :func:`matmul` (which picks the
reference, XLA or Pallas face) and :func:`reference_matmul`. The arithmetic they define is in the README
("Emulated accumulators: the arithmetic")."""

from __future__ import annotations

import dataclasses
from typing import ClassVar
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from lpnum.carrier import F32
from lpnum.validate import check_int
from lpnum.rounding import Rounding
from lpnum.formats import FloatFormat, Specials
from lpnum.formats import FLOAT32, as_format
from lpnum.kernels.accumulate import ops, tiled
from lpnum.kernels.accumulate.pallas import pallas
from lpnum.kernels.accumulate.reference import reference
from lpnum.kernels.accumulate.xla import xla

__all__ = ["IntAccumulator", "FloatAccumulator", "AlignedAccumulator", "ExactAccumulator", "AccumulatorStats",
           "matmul", "reference_matmul", "a2q_bound"]

_IMPLEMENTATIONS = ("auto", "pallas", "pallas_tpu", "pallas_gpu", "xla", "reference")
#: Input dtypes the kernels read directly; other (narrow) dtypes are widened exactly first.
_KERNEL_DTYPES = tuple(np.dtype(d) for d in (np.int8, np.uint8, np.int16, np.uint16, np.int32, np.uint32,
                                             np.float32, jnp.bfloat16, np.float16, jnp.float8_e4m3fn,
                                             jnp.float8_e5m2))


class _Accumulates:
  """What every accumulator shares: it can sum a matmul itself (the :class:`lpnum.qdot.Accumulator` protocol, through
  which :func:`lpnum.dot_general` emulates a layer's accumulator)."""

  #: Whether the accumulator adds integer products.
  integer: ClassVar[bool] = False

  def accumulate(self, a: jax.Array, b: jax.Array) -> jax.Array:
    """``a @ b`` summed in this accumulator (:func:`matmul`)."""
    return matmul(a, b, self)


@dataclasses.dataclass(frozen=True)
class IntAccumulator(_Accumulates):
  """A ``bits``-bit two's complement accumulator that wraps around or saturates after every addition.

  Attributes:
    bits: accumulator width, 2..32.
    overflow: ``"wrap"`` (modulo 2^bits) or ``"saturate"`` (clamp to [-2^(bits-1), 2^(bits-1) - 1]).

  Example:
    >>> import jax.numpy as jnp
    >>> from lpnum.kernels.accumulate import IntAccumulator, matmul
    >>> a, b = jnp.full((1, 3), 100, jnp.int8), jnp.ones((3, 1), jnp.int8)
    >>> matmul(a, b, IntAccumulator(8)).tolist(), matmul(a, b, IntAccumulator(8, "saturate")).tolist()
    ([[44]], [[127]])
  """

  bits: int
  overflow: str = "wrap"
  integer: ClassVar[bool] = True

  def __post_init__(self) -> None:
    check_int("bits", self.bits, 2, 32)
    if self.overflow not in ("wrap", "saturate"):
      raise ValueError(f"overflow={self.overflow!r}; expected 'wrap' or 'saturate'")


@dataclasses.dataclass(frozen=True)
class FloatAccumulator(_Accumulates):
  """A floating-point accumulator rounding every addition to ``format``.

  Attributes:
    format: a signed :class:`lpnum.FloatFormat` with zero, inf or NaN, at most 21 mantissa bits and values that
      float32 holds, or float32 itself; or its name (``"float16"``, ``"bfloat16"``, ``"float32"``); or
      ``(exponent_bits, mantissa_bits)`` for an IEEE-style format (bias 2^(e-1) - 1, subnormals, inf; ``(8, 23)``
      is float32).
    rounding: ``"nearest_even"`` or ``"stochastic"`` (then :func:`matmul` needs a ``key``).

  Example:
    >>> import jax.numpy as jnp
    >>> from lpnum.kernels.accumulate import FloatAccumulator, matmul
    >>> a, b = jnp.ones((1, 3), jnp.bfloat16), jnp.array([[2048.0], [1.0], [1.0]], jnp.bfloat16)
    >>> matmul(a, b, FloatAccumulator("float16")).tolist()  # 2048 + 1 rounds back to 2048, twice
    [[2048.0]]
  """

  format: FloatFormat | str | tuple[int, int]
  rounding: str = "nearest_even"

  def __post_init__(self) -> None:
    fmt = self.format
    if isinstance(fmt, tuple):
      if len(fmt) != 2:
        raise ValueError(f"format={fmt!r} must be (exponent_bits, mantissa_bits)")
      e, m = fmt
      try:
        check_int("exponent_bits", e, 2, 8)
        check_int("mantissa_bits", m, 0, 23)
      except (TypeError, ValueError) as err:
        raise type(err)(f"format={fmt!r}: {err}") from None
      fmt = FloatFormat(exponent_bits=e, mantissa_bits=m, bias=(1 << (e - 1)) - 1, specials=Specials.IEEE)
    elif isinstance(fmt, str):
      fmt = as_format(fmt)
    if not isinstance(fmt, FloatFormat):
      raise TypeError(f"format={self.format!r} must be a FloatFormat, a float format name or (exponent_bits, "
                      "mantissa_bits)")
    if not fmt.signed or not fmt.has_zero or not (fmt.has_inf or fmt.has_nan):
      raise ValueError(f"format={fmt.name} must be signed, have zero and have inf or NaN for overflow")
    if fmt.mantissa_bits > 21 and fmt != FLOAT32:
      raise ValueError(f"format={fmt.name} has {fmt.mantissa_bits} mantissa bits; at most 21 (sums are rounded "
                       "through float32 with two spare bits), or float32 itself")
    why = fmt.carrier_problem(F32)
    if why is not None:
      raise ValueError(f"format={fmt.name} cannot be emulated on float32: {why}")
    object.__setattr__(self, "format", fmt)
    mode = Rounding.parse(self.rounding, "rounding")
    if mode not in (Rounding.NEAREST_EVEN, Rounding.STOCHASTIC):
      raise ValueError(f"rounding={self.rounding!r}; expected 'nearest_even' or 'stochastic'")

  @classmethod
  def ieee(cls, exponent_bits: int, mantissa_bits: int, rounding: str = "nearest_even") -> FloatAccumulator:
    """An IEEE-style ``E{exponent_bits}M{mantissa_bits}`` accumulator (e.g. ``ieee(5, 6)`` for FP12).

    Example:
      >>> from lpnum.kernels.accumulate import FloatAccumulator
      >>> FloatAccumulator.ieee(5, 6).format.max_finite
      65024.0
    """
    return cls((exponent_bits, mantissa_bits), rounding)


@dataclasses.dataclass(frozen=True)
class AlignedAccumulator(_Accumulates):
  """FP8-tensor-core accumulation: per chunk, products aligned to the largest exponent and truncated to
  ``product_bits`` bits below it, summed exactly, then added to a float32 accumulator (see the module docs).

  Attributes:
    product_bits: bits kept below the chunk's largest exponent (Hopper: about 14), 1..30.
    chunk: products per chunk (promotion interval), with ``product_bits + 1 + ceil(log2(chunk)) <= 31`` so that
      chunk sums fit int32.

  Example:
    >>> import jax.numpy as jnp
    >>> from lpnum.kernels.accumulate import AlignedAccumulator, matmul
    >>> a, b = jnp.ones((1, 2), jnp.bfloat16), jnp.array([[1.0], [2.0**-5 + 2.0**-7]], jnp.bfloat16)
    >>> matmul(a, b, AlignedAccumulator(product_bits=5, chunk=2)).tolist()  # 2^-7 is truncated away
    [[1.03125]]
  """

  product_bits: int = 14
  chunk: int = 32

  def __post_init__(self) -> None:
    check_int("product_bits", self.product_bits, 1, 30)
    check_int("chunk", self.chunk, 1, 2**30)
    if self.product_bits + 1 + math.ceil(math.log2(self.chunk)) > 31:
      raise ValueError(f"chunk={self.chunk} with product_bits={self.product_bits}: chunk sums could overflow int32 "
                       "(need product_bits + 1 + ceil(log2(chunk)) <= 31)")


@dataclasses.dataclass(frozen=True)
class ExactAccumulator(_Accumulates):
  """The exact sum of the exact products, rounded once to float32 (nearest even) at the end.

  Example:
    >>> import jax.numpy as jnp
    >>> from lpnum.kernels.accumulate import ExactAccumulator, matmul
    >>> a, b = jnp.array([[1e30, 1.0, -1e30]]), jnp.ones((3, 1))
    >>> matmul(a, b, ExactAccumulator()).tolist()
    [[1.0]]
  """


Accumulator = IntAccumulator | FloatAccumulator | AlignedAccumulator | ExactAccumulator


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class AccumulatorStats:
  """Overflow statistics of one emulated matmul (a pytree: it passes through ``jit`` and ``vmap``).

  Attributes:
    overflowed: bool, the output's shape: whether that output's accumulator overflowed at least once (see the
      module docs for what overflow means for each accumulator).
  """

  overflowed: jax.Array

  @property
  def count(self) -> jax.Array:
    """Number of outputs that overflowed (int32)."""
    return jnp.sum(self.overflowed, dtype=jnp.int32)


def a2q_bound(input_bits: int, accumulator_bits: int, *, signed_input: bool = True) -> float:
  """The A2Q bound on the L1 norm of each output channel's integer weights: with
  ``sum_k |w[k, j]| <= a2q_bound(N, P)``, a P-bit signed accumulator never overflows for N-bit inputs, whatever the
  inputs and the order of the additions.

  From Colbert, Pappalardo and Petri-Koenig, "A2Q: Accumulator-Aware Quantization with Guaranteed Overflow
  Avoidance", ICCV 2023: ``||w||_1 <= (2^(P-1) - 1) * 2^(1_signed - N)``, where ``1_signed`` is 1 for signed
  inputs. It follows from ``|x| <= 2^(N - 1_signed)``: every partial sum is then at most ``2^(P-1) - 1`` in
  magnitude.

  Example:
    >>> from lpnum.kernels.accumulate import a2q_bound
    >>> a2q_bound(8, 16), a2q_bound(8, 16, signed_input=False)
    (255.9921875, 127.99609375)
  """
  check_int("input_bits", input_bits, 1, 32)
  check_int("accumulator_bits", accumulator_bits, 2, 64)
  if not isinstance(signed_input, bool):
    raise TypeError(f"signed_input={signed_input!r} must be a bool")
  return (2.0 ** (accumulator_bits - 1) - 1) * 2.0 ** (int(signed_input) - input_bits)


def matmul(a: ArrayLike, b: ArrayLike, accumulator: Accumulator, *, chunk: int | None = None,
           order: str = "sequential", key: jax.Array | None = None, return_stats: bool = False,
           implementation: str = "auto", block_sizes: tuple[int, int] | None = None,
           interpret: bool = False) -> jax.Array | tuple[jax.Array, AccumulatorStats]:
  """``a @ b`` with an emulated accumulator (semantics in the module docs; every backend is bit-exact).

  Args:
    a: (..., M, K) array; integer for :class:`IntAccumulator`, float (at most 32 bits) or integer (at most 16
      bits) for the others.
    b: (K, N) array, same rules.
    accumulator: an :class:`IntAccumulator`, :class:`FloatAccumulator`, :class:`AlignedAccumulator` or
      :class:`ExactAccumulator`.
    chunk: products per chunk for integer and float accumulators (None: one sequence of all K); the aligned
      accumulator takes its own ``chunk``.
    order: ``"sequential"`` or (integer accumulators, no chunks) ``"pairwise"``.
    key: ``jax.random.key`` for stochastic rounding (required then, unused otherwise).
    return_stats: also return an :class:`AccumulatorStats`.
    implementation: ``"auto"`` (Pallas on TPU and GPU, XLA elsewhere), ``"pallas"`` (the TPU or GPU kernel),
      ``"pallas_tpu"``, ``"pallas_gpu"``, ``"xla"`` or ``"reference"``. For ``"auto"`` and ``"pallas"`` the
      platform is chosen when the program is lowered (``jax.lax.platform_dependent``), as
      :func:`lpnum.kernels.matmul` does: a function traced on a CPU host and exported for ``tpu`` or ``cuda``
      carries that platform's kernel; lowering ``"pallas"`` for the CPU is an error.
    block_sizes: (bm, bn) output tile of the Pallas kernels; TPU: multiples of 128 (default (128, 128)), GPU:
      powers of 2 (default (32, 32)).
    interpret: run the Pallas kernel in interpret mode (any host).

  Returns:
    The (..., M, N) result (int32 or float32), and the stats if ``return_stats``.

  Raises:
    TypeError: an unsupported accumulator or input dtype.
    ValueError: bad shapes, chunk, order, implementation, block sizes or a missing key.

  Example:
    >>> import jax.numpy as jnp
    >>> from lpnum.kernels.accumulate import IntAccumulator, matmul
    >>> a = jnp.array([[100, 100, -100]], jnp.int8)
    >>> b = jnp.ones((3, 1), jnp.int8)
    >>> out, stats = matmul(a, b, IntAccumulator(8, "saturate"), return_stats=True)
    >>> out.tolist(), stats.overflowed.tolist()
    ([[27]], [[True]])
  """
  a, b, plan = _prepare(a, b, accumulator, chunk, order, key, return_stats)
  if implementation not in _IMPLEMENTATIONS:
    raise ValueError(f"implementation={implementation!r}; expected one of {list(_IMPLEMENTATIONS)}")
  if not isinstance(interpret, bool):
    raise TypeError(f"interpret={interpret!r} must be a bool")
  if interpret and implementation not in ("pallas", "pallas_tpu", "pallas_gpu"):
    raise ValueError(f"interpret=True is for the Pallas backends, not implementation={implementation!r}")
  if block_sizes is not None:
    _check_blocks(block_sizes, implementation)
  return _finish(a, b, plan, key, return_stats, implementation, block_sizes, interpret)


def reference_matmul(a: ArrayLike, b: ArrayLike, accumulator: Accumulator, *, chunk: int | None = None,
                     order: str = "sequential", key: jax.Array | None = None,
                     return_stats: bool = False) -> jax.Array | tuple[jax.Array, AccumulatorStats]:
  """The reference emulation (one addition and one rounding at a time); same arguments as :func:`matmul`.

  Example:
    >>> import jax.numpy as jnp
    >>> from lpnum.kernels.accumulate import IntAccumulator, reference_matmul
    >>> a, b = jnp.array([[100, 100, -100, -100]], jnp.int8), jnp.ones((4, 1), jnp.int8)
    >>> acc = IntAccumulator(8, "saturate")
    >>> reference_matmul(a, b, acc).tolist(), reference_matmul(a, b, acc, order="pairwise").tolist()
    ([[-73]], [[-1]])
  """
  a, b, plan = _prepare(a, b, accumulator, chunk, order, key, return_stats)
  return _finish(a, b, plan, key, return_stats, "reference", None, False)


def _prepare(a, b, accumulator, chunk, order, key, return_stats):
  """Validates everything at trace time; returns the (widened) inputs and the plan."""
  if not isinstance(accumulator, Accumulator):
    raise TypeError(f"accumulator={accumulator!r} must be an IntAccumulator, FloatAccumulator, AlignedAccumulator "
                    "or ExactAccumulator")
  _check_dtypes(_as_array(a, "a").dtype, _as_array(b, "b").dtype, accumulator)
  a, b = jnp.asarray(a), jnp.asarray(b)
  if a.ndim < 2:
    raise ValueError(f"a must have shape (..., M, K), got shape {a.shape}")
  if b.ndim != 2:
    raise ValueError(f"b must have shape (K, N), got shape {b.shape}")
  if a.shape[-1] != b.shape[0]:
    raise ValueError(f"a.shape={a.shape} and b.shape={b.shape} do not match: K={a.shape[-1]} vs {b.shape[0]}")
  if not isinstance(return_stats, bool):
    raise TypeError(f"return_stats={return_stats!r} must be a bool")
  if order not in ("sequential", "pairwise"):
    raise ValueError(f"order={order!r}; expected 'sequential' or 'pairwise'")
  if chunk is not None:
    check_int("chunk", chunk, 1, 2**31 - 1)
  a, b = _widen(a), _widen(b)
  k, n = b.shape
  fields = dict(k=k, n=n, chunk=chunk, stats=return_stats)
  if isinstance(accumulator, IntAccumulator):
    if order == "pairwise" and chunk is not None:
      raise ValueError(f"chunk={chunk} is for order='sequential'; the pairwise tree spans all of K")
    plan = tiled.Plan("int", pairwise=order == "pairwise", bits=accumulator.bits,
                      saturate=accumulator.overflow == "saturate", **fields)
  else:
    if order != "sequential":
      raise ValueError(f"order={order!r} is for integer accumulators; {type(accumulator).__name__} adds in order")
    if isinstance(accumulator, FloatAccumulator):
      mode = Rounding.parse(accumulator.rounding, "rounding")
      if mode is Rounding.STOCHASTIC and key is None:
        raise ValueError("rounding='stochastic' needs key=jax.random.key(...)")
      plan = tiled.Plan("float", fmt=accumulator.format, mode=mode, **fields)
    elif isinstance(accumulator, AlignedAccumulator):
      if chunk is not None and chunk != accumulator.chunk:
        raise ValueError(f"chunk={chunk}: the aligned accumulator's chunk is AlignedAccumulator.chunk="
                         f"{accumulator.chunk}")
      fields["chunk"] = accumulator.chunk
      plan = tiled.Plan("aligned", product_bits=accumulator.product_bits, **fields)
    else:
      if chunk is not None:
        raise ValueError(f"chunk={chunk}: the exact accumulator has no chunks")
      plan = tiled.Plan("exact", exact=ops.ExactPlan.of(a.dtype, b.dtype, k), **fields)
  return a, b, plan


def _as_array(x, name: str) -> jax.Array | np.ndarray | np.generic:
  """``x`` itself if it is an array: its dtype is checked before JAX canonicalizes it (float64 -> float32)."""
  if isinstance(x, jax.Array | np.ndarray | np.generic):
    return x
  raise TypeError(f"{name} must be an array, got {type(x).__name__}")


def _check_dtypes(a_dtype, b_dtype, accumulator) -> None:
  for name, dt in (("a", a_dtype), ("b", b_dtype)):
    dt = np.dtype(dt)
    integer = jnp.issubdtype(dt, jnp.integer)
    if isinstance(accumulator, IntAccumulator):
      if not integer:
        raise TypeError(f"{name}.dtype={dt}: IntAccumulator takes integer inputs")
    elif not ((jnp.issubdtype(dt, jnp.floating) and dt.itemsize <= 4) or (integer and dt.itemsize <= 2)):
      what = "ExactAccumulator" if isinstance(accumulator, ExactAccumulator) else type(accumulator).__name__
      raise TypeError(f"{name}.dtype={dt}: {what} takes floats of at most 32 bits and integers of at most 16 bits")
  if isinstance(accumulator, IntAccumulator):
    ia, ib = jnp.iinfo(a_dtype), jnp.iinfo(b_dtype)
    products = [int(x) * int(y) for x in (ia.min, ia.max) for y in (ib.min, ib.max)]
    if min(products) < -2**31 or max(products) > 2**31 - 1:
      raise TypeError(f"a.dtype={np.dtype(a_dtype)} and b.dtype={np.dtype(b_dtype)}: products reach "
                      f"[{min(products)}, {max(products)}], beyond int32; use narrower integer inputs")


def _widen(x: jax.Array) -> jax.Array:
  """Narrow dtypes the kernels do not read (float8 fnuz, float6, float4, e8m0, int4...) as bfloat16 or int8, which
  hold all their values."""
  if np.dtype(x.dtype) in _KERNEL_DTYPES:
    return x
  return x.astype(jnp.int8 if jnp.issubdtype(x.dtype, jnp.integer) else jnp.bfloat16)


def _check_blocks(block_sizes, implementation: str) -> None:
  if not (isinstance(block_sizes, tuple | list) and len(block_sizes) == 2
          and all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in block_sizes)):
    raise ValueError(f"block_sizes={block_sizes!r} must be two positive ints (bm, bn)")
  if implementation == "pallas_tpu" and any(v % 128 for v in block_sizes):
    raise ValueError(f"block_sizes={tuple(block_sizes)} must be multiples of 128 for implementation='pallas_tpu'")
  if implementation == "pallas_gpu" and any(v & (v - 1) for v in block_sizes):
    raise ValueError(f"block_sizes={tuple(block_sizes)} must be powers of 2 for implementation='pallas_gpu'")
  if implementation not in ("pallas_tpu", "pallas_gpu"):
    raise ValueError(f"block_sizes is for implementation='pallas_tpu' or 'pallas_gpu', not {implementation!r}")


def _finish(a, b, plan, key, return_stats, implementation, block_sizes, interpret):
  batch, m, n = a.shape[:-2], a.shape[-2], b.shape[1]
  words = ops.key_words(key) if plan.stochastic else None
  if plan.k == 0 or a.size == 0 or n == 0:
    zero = jnp.int32 if plan.kind == "int" else jnp.float32
    out, flags = jnp.zeros((*batch, m, n), zero), jnp.zeros((*batch, m, n), bool)
  else:
    blocks = None if block_sizes is None else tuple(block_sizes)
    out, flags = _run(a.reshape(-1, a.shape[-1]), b, words, plan, implementation, blocks, interpret)
    out, flags = out.reshape(*batch, m, n), flags.reshape(*batch, m, n)
  return (out, AccumulatorStats(flags)) if return_stats else out


@functools.partial(jax.jit, static_argnums=(3, 4, 5, 6))
def _run(a, b, words, plan, implementation, block_sizes, interpret):
  if implementation == "reference":
    ca, cb = tiled.compute_dtype(plan, a.dtype), tiled.compute_dtype(plan, b.dtype)
    return reference(plan, a.astype(ca), b.astype(cb), words)
  if implementation == "xla":
    return xla(plan, a, b, words)
  if implementation in ("pallas_tpu", "pallas_gpu") or interpret:
    target = "gpu" if implementation == "pallas_gpu" else "tpu"
    return pallas(plan, a, b, words, target=target, block=block_sizes, interpret=interpret)
  kernel = {t: functools.partial(pallas, plan, target=t, block=None, interpret=False) for t in ("tpu", "gpu")}
  default = functools.partial(xla, plan) if implementation == "auto" else None
  return jax.lax.platform_dependent(a, b, words, tpu=kernel["tpu"], cuda=kernel["gpu"], rocm=kernel["gpu"],
                                    default=default)
