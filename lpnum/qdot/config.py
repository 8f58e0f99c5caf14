"""The typed config of a quantized matmul: one frozen value per operand, per backward matmul, and for the whole.

Every quantized matmul is seen as ``lhs (M, K) @ rhs (K, N)`` (a flax ``Dense`` computes ``inputs @ kernel``:
lhs is the activation, rhs the weight). Granularities are lpnum's own (:func:`lpnum.per_tensor`,
:func:`lpnum.per_channel`, :func:`lpnum.per_block`, :func:`lpnum.per_tile`) with axes in that 2-D view; left
without an axis, ``per_channel()`` is the operand's free axis (rows of lhs: per token; columns of rhs: per output
channel) and ``per_block(g)`` runs along K, so one config fits every layer whatever its shapes. Each operand's
format is resolved once, when its config is built (:attr:`OperandQuant.lhs_format`, :attr:`~OperandQuant.rhs_format`),
and handed down as it is to the layers, PTQ and the kernels.
"""

from __future__ import annotations

import dataclasses
from typing import Protocol, runtime_checkable

import jax

from lpnum import blocks, estimators
from lpnum.blocks import Granularity
from lpnum.formats import FloatFormat, Format, IntFormat, as_format
from lpnum.rounding import ParsedEnum, Rounding
from lpnum.scaled import ScaledFormat
from lpnum.scaled import presets as _presets
from lpnum.validate import check_int, short

__all__ = ["Scaling", "Engine", "Accumulator", "OperandQuant", "BackwardQuant", "DotConfig", "SAME"]


class Scaling(ParsedEnum):
  """Where an operand's scales come from.

  * ``dynamic``: from each call's values.
  * ``delayed``: one per-tensor scale from the amax history of earlier calls (FP8 training recipes).
  * ``static``: one per-tensor scale from an amax calibrated over a few batches.
  * ``none``: no scale: round to a plain element format (e.g. raw E5M2 gradients).
  """

  DYNAMIC = "dynamic"
  DELAYED = "delayed"
  STATIC = "static"
  NONE = "none"


class Engine(ParsedEnum):
  """Which arithmetic runs the quantized matmuls.

  * ``fake``: quantize-dequantize, float32 matmuls (any formats).
  * ``int``: the matmuls (and convolutions) run on the element codes (int8 x int8 -> int32, or FP8 x FP8 ->
    float32), then the scales; both operands of every quantized matmul need integer (at most 8 bits) or FP8 formats
    with per-tensor or per-channel scales.
  * ``kernel``: weights packed by :func:`lpnum.nn.ptq` run through :func:`lpnum.kernels.matmul`.
  """

  FAKE = "fake"
  INT = "int"
  KERNEL = "kernel"


@runtime_checkable
class Accumulator(Protocol):
  """An emulated accumulator (:mod:`lpnum.kernels.accumulate` defines them): ``accumulate(a, b)`` is ``a @ b``
  summed in it; ``integer`` says whether it adds integer products."""

  integer: bool

  def accumulate(self, a: jax.Array, b: jax.Array) -> jax.Array: ...


#: The longest amax history of delayed scaling (a buffer of this many floats per operand).
MAX_HISTORY = 1 << 16

#: ``BackwardQuant(operand=SAME)``: the backward matmul reuses the forward-quantized operand (the FP8 recipe).
SAME = "same"


def _granularity(value, name: str) -> Granularity | None:
  if value is None or isinstance(value, Granularity):
    return value
  raise TypeError(f"{name}={value!r} must be a Granularity (lpnum.per_tensor(), lpnum.per_channel(), "
                  "lpnum.per_block(size), lpnum.per_tile(shape)) or None")


def _in_view(g: Granularity, role: str) -> Granularity:
  """``g`` with its axes in the 2-D view of ``role``: unset axes become the free axis (channel) or K (block)."""
  k_axis, free_axis = (1, 0) if role == "lhs" else (0, 1)
  if g.kind == "channel":
    return g.with_axes((free_axis,))
  if g.kind == "block":
    return g.with_axes((k_axis,))
  return g


