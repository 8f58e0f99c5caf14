"""Quantization configs for layers: one frozen, validated value per layer.

Every quantized matmul in :mod:`lpnum.nn` is seen as ``lhs (M, K) @ rhs (K, N)`` (a flax ``Dense`` computes
``inputs @ kernel``: lhs is the activation, rhs the weight). A :class:`QuantConfig` says how each operand of the
forward matmul is quantized (:class:`TensorQuant`), how the two backward matmuls are quantized
(:class:`Backward`: ``dlhs = g @ rhs.T`` and ``drhs = lhs.T @ g``), which arithmetic runs them (``backend``) and
whether the forward accumulator is emulated.

Granularity is stated relative to the matmul, so one config fits every layer whatever its shapes:
``"tensor"`` (one scale), ``"channel"`` (one scale per row of lhs / column of rhs: per token for activations,
per output channel for weights) or an int ``g`` (blocks of g along K, as MX and NVFP4 do).
"""

from __future__ import annotations

import dataclasses
import functools

from lpnum import blocks, mx, nvfp4
from lpnum import estimators as _estimators
from lpnum.formats import FloatFormat, Format, IntFormat, as_format
from lpnum.scaled import ScaledFormat, presets

__all__ = ["TensorQuant", "Backward", "QuantConfig", "SCALINGS", "ESTIMATORS", "BACKENDS"]

SCALINGS = ("none", "dynamic", "delayed", "static")
#: Estimators: every one of :mod:`lpnum.estimators`. Those that learn a parameter (``lsq``'s step, ``pact``'s clip)
#: get it from the layer (a Flax param).
ESTIMATORS = tuple(_estimators.ESTIMATORS)
LEARNED = {"lsq": "step", "pact": "alpha"}
_SCALED_ESTIMATORS = ("ste", "clipped_ste", "hadamard_ste", "lsq")
BACKENDS = ("fake", "int", "kernel")
_PRESETS = tuple(presets.PRESETS)