@dataclasses.dataclass(frozen=True)
class OperandQuant:
  """How one matmul operand is quantized.

  Attributes:
    fmt: an element format (a :class:`~lpnum.Format` or its name), a preset name (``"mxfp8_e4m3"``...
      ``"nvfp4"``, blocks along K), a :class:`~lpnum.ScaledFormat` (a template for its scale format, rule,
      calibration and asymmetry, and for its granularity unless ``granularity`` is given), or None for the
      estimators that set their own levels (:class:`~lpnum.estimators.PACT`, ``DoReFaWeight``, ``XNOR``...).
    granularity: which elements share a scale, in the operand's 2-D view (see the module docs); default
      per-tensor (presets: their own blocks along K).
    scaling: a :class:`Scaling` (or its name).
    history: the amax history length for ``delayed`` scaling, 1 .. :data:`MAX_HISTORY`.
    estimator: the quantizer's gradient, an :class:`lpnum.estimators.Estimator` value (``STE()``,
      ``ClippedSTE()``, ``LSQ(grad_scale=...)``, ``PACT(bits=4)``...). Learned parameters (LSQ's step, PACT's
      clip) live in the layer.
    rounding: ``nearest_even`` or ``stochastic`` (the layer, or the caller, supplies a key).

  Example:
    >>> import lpnum
    >>> lpnum.OperandQuant("int8", lpnum.per_channel()).rhs_format.name
    'int8/per_channel(1,)/float32'
  """

  fmt: Format | ScaledFormat | str | None
  granularity: Granularity | None = None
  scaling: Scaling | str = Scaling.DYNAMIC
  history: int = 16
  estimator: estimators.Estimator = dataclasses.field(default_factory=estimators.STE)
  rounding: Rounding | str = Rounding.NEAREST_EVEN
  #: The format the lhs (M, K) operand is quantized to (as the estimator takes it), resolved once.
  lhs_format: Format | ScaledFormat | None = dataclasses.field(init=False, repr=False, compare=False)
  #: The format the rhs (K, N) operand is quantized to, resolved once.
  rhs_format: Format | ScaledFormat | None = dataclasses.field(init=False, repr=False, compare=False)

  def __post_init__(self) -> None:
    set_ = lambda name, value: object.__setattr__(self, name, value)
    set_("granularity", _granularity(self.granularity, "granularity"))
    set_("scaling", Scaling.parse(self.scaling, "scaling"))
    set_("rounding", Rounding.parse(self.rounding, "rounding"))
    if self.rounding not in (Rounding.NEAREST_EVEN, Rounding.STOCHASTIC):
      raise ValueError(f"rounding={self.rounding.value!r}; expected 'nearest_even' or 'stochastic'")
    est = self.estimator
    if not isinstance(est, estimators.Estimator):
      raise TypeError(f"estimator={est!r} must be an lpnum.estimators.Estimator value, e.g. "
                      "lpnum.estimators.STE() or LSQ()")
    fmt = self.fmt
    if isinstance(fmt, str) and fmt in _presets.PRESETS:
      if self.granularity is None:
        set_("granularity", blocks.per_block(_presets.PRESETS[fmt].block_size))
    elif isinstance(fmt, str | Format):
      set_("fmt", as_format(fmt))
    elif fmt is not None and not isinstance(fmt, ScaledFormat):
      raise TypeError(f"fmt={fmt!r} must be a format, a format or preset name, a ScaledFormat or None")
    if self.granularity is None:
      set_("granularity", self.fmt.granularity if isinstance(self.fmt, ScaledFormat) else blocks.per_tensor())
    g = self.granularity
    set_("history", check_int("history", self.history, 1, MAX_HISTORY))
    if self.scaling in (Scaling.DELAYED, Scaling.STATIC) and g.kind != "tensor":
      raise ValueError(f"scaling={self.scaling.value!r} keeps one per-tensor amax; granularity={g} must be "
                       "per_tensor()")
    if self.scaling is Scaling.NONE:
      if not isinstance(self.fmt, Format):
        raise ValueError(f"scaling='none' rounds to a plain element format, not {self.fmt}")
      if g.kind != "tensor":
        raise ValueError(f"scaling='none' has no scales; granularity={g} must be per_tensor()")
    if not isinstance(est, estimators.STE | estimators.ClippedSTE):
      if g.kind != "tensor" and not isinstance(est, estimators.HadamardSTE):
        raise ValueError(f"estimator={est!r} sets its own scaling: granularity={g} must be per_tensor()")
      if self.rounding is not Rounding.NEAREST_EVEN:
        raise ValueError(f"estimator={est!r} rounds to nearest: rounding={self.rounding.value!r}")
    if isinstance(est, estimators.LSQ) and self.scaling is not Scaling.DYNAMIC:
      raise ValueError("estimator=LSQ() learns one step for a per-tensor integer format: scaling must be 'dynamic'")
    if self.fmt is None and est.takes_format:
      raise ValueError(f"fmt=None: estimator={est!r} needs a format")
    for role in ("lhs", "rhs"):
      set_(f"{role}_format", self._resolve(role))
    est.check_format(self.lhs_format)

  def _resolve(self, role: str) -> Format | ScaledFormat | None:
    if self.fmt is None or self.scaling is Scaling.NONE:
      return self.fmt
    if not self.estimator.scaled:
      return self.element
    g = _in_view(self.granularity, role)
    if isinstance(self.fmt, str):
      name, preset = self.fmt, _presets.PRESETS[self.fmt]
      if g.kind != "block" or g.axes != _in_view(blocks.per_block(1), role).axes:
        raise ValueError(f"{name} is a block format: granularity={self.granularity} must be per_block(size) "
                         "along K")
      if name == "nvfp4" and g.sizes[0] != preset.block_size:
        raise ValueError(f"nvfp4 has blocks of {preset.block_size}; granularity={self.granularity}")
      if name == "nvfp4":
        return _presets.preset(name, axis=g.axes[0])
      return _presets.preset(name, axis=g.axes[0], scale_rule="floor", block_size=g.sizes[0])
    if isinstance(self.fmt, ScaledFormat) and self.fmt.granularity == g:
      return self.fmt
    template = self.fmt if isinstance(self.fmt, ScaledFormat) else ScaledFormat(self.fmt)
    return dataclasses.replace(template, granularity=g, name=None)

  @property
  def element(self) -> Format | None:
    """The element format (None if the estimator sets its own levels)."""
    if self.fmt is None:
      return None
    if isinstance(self.fmt, ScaledFormat):
      return self.fmt.element
    if isinstance(self.fmt, str):
      return _presets.preset(self.fmt).element
    return self.fmt

  def format_for(self, role: str) -> Format | ScaledFormat | None:
    """:attr:`lhs_format` or :attr:`rhs_format` by ``role`` (``"lhs"`` or ``"rhs"``)."""
    if role == "lhs":
      return self.lhs_format
    if role == "rhs":
      return self.rhs_format
    raise ValueError(f"role={role!r} must be 'lhs' or 'rhs'")

  @property
  def needs_state(self) -> bool:
    """Whether the operand needs per-call state: a given scale (delayed, static) or a learned parameter."""
    return self.scaling in (Scaling.DELAYED, Scaling.STATIC) or self.estimator.learned is not None


def _operand(value, name: str, same_ok: bool = False):
  if value is None or isinstance(value, OperandQuant) or (same_ok and value == SAME):
    return value
  if isinstance(value, str | Format | ScaledFormat):
    try:
      return OperandQuant(value)
    except (TypeError, ValueError) as err:
      raise type(err)(f"{name}={short(value)}: {err}") from None
  raise TypeError(f"{name}={short(value)} must be an OperandQuant, a format, a format name or None")


@dataclasses.dataclass(frozen=True)
class BackwardQuant:
  """The quantization of one backward matmul.

  For ``dlhs = g @ rhs.T`` the gradient ``g`` is that matmul's lhs and ``rhs.T`` its rhs; for
  ``drhs = lhs.T @ g``, ``lhs.T`` is the lhs and ``g`` the rhs. Granularities are relative to that matmul.

  Attributes:
    grad: the output gradient's quantization (None: float).
    operand: the other operand's quantization; :data:`SAME` reuses the forward-quantized operand (the FP8
      recipe), None uses the float operand.
  """

  grad: OperandQuant | None = None
  operand: OperandQuant | str | None = SAME

  def __post_init__(self) -> None:
    object.__setattr__(self, "grad", _operand(self.grad, "grad"))
    object.__setattr__(self, "operand", _operand(self.operand, "operand", same_ok=True))
    for name in ("grad", "operand"):
      value = getattr(self, name)
      if isinstance(value, OperandQuant) and value.scaling in (Scaling.DELAYED, Scaling.STATIC):
        raise ValueError(f"{name}.scaling={value.scaling.value!r}: backward operands are scaled 'dynamic' or "
                         "'none'")
      if isinstance(value, OperandQuant) and not isinstance(value.estimator, estimators.STE):
        raise ValueError(f"{name}.estimator={value.estimator!r}: backward quantizers have no gradient")