@dataclasses.dataclass(frozen=True)
class TensorQuant:
  """How one matmul operand is quantized.

  Attributes:
    fmt: an element format (``Format`` or name, e.g. ``"int8"``, ``"float8_e4m3fn"``), a block-format preset
      (``"mxfp8_e4m3"`` ... ``"mxint8"``, ``"nvfp4"``), or a :class:`~lpnum.ScaledFormat` used as a template for
      its scale format, scale rule, calibration and asymmetry (its own granularity is replaced by ``granularity``);
      None for the estimators that set their own levels (``pact``, ``dorefa_*``, ``denseshift``, ``xnor``...).
    granularity: ``"tensor"``, ``"channel"`` or a block size along K (default: ``"tensor"``; the presets' own
      block size for MX/NVFP4).
    scaling: ``"dynamic"`` (scales from each call's values), ``"delayed"`` (a per-tensor scale from the amax
      history of earlier calls, as FP8 training recipes do), ``"static"`` (a per-tensor scale from an amax
      calibrated over a few batches) or ``"none"`` (round to the format without any scale, e.g. raw E5M2
      gradients).
    history: the amax history length for ``delayed`` scaling.
    estimator: the quantizer and its gradient, any of :mod:`lpnum.estimators`: ``"ste"`` (straight-through),
      ``"clipped_ste"`` (zero where the operand saturates), ``"hadamard_ste"`` (rotated along K), ``"lsq"`` (a
      learned per-tensor step, Esser et al.), ``"pact"`` (a learned clip), ``"dorefa_weight"``,
      ``"dorefa_activation"``, ``"sign_ste"``, ``"xnor"``, ``"reste"``, ``"biper"``, ``"bitnet_ternary"``,
      ``"denseshift"``. The learned parameters (LSQ step, PACT clip) live in the layer.
    estimator_params: the estimator's own arguments, as a dict or ``(name, value)`` pairs (e.g.
      ``{"bits": 4}`` for ``pact``/``dorefa_*``/``denseshift``, ``{"variant": "median"}`` for ``bitnet_ternary``,
      ``{"alpha": 10.0}``: the initial PACT clip).
    rounding: ``"nearest_even"`` or ``"stochastic"`` (the layer, or the caller, supplies a key).

  Example:
    >>> from lpnum.nn import TensorQuant
    >>> TensorQuant("int8", granularity="channel").scaled_format("rhs").name
    'int8/per_channel(1,)/float32'
  """

  fmt: Format | ScaledFormat | str
  granularity: str | int | None = None
  scaling: str = "dynamic"
  history: int = 16
  estimator: str = "ste"
  rounding: str = "nearest_even"
  estimator_params: tuple | dict = ()

  def __post_init__(self) -> None:
    params = self.estimator_params
    if isinstance(params, dict):
      params = tuple(sorted(params.items()))
    if not isinstance(params, tuple) or not all(isinstance(p, tuple) and len(p) == 2 for p in params):
      raise TypeError(f"estimator_params={self.estimator_params!r} must be a dict or (name, value) pairs")
    object.__setattr__(self, "estimator_params", params)
    fmt = self.fmt
    if fmt is None:
      if self.estimator in _SCALED_ESTIMATORS:
        raise ValueError(f"fmt=None: estimator={self.estimator!r} needs a format")
    elif isinstance(fmt, str) and fmt in _PRESETS:
      if self.granularity is None:
        object.__setattr__(self, "granularity", 16 if fmt == "nvfp4" else 32)
    elif isinstance(fmt, ScaledFormat):
      pass
    elif isinstance(fmt, str | Format):
      object.__setattr__(self, "fmt", as_format(fmt))
    else:
      raise TypeError(f"fmt={fmt!r} must be a format, a format or preset name, or a ScaledFormat")
    if self.granularity is None:
      object.__setattr__(self, "granularity", "tensor")
    g = self.granularity
    if isinstance(g, bool) or not (g in ("tensor", "channel") or (isinstance(g, int) and g > 0)):
      raise ValueError(f"granularity={g!r} must be 'tensor', 'channel' or a positive block size")
    if self.scaling not in SCALINGS:
      raise ValueError(f"scaling={self.scaling!r}; expected one of {SCALINGS}")
    if self.scaling in ("delayed", "static") and g != "tensor":
      raise ValueError(f"scaling={self.scaling!r} keeps one per-tensor amax; granularity={g!r} must be 'tensor'")
    if self.scaling == "none":
      if self.fmt is not None and not isinstance(self.fmt, Format):
        raise ValueError(f"scaling='none' rounds to a plain element format, not {self.fmt}")
      if g != "tensor":
        raise ValueError(f"scaling='none' has no scales; granularity={g!r} must be 'tensor'")
    if isinstance(self.history, bool) or not isinstance(self.history, int) or self.history < 1:
      raise ValueError(f"history={self.history!r} must be a positive int")
    if self.estimator not in ESTIMATORS:
      raise ValueError(f"estimator={self.estimator!r}; expected one of {ESTIMATORS} (other estimators: "
                       "lpnum.estimators)")
    if self.estimator == "lsq" and (not isinstance(self.element, IntFormat) or g != "tensor"
                                    or self.scaling != "dynamic"):
      raise ValueError("estimator='lsq' learns one step for a per-tensor integer format: needs an int format, "
                       "granularity='tensor' and scaling='dynamic'")
    if self.rounding not in ("nearest_even", "stochastic"):
      raise ValueError(f"rounding={self.rounding!r}; expected 'nearest_even' or 'stochastic'")
    if self.estimator not in ("ste", "clipped_ste"):
      if g != "tensor" and self.estimator != "hadamard_ste":
        raise ValueError(f"estimator={self.estimator!r} sets its own scaling: granularity={g!r} must be 'tensor'")
      if self.rounding != "nearest_even":
        raise ValueError(f"estimator={self.estimator!r} rounds to nearest: rounding={self.rounding!r}")
      self._check_estimator()
    self.scaled_format("lhs")

  def _check_estimator(self) -> None:
    """Runs the estimator abstractly on a small operand, so that bad formats or parameters fail here."""
    import jax
    import jax.numpy as jnp

    params = dict(self.estimator_params)
    if self.estimator in LEARNED:
      params[LEARNED[self.estimator]] = jnp.ones((), jnp.float32)
    fmt = self.estimator_format("lhs")
    try:
      jax.eval_shape(lambda x: _estimators.estimate(x, self.estimator, fmt, **params), jnp.ones((4, 64)))
    except TypeError as e:
      raise ValueError(f"estimator={self.estimator!r} with estimator_params={self.estimator_params!r}: {e}") from None

  def estimator_format(self, role: str):
    """The format handed to the estimator (the scaled format for the STE family, the element format otherwise)."""
    if self.fmt is None:
      return None
    if self.estimator in _SCALED_ESTIMATORS and self.estimator != "lsq":
      return self.scaled_format(role)
    return self.element

  @property
  def element(self) -> Format | None:
    """The element format (None if the estimator sets its own levels)."""
    if self.fmt is None:
      return None
    if isinstance(self.fmt, ScaledFormat):
      return self.fmt.element
    if isinstance(self.fmt, str):
      return self.scaled_format("lhs").element
    return self.fmt

  @functools.cache  # noqa: B019  (frozen, hashable value)
  def scaled_format(self, role: str) -> ScaledFormat | Format:
    """The format of this operand in the 2-D matmul: ``role`` is ``"lhs"`` (M, K) or ``"rhs"`` (K, N).

    Returns the plain element format for ``scaling='none'``.
    """
    if role not in ("lhs", "rhs"):
      raise ValueError(f"role={role!r} must be 'lhs' or 'rhs'")
    if self.scaling == "none" or self.fmt is None:
      return self.fmt
    if self.estimator not in _SCALED_ESTIMATORS:
      return self.element
    k_axis, free_axis = (1, 0) if role == "lhs" else (0, 1)
    g = self.granularity
    if isinstance(self.fmt, str):
      if self.fmt == "nvfp4":
        if g != 16:
          raise ValueError(f"nvfp4 has blocks of 16; granularity={g!r}")
        return nvfp4.format(axis=k_axis)
      if not isinstance(g, int):
        raise ValueError(f"{self.fmt} is a block format: granularity={g!r} must be a block size")
      return mx.format(self.fmt, axis=k_axis, block_size=g)
    template = self.fmt if isinstance(self.fmt, ScaledFormat) else ScaledFormat(self.fmt)
    gran = (blocks.per_tensor() if g == "tensor" else blocks.per_channel(free_axis) if g == "channel"
            else blocks.per_block(g, k_axis))
    return dataclasses.replace(template, granularity=gran, name=None)


def _tensor_quant(value, name: str, same_ok: bool = False):
  if value is None or isinstance(value, TensorQuant) or (same_ok and value == "same"):
    return value
  if isinstance(value, str | Format | ScaledFormat):
    return TensorQuant(value)
  raise TypeError(f"{name}={value!r} must be a TensorQuant, a format, a format name or None")


@dataclasses.dataclass(frozen=True)
class Backward:
  """The quantization of one backward matmul.

  For ``dlhs = g @ rhs.T`` the gradient ``g`` is that matmul's lhs and ``rhs.T`` its rhs; for
  ``drhs = lhs.T @ g``, ``lhs.T`` is the lhs and ``g`` the rhs. Granularities are relative to that matmul.

  Attributes:
    grad: the output gradient's quantization (None: float).
    operand: the other operand's quantization; ``"same"`` reuses the forward-quantized operand (the FP8
      recipe), None uses the float operand.
  """

  grad: TensorQuant | None = None
  operand: TensorQuant | str | None = "same"

  def __post_init__(self) -> None:
    object.__setattr__(self, "grad", _tensor_quant(self.grad, "grad"))
    object.__setattr__(self, "operand", _tensor_quant(self.operand, "operand", same_ok=True))
    for name in ("grad", "operand"):
      value = getattr(self, name)
      if isinstance(value, TensorQuant) and value.scaling in ("delayed", "static"):
        raise ValueError(f"{name}.scaling={value.scaling!r}: backward operands are scaled 'dynamic' or 'none'")
      if isinstance(value, TensorQuant) and value.estimator != "ste":
        raise ValueError(f"{name}.estimator={value.estimator!r}: backward quantizers have no gradient")


def _is_fp8(fmt: Format) -> bool:
  return isinstance(fmt, FloatFormat) and fmt.bits == 8 and fmt.dtype is not None