def _is_fp8(fmt: Format) -> bool:
  return isinstance(fmt, FloatFormat) and fmt.bits == 8 and fmt.dtype is not None


@dataclasses.dataclass(frozen=True)
class DotConfig:
  """A quantized dot_general's config: forward operands, backward matmuls, arithmetic and accumulator.

  Attributes:
    lhs: the forward lhs (a Dense layer's input activation), or None for float.
    rhs: the forward rhs (a Dense layer's kernel), or None for float.
    dlhs: the backward matmul ``g @ rhs.T`` (None: float, through the forward-quantized rhs).
    drhs: the backward matmul ``lhs.T @ g`` (None: float, through the forward-quantized lhs).
    engine: an :class:`Engine` (or its name): ``fake``, ``int`` or ``kernel``.
    accumulator: emulate the forward matmul's accumulator (an :mod:`lpnum.kernels.accumulate` accumulator); an
      integer one needs ``engine='int'`` with integer formats. The backward matmuls are not emulated.
    rotate: Hadamard-rotate both operands along each contracting axis before quantizing, with this block per axis
      (``"auto"``: each axis's largest power-of-two divisor; a power of two; None for no rotation).
      ``(lhs H)(H rhs) = lhs rhs``, H orthonormal and symmetric (over several contracting axes, the Kronecker
      product of the per-axis transforms), so the inverse is folded in exactly; gradients flow through the (linear)
      rotation. Delayed and static scales come from the rotated operand's amax. Not with packed (PTQ) weights,
      which are stored unrotated.

  Example:
    >>> import lpnum
    >>> cfg = lpnum.DotConfig.fp8()
    >>> cfg.lhs.fmt.name, cfg.dlhs.grad.fmt.name
    ('float8_e4m3fn', 'float8_e5m2')
  """

  lhs: OperandQuant | None = None
  rhs: OperandQuant | None = None
  dlhs: BackwardQuant | None = None
  drhs: BackwardQuant | None = None
  engine: Engine | str = Engine.FAKE
  accumulator: Accumulator | None = None
  rotate: int | str | None = None

  def __post_init__(self) -> None:
    object.__setattr__(self, "lhs", _operand(self.lhs, "lhs"))
    object.__setattr__(self, "rhs", _operand(self.rhs, "rhs"))
    object.__setattr__(self, "engine", Engine.parse(self.engine, "engine"))
    for name in ("dlhs", "drhs"):
      if getattr(self, name) is not None and not isinstance(getattr(self, name), BackwardQuant):
        raise TypeError(f"{name}={getattr(self, name)!r} must be a BackwardQuant or None")
    if self.accumulator is not None and not isinstance(self.accumulator, Accumulator):
      raise TypeError(f"accumulator={self.accumulator!r} must be an lpnum.kernels.accumulate accumulator")
    if self.rotate is not None and not isinstance(self.rotate, str):
      block = check_int("rotate", self.rotate, 2)
      if block & (block - 1):
        raise ValueError(f"rotate={block} must be None, 'auto' or a power-of-two block of at least 2")
      object.__setattr__(self, "rotate", block)
    elif self.rotate is not None and self.rotate != "auto":
      raise ValueError(f"rotate={self.rotate!r} must be None, 'auto' or a power-of-two block of at least 2")
    if self.engine is Engine.INT:
      self._check_int(self.lhs, self.rhs, "lhs", "rhs")
      for name in ("dlhs", "drhs"):
        bwd = getattr(self, name)
        if bwd is not None and bwd.grad is not None:
          fwd_op = self.rhs if name == "dlhs" else self.lhs
          op = fwd_op if bwd.operand == SAME else bwd.operand
          pair = (bwd.grad, op) if name == "dlhs" else (op, bwd.grad)
          self._check_int(*pair, f"{name}.grad", f"{name}.operand")
    if self.accumulator is not None and self.accumulator.integer:
      if self.engine is not Engine.INT or not isinstance(self.lhs.element, IntFormat):
        raise ValueError("an IntAccumulator adds integer products: it needs engine='int' with integer lhs and "
                         "rhs formats")
    elif self.accumulator is not None and (self.lhs is None or self.rhs is None):
      raise ValueError("an emulated accumulator needs both lhs and rhs quantized")

  @staticmethod
  def _check_int(a: OperandQuant | None, b: OperandQuant | None, name_a: str, name_b: str) -> None:
    for oq, name in ((a, name_a), (b, name_b)):
      if oq is None:
        raise ValueError(f"engine='int' runs a quantized matmul: {name} must be quantized, not None")
      if oq.granularity.kind not in ("tensor", "channel"):
        raise ValueError(f"engine='int' needs {name}.granularity per_tensor() or per_channel() (scales outside "
                         f"the K sum), got {oq.granularity}")
      if not isinstance(oq.estimator, estimators.STE):
        raise ValueError(f"engine='int' rounds the codes straight-through: {name}.estimator must be STE()")
      el = oq.element
      if not ((isinstance(el, IntFormat) and el.bits <= 8) or _is_fp8(el)):
        raise ValueError(f"engine='int' needs integer (<= 8 bits) or FP8 formats; {name} is "
                         f"{getattr(el, 'name', el)}")
      if isinstance(oq.fmt, ScaledFormat) and oq.fmt.asymmetric:
        raise ValueError(f"engine='int' needs symmetric formats; {name} has a zero point")
    if isinstance(a.element, IntFormat) != isinstance(b.element, IntFormat):
      raise ValueError(f"engine='int' multiplies like with like: {name_a} is {a.element.name}, {name_b} is "
                       f"{b.element.name}")

  @property
  def operands(self) -> tuple[OperandQuant, ...]:
    """Every operand config: the forward ones and those of the backward matmuls."""
    out = [self.lhs, self.rhs]
    for bwd in (self.dlhs, self.drhs):
      if bwd is not None:
        out += [bwd.grad, bwd.operand]
    return tuple(o for o in out if isinstance(o, OperandQuant))

  @property
  def needs_key(self) -> bool:
    """Whether some quantizer rounds stochastically (the caller supplies a key)."""
    return any(o.rounding is Rounding.STOCHASTIC for o in self.operands)

  @classmethod
  def fp8(cls, *, scaling: Scaling | str = Scaling.DYNAMIC, engine: Engine | str = Engine.FAKE) -> DotConfig:
    """The FP8 training recipe: E4M3 forward operands, E5M2 gradients, per-tensor scales."""
    e4m3 = OperandQuant("float8_e4m3fn", scaling=scaling)
    e5m2 = BackwardQuant(grad=OperandQuant("float8_e5m2"))
    return cls(lhs=e4m3, rhs=e4m3, dlhs=e5m2, drhs=e5m2, engine=engine)

  @classmethod
  def w8a8(cls, *, backward: bool = True) -> DotConfig:
    """int8 x int8 -> int32: per-token activations, per-channel weights; int8 backward matmuls too."""
    per_channel = OperandQuant("int8", blocks.per_channel())
    grad = BackwardQuant(grad=per_channel, operand=per_channel) if backward else None
    return cls(lhs=per_channel, rhs=per_channel, dlhs=grad, drhs=grad, engine=Engine.INT)

  @classmethod
  def weight_only(cls, fmt: Format | ScaledFormat | str = "int8", granularity: Granularity | None = None,
                  **kwargs) -> DotConfig:
    """Weights quantized (per output channel by default; presets: their blocks along K), activations and
    gradients float."""
    if granularity is None and not (isinstance(fmt, str) and fmt in _presets.PRESETS):
      granularity = blocks.per_channel()
    return cls(rhs=OperandQuant(fmt, granularity=granularity, **kwargs))