@dataclasses.dataclass(frozen=True)
class QuantConfig:
  """A quantized layer's config: forward operands, backward matmuls, arithmetic and accumulator.

  Attributes:
    lhs: the forward lhs (a Dense layer's input activation), or None for float.
    rhs: the forward rhs (a Dense layer's kernel), or None for float.
    dlhs: the backward matmul ``g @ rhs.T`` (None: float, through the forward-quantized rhs).
    drhs: the backward matmul ``lhs.T @ g`` (None: float, through the forward-quantized lhs).
    backend: ``"fake"`` (quantize-dequantize, float32 matmuls: any formats), ``"int"`` (the matmuls run on the
      element codes: int8 x int8 -> int32, or FP8 x FP8 -> float32, then the scales; both operands of every
      quantized matmul need integer (at most 8 bits) or FP8 formats with ``tensor``/``channel`` granularity),
      or ``"kernel"`` (weights packed by :func:`lpnum.nn.ptq` run through :func:`lpnum.kernels.matmul`).
    accumulator: emulate the forward matmul's accumulator (:mod:`lpnum.kernels.accumulate`); an
      ``IntAccumulator`` needs ``backend='int'`` with integer formats. The backward matmuls are not emulated.

  Example:
    >>> from lpnum.nn import QuantConfig
    >>> cfg = QuantConfig.fp8()
    >>> cfg.lhs.fmt.name, cfg.dlhs.grad.fmt.name
    ('float8_e4m3fn', 'float8_e5m2')
  """

  lhs: TensorQuant | None = None
  rhs: TensorQuant | None = None
  dlhs: Backward | None = None
  drhs: Backward | None = None
  backend: str = "fake"
  accumulator: object | None = None

  def __post_init__(self) -> None:
    from lpnum.kernels import accumulate

    object.__setattr__(self, "lhs", _tensor_quant(self.lhs, "lhs"))
    object.__setattr__(self, "rhs", _tensor_quant(self.rhs, "rhs"))
    for name in ("dlhs", "drhs"):
      if getattr(self, name) is not None and not isinstance(getattr(self, name), Backward):
        raise TypeError(f"{name}={getattr(self, name)!r} must be a Backward or None")
    if self.backend not in BACKENDS:
      raise ValueError(f"backend={self.backend!r}; expected one of {BACKENDS}")
    acc_types = (accumulate.IntAccumulator, accumulate.FloatAccumulator, accumulate.AlignedAccumulator,
                 accumulate.ExactAccumulator)
    if self.accumulator is not None and not isinstance(self.accumulator, acc_types):
      raise TypeError(f"accumulator={self.accumulator!r} must be an lpnum.kernels.accumulate accumulator")
    if self.backend == "int":
      self._check_int(self.lhs, self.rhs, "lhs", "rhs")
      for name in ("dlhs", "drhs"):
        bwd = getattr(self, name)
        if bwd is not None and bwd.grad is not None:
          fwd_op = self.rhs if name == "dlhs" else self.lhs
          op = fwd_op if bwd.operand == "same" else bwd.operand
          pair = (bwd.grad, op) if name == "dlhs" else (op, bwd.grad)
          self._check_int(*pair, f"{name}.grad", f"{name}.operand")
    if isinstance(self.accumulator, accumulate.IntAccumulator):
      if self.backend != "int" or not isinstance(self.lhs.element, IntFormat):
        raise ValueError("an IntAccumulator adds integer products: it needs backend='int' with integer lhs and "
                         "rhs formats")
    elif self.accumulator is not None and (self.lhs is None or self.rhs is None):
      raise ValueError("an emulated accumulator needs both lhs and rhs quantized")

  @staticmethod
  def _check_int(a: TensorQuant | None, b: TensorQuant | None, name_a: str, name_b: str) -> None:
    for tq, name in ((a, name_a), (b, name_b)):
      if tq is None:
        raise ValueError(f"backend='int' runs a quantized matmul: {name} must be quantized, not None")
      if tq.granularity not in ("tensor", "channel"):
        raise ValueError(f"backend='int' needs {name}.granularity 'tensor' or 'channel' (scales outside the "
                         f"K sum), got {tq.granularity!r}")
      if tq.estimator != "ste":
        raise ValueError(f"backend='int' rounds the codes straight-through: {name}.estimator must be 'ste'")
      el = tq.element
      if not ((isinstance(el, IntFormat) and el.bits <= 8) or _is_fp8(el)):
        raise ValueError(f"backend='int' needs integer (<= 8 bits) or FP8 formats; {name} is "
                         f"{getattr(el, 'name', el)}")
      if isinstance(tq.fmt, ScaledFormat) and tq.fmt.asymmetric:
        raise ValueError(f"backend='int' needs symmetric formats; {name} has a zero point")
    if isinstance(a.element, IntFormat) != isinstance(b.element, IntFormat):
      raise ValueError(f"backend='int' multiplies like with like: {name_a} is {a.element.name}, {name_b} is "
                       f"{b.element.name}")

  @classmethod
  def fp8(cls, *, scaling: str = "dynamic", backend: str = "fake") -> QuantConfig:
    """The FP8 training recipe: E4M3 forward operands, E5M2 gradients, per-tensor scales."""
    e4m3 = TensorQuant("float8_e4m3fn", scaling=scaling)
    e5m2 = Backward(grad=TensorQuant("float8_e5m2"))
    return cls(lhs=e4m3, rhs=e4m3, dlhs=e5m2, drhs=e5m2, backend=backend)

  @classmethod
  def w8a8(cls, *, backward: bool = True) -> QuantConfig:
    """int8 x int8 -> int32: per-token activations, per-channel weights; int8 backward matmuls too."""
    grad = Backward(grad=TensorQuant("int8", granularity="channel"),
                    operand=TensorQuant("int8", granularity="channel")) if backward else None
    return cls(lhs=TensorQuant("int8", granularity="channel"), rhs=TensorQuant("int8", granularity="channel"),
               dlhs=grad, drhs=grad, backend="int")

  @classmethod
  def weight_only(cls, fmt: Format | ScaledFormat | str = "int8", granularity: str | int | None = "channel",
                  **kwargs) -> QuantConfig:
    """Weights quantized (per output channel by default), activations and gradients float."""
    if isinstance(fmt, str) and fmt in _PRESETS:
      granularity = None
    return cls(rhs=TensorQuant(fmt, granularity=granularity, **kwargs))
