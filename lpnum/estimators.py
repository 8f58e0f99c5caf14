"""Gradient estimators for quantizers: each a ``jax.custom_vjp`` with the published backward formula.

Quantizers are step functions, so training needs an estimator of their gradient. Every function here quantizes in
the forward pass exactly as lpnum's formats do and defines its backward pass as the paper does:

=====================  ===============================================================================
``ste``                straight-through: identity gradient (Bengio et al. 2013)
``clipped_ste``        identity inside the representable (or clipping) range, zero outside
``lsq``                learned step size (Esser et al. 2020), with its gradient scale
``pact``               learned clipping of activations (Choi et al. 2018)
``dorefa_weight``      DoReFa-Net weights (Zhou et al. 2016); ``dorefa_activation`` its activations
``sign_ste``           binary sign, gradient 1 inside |x| <= 1 (BinaryNet's hardtanh STE)
``xnor``               XNOR-Net weights: per-channel mean |w| times sign, with the paper's gradient
``reste``              ReSTE (Wu et al. 2023): sign forward, power-function derivative backward
``biper``              BiPer (Vargas et al. 2024): square wave forward, the sine's derivative backward
``bitnet_ternary``     BitNet b1.58 absmean ternary weights, or the median variant (b1.58 Reloaded)
``denseshift``         DenseShift: sign times a power of two, with no zero (sign-scale decomposition)
=====================  ===============================================================================

Formats are any lpnum format (or name) or :class:`~lpnum.scaled.ScaledFormat`; learned scales are arrays that
broadcast against ``x`` (a scalar per tensor or one per channel). Gradients of learned parameters are summed
over the elements that share them, as broadcasting does.
"""

from __future__ import annotations

import dataclasses
import math
from typing import ClassVar

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from lpnum.formats import Format, IntFormat, ShiftFormat, as_format
from lpnum.hadamard import fwht
from lpnum.quantize import quantize
from lpnum.rounding import Rounding
from lpnum.scaled import ScaledFormat, clip_range, fake_quantize
from lpnum.validate import as_float_array, check_axis, check_int, check_number, check_positive, short

__all__ = ["ste", "clipped_ste", "lsq", "pact", "dorefa_weight", "dorefa_activation", "sign_ste", "xnor", "reste",
           "biper", "bitnet_ternary", "denseshift", "hadamard_ste", "with_grad_mask", "Estimator", "STE", "ClippedSTE",
           "HadamardSTE", "LSQ", "PACT", "DoReFaWeight", "DoReFaActivation", "SignSTE", "XNOR", "ReSTE", "BiPer",
           "BitNetTernary", "DenseShift", "ESTIMATORS"]


def _float(x: ArrayLike, name: str = "x") -> jax.Array:
  return as_float_array(x, name)


def _fmt(fmt) -> Format | ScaledFormat:
  return fmt if isinstance(fmt, ScaledFormat) else as_format(fmt)


def _check_params(**params) -> dict:
  """The estimators' scalar parameters, checked by name (the functions and the estimator values share these)."""
  checks = {
      "bits": lambda v: _bits(v),
      "o": lambda v: check_number("o", v, at_least=1.0),
      "cap": lambda v: check_number("cap", v, positive=True),
      "omega": lambda v: check_number("omega", v, positive=True),
      "eps": lambda v: check_number("eps", v, positive=True),
      "alpha": lambda v: check_number("alpha", v, positive=True),
      "grad_scale": lambda v: None if v is None else check_number("grad_scale", v, positive=True),
      "variant": _variant,
      "axis": lambda v: tuple(check_int("axis", a) for a in v) if isinstance(v, tuple) else check_int("axis", v),
  }
  return {name: checks[name](value) for name, value in params.items()}


def _variant(v) -> str:
  if v not in ("absmean", "median"):
    raise ValueError(f"variant={short(v)}; expected 'absmean' or 'median'")
  return v


def _round_trip(x: jax.Array, fmt, **kwargs) -> jax.Array:
  if isinstance(fmt, ScaledFormat):
    return fake_quantize(x, fmt, **kwargs)
  return quantize(x, fmt, **kwargs)


def _int_format(fmt, name: str = "fmt") -> IntFormat:
  fmt = as_format(fmt)
  if not isinstance(fmt, IntFormat):
    raise ValueError(f"{name}={fmt.name} must be an integer format (e.g. 'int4', 'uint8')")
  return fmt


def _bits(bits, lo: int = 1, hi: int = 16) -> int:
  return check_int("bits", bits, lo, hi)


@jax.custom_vjp
def with_grad_mask(y: jax.Array, x: jax.Array, mask: jax.Array) -> jax.Array:
  """``y`` forward; the cotangent of the result reaches ``x`` where ``mask`` holds (and nowhere else, ``y``
  included): the gradient of clipped straight-through estimators."""
  return y


with_grad_mask.defvjp(lambda y, x, mask: (y, mask),
                       lambda mask, g: (jnp.zeros_like(g), jnp.where(mask, g, jnp.zeros_like(g)), None))


# ---- straight-through ----------------------------------------------------------------------------------------
def ste(x: ArrayLike, fmt: Format | ScaledFormat | str, **kwargs) -> jax.Array:
  """``x`` rounded to ``fmt`` with the identity gradient; ``kwargs`` go to quantize/fake_quantize.

  Example:
    >>> import jax, jax.numpy as jnp, lpnum
    >>> jax.grad(lambda v: lpnum.estimators.ste(v, "int4").sum())(jnp.array([0.3, 9.0])).tolist()
    [1.0, 1.0]
  """
  return _round_trip(_float(x), _fmt(fmt), **kwargs)


def clipped_ste(x: ArrayLike, fmt: Format | ScaledFormat | str, **kwargs) -> jax.Array:
  """``x`` rounded to ``fmt``; gradient 1 where ``x`` lies in the representable range (for a scaled format, its
  block's clipping range ``[S * element min, S * element max]``), 0 outside.

  Example:
    >>> import jax, jax.numpy as jnp, lpnum
    >>> jax.grad(lambda v: lpnum.estimators.clipped_ste(v, "int4").sum())(jnp.array([0.3, 9.0])).tolist()
    [1.0, 0.0]
  """
  x = _float(x)
  fmt = _fmt(fmt)
  y = _round_trip(x, fmt, **kwargs)
  if isinstance(fmt, ScaledFormat):
    lo, hi = clip_range(jax.lax.stop_gradient(x), fmt, scale=kwargs.get("scale"), pad=kwargs.get("pad", False))
  else:
    lo, hi = fmt.min_value, fmt.max_finite
  return with_grad_mask(y, x, (x >= lo) & (x <= hi))


# ---- learned step size and clipping ----------------------------------------------------------------------------
def lsq(x: ArrayLike, step: ArrayLike, fmt: IntFormat | str = "int8", *,
        grad_scale: float | None = None) -> jax.Array:
  """LSQ: ``step * clamp(round(x / step), qn, qp)`` with a trainable ``step`` (Esser et al., ICLR 2020).

  Gradients (v = x / step): ``dx = 1`` for ``qn < v < qp``, else 0; ``dstep = round(v) - v`` inside, ``qn``
  or ``qp`` where clamped, times ``grad_scale`` (default ``1 / sqrt(x.size * qp)``, the paper's ``g``).
  Rounding is to nearest, ties to even.
  """
  x, step = _float(x), _float(check_positive("step", step, learned=True), "step")
  fmt = _int_format(fmt)
  grad_scale = _check_params(grad_scale=grad_scale)["grad_scale"]
  if grad_scale is None:
    grad_scale = 1.0 / math.sqrt(max(x.size, 1) * fmt.max_finite)
  return _lsq(x, step, fmt.min_value, fmt.max_finite, float(grad_scale))


@jax.custom_vjp
def _lsq(x, step, qn, qp, g):
  return step * jnp.clip(jnp.round(x / step), qn, qp)


def _lsq_fwd(x, step, qn, qp, g):
  return _lsq(x, step, qn, qp, g), (x, step, qn, qp, g)


def _lsq_bwd(res, ct):
  x, step, qn, qp, g = res
  v = x / step
  low, high = v <= qn, v >= qp
  inside = ~(low | high)
  dstep = jnp.where(low, qn, jnp.where(high, qp, jnp.round(v) - v)) * g
  return (jnp.where(inside, ct, 0), _sum_to(ct * dstep, jnp.shape(step)), None, None, None)


_lsq.defvjp(_lsq_fwd, _lsq_bwd)


def _sum_to(v: jax.Array, shape) -> jax.Array:
  """Sums ``v`` down to ``shape`` (the inverse of broadcasting)."""
  lead = v.ndim - len(shape)
  v = v.sum(axis=tuple(range(lead))) if lead else v
  axes = tuple(i for i, d in enumerate(shape) if d == 1 and v.shape[i] != 1)
  return v.sum(axis=axes, keepdims=True).reshape(shape) if axes else v.reshape(shape)


def pact(x: ArrayLike, alpha: ArrayLike, bits: int = 4) -> jax.Array:
  """PACT: ``y = clip(x, 0, alpha)`` quantized to ``2^bits - 1`` levels of ``alpha / (2^bits - 1)`` (Choi et al.).

  Gradients: ``dx = 1`` for ``0 <= x < alpha``, else 0; ``dalpha = 1`` where ``x >= alpha``, else 0 (the paper's
  straight-through gradient of the clipping level).
  """
  x, alpha = _float(x), _float(check_positive("alpha", alpha, learned=True), "alpha")
  levels = float((1 << _bits(bits)) - 1)
  return _pact(x, alpha, levels)


@jax.custom_vjp
def _pact(x, alpha, levels):
  step = alpha / levels
  return jnp.round(jnp.clip(x, 0, alpha) / step) * step


def _pact_fwd(x, alpha, levels):
  return _pact(x, alpha, levels), (x, alpha)


def _pact_bwd(res, ct):
  x, alpha = res
  dx = jnp.where((x >= 0) & (x < alpha), ct, 0)
  return dx, _sum_to(jnp.where(x >= alpha, ct, 0), jnp.shape(alpha)), None


_pact.defvjp(_pact_fwd, _pact_bwd)


# ---- DoReFa ---------------------------------------------------------------------------------------------------------
def _quantize_k(r: jax.Array, bits: int) -> jax.Array:
  """DoReFa's quantize_k of r in [0, 1]: round((2^k - 1) r) / (2^k - 1), straight-through."""
  n = float((1 << bits) - 1)
  return r + jax.lax.stop_gradient(jnp.round(r * n) / n - r)


def dorefa_weight(w: ArrayLike, bits: int) -> jax.Array:
  """DoReFa-Net weights: ``2 quantize_k(tanh(w) / (2 max|tanh w|) + 1/2) - 1``; for 1 bit ``sign(w) * mean|w|``.

  quantize_k is straight-through; the tanh and the normalisation are differentiated as they are. ``bits``: 1 to 16
  (as for the other estimators of k-bit levels).
  """
  w = _float(w, "w")
  bits = _bits(bits)
  if bits == 1:
    e = jax.lax.stop_gradient(jnp.mean(jnp.abs(w)))
    return w + jax.lax.stop_gradient(jnp.where(w >= 0, e, -e) - w)
  t = jnp.tanh(w)
  r = t / (2 * jnp.max(jnp.abs(t))) + 0.5
  return 2 * _quantize_k(r, bits) - 1


def dorefa_activation(x: ArrayLike, bits: int) -> jax.Array:
  """DoReFa-Net activations: ``quantize_k(clip(x, 0, 1))``; gradient 1 inside [0, 1], 0 outside. ``bits``: 1 to
  16."""
  x = _float(x)
  y = _quantize_k(jnp.clip(x, 0, 1), _bits(bits))
  return with_grad_mask(y, x, (x >= 0) & (x <= 1))


# ---- binary ---------------------------------------------------------------------------------------------------------
def _sign(x: jax.Array) -> jax.Array:
  """+1 for x >= 0 (zero included, as lpnum's binary format), -1 below."""
  return jnp.where(x >= 0, jnp.ones_like(x), -jnp.ones_like(x))


def sign_ste(x: ArrayLike) -> jax.Array:
  """Binary sign (``+1`` for ``x >= 0``) with BinaryNet's gradient: 1 for ``|x| <= 1``, else 0."""
  x = _float(x)
  return with_grad_mask(_sign(x), x, jnp.abs(x) <= 1)


def xnor(w: ArrayLike, axis: int | tuple[int, ...] = -1) -> jax.Array:
  """XNOR-Net weights ``alpha * sign(w)``, ``alpha`` the mean ``|w|`` per output channel (``axis`` names the
  channel axes; the mean runs over the others).

  Gradient, as the paper gives it: ``dW = dW~ * (1/n + alpha * 1{|w| <= 1})``, ``n`` the elements per channel.
  """
  w = _float(w, "w")
  axes = axis if isinstance(axis, tuple) else (axis,)
  keep = {check_axis("axis", a, w.ndim) for a in axes}
  if len(keep) != len(axes):
    raise ValueError(f"axis={axis} names the same axis twice")
  reduce = tuple(i for i in range(w.ndim) if i not in keep)
  n = math.prod(w.shape[i] for i in reduce)
  return _xnor(w, reduce, float(n))


@jax.custom_vjp
def _xnor_core(w, alpha, inv_n):
  return alpha * _sign(w)


def _xnor_fwd(w, alpha, inv_n):
  return _xnor_core(w, alpha, inv_n), (w, alpha, inv_n)


def _xnor_bwd(res, ct):
  w, alpha, inv_n = res
  return ct * (inv_n + alpha * (jnp.abs(w) <= 1)), jnp.zeros_like(alpha), None


_xnor_core.defvjp(_xnor_fwd, _xnor_bwd)


def _xnor(w, reduce, n):
  alpha = jax.lax.stop_gradient(jnp.mean(jnp.abs(w), axis=reduce, keepdims=True))
  return _xnor_core(w, alpha, 1.0 / n)


def reste(x: ArrayLike, o: float = 3.0, cap: float = 10.0) -> jax.Array:
  """ReSTE: sign forward; backward the derivative of ``sign(x) |x|^(1/o)``, ``(1/o) |x|^(1/o - 1)``, capped at
  ``cap`` (near 0 it diverges) and zero for ``|x| > 1`` (Wu et al., ICCV 2023). ``o = 1`` is the clipped STE.
  """
  x = _float(x)
  p = _check_params(o=o, cap=cap)
  return _reste(x, p["o"], p["cap"])


@jax.custom_vjp
def _reste(x, o, cap):
  return _sign(x)


def _reste_fwd(x, o, cap):
  return _sign(x), (x, o, cap)


def _reste_bwd(res, ct):
  x, o, cap = res
  a = jnp.abs(x)
  d = jnp.minimum(jnp.where(a > 0, (1 / o) * a ** (1 / o - 1), cap), cap)
  return jnp.where(a <= 1, ct * d, 0), None, None


_reste.defvjp(_reste_fwd, _reste_bwd)


def biper(x: ArrayLike, omega: float = math.pi) -> jax.Array:
  """BiPer: the square wave ``sign(sin(omega x))`` forward and ``omega cos(omega x)``, the derivative of the sine
  of the same period, backward (Vargas et al., CVPR 2024)."""
  x = _float(x)
  return _biper(x, _check_params(omega=omega)["omega"])


@jax.custom_vjp
def _biper(x, omega):
  return _sign(jnp.sin(omega * x))


def _biper_fwd(x, omega):
  return _biper(x, omega), (x, omega)


def _biper_bwd(res, ct):
  x, omega = res
  return ct * omega * jnp.cos(omega * x), None


_biper.defvjp(_biper_fwd, _biper_bwd)


# ---- ternary and shift ----------------------------------------------------------------------------------------
def bitnet_ternary(w: ArrayLike, variant: str = "absmean", eps: float = 1e-5) -> jax.Array:
  """BitNet b1.58 weights: ``gamma * clip(round(w / (gamma + eps)), -1, 1)`` with ``gamma`` the mean ``|w|``
  (``absmean``) or its median (``median``, BitNet b1.58 Reloaded), straight-through (identity gradient)."""
  w = _float(w, "w")
  eps = _check_params(variant=variant, eps=eps)["eps"]
  gamma = jnp.mean(jnp.abs(w)) if variant == "absmean" else jnp.median(jnp.abs(w))
  gamma = jax.lax.stop_gradient(gamma)
  q = jnp.clip(jnp.round(w / (gamma + eps)), -1, 1) * gamma
  return w + jax.lax.stop_gradient(q - w)


def denseshift(w: ArrayLike, bits: int = 4, scale: ArrayLike | None = None) -> jax.Array:
  """DenseShift weights: ``scale * s * 2^p``, ``s`` in {-1, +1} and ``p`` in ``[-(2^(bits-1) - 1), 0]`` (no zero),
  from the sign-scale decomposition ``w = sign(w) * |w|`` with ``|w| / scale`` rounded to a power of two
  (nearest, on the value); straight-through on both factors. ``scale`` defaults to the largest power of two not
  above ``max|w|``.
  """
  w = _float(w, "w")
  bits = _bits(bits, 2, 8)
  fmt = ShiftFormat(emin=-((1 << (bits - 1)) - 1), emax=0, has_zero=False)
  if scale is None:
    amax = jax.lax.stop_gradient(jnp.max(jnp.abs(w)))
    _, e = jnp.frexp(jnp.maximum(amax, jnp.finfo(w.dtype).tiny))  # the exponent from the bits, not a log2
    scale = jnp.ldexp(jnp.ones((), w.dtype), e - 1)
  else:
    scale = _float(check_positive("scale", scale), "scale")
  return scale * quantize(w / scale, fmt)


# ---- Hadamard-rotated quantization ------------------------------------------------------------------------------
def hadamard_ste(x: ArrayLike, fmt: Format | ScaledFormat | str, axis: int = -1, block: int | str | None = "auto",
                 **kwargs) -> jax.Array:
  """``H q(H x)`` along ``axis``: rotate with the fast Walsh-Hadamard transform, quantize (straight-through), and
  rotate back (the orthonormal H is its own inverse, so without quantization the result is ``x`` up to float
  rounding). Outliers spread over the rotated axis before quantizing (Xi et al. 2023; HALO). ``block`` as in
  :func:`lpnum.hadamard.fwht` (block-diagonal for lengths that are not powers of two).

  Example:
    >>> import jax.numpy as jnp, lpnum
    >>> x = jnp.array([5.0, 1.0, 1.0, 1.0])  # H x = [4, 2, 2, 2]: exact in int4, so x comes back
    >>> lpnum.estimators.hadamard_ste(x, "int4").tolist()
    [5.0, 1.0, 1.0, 1.0]
  """
  x = _float(x)
  return fwht(ste(fwht(x, axis, block=block), fmt, **kwargs), axis, block=block)


# ---- estimators as values ----------------------------------------------------------------------------------------
class Estimator:
  """An estimator as a value (a frozen dataclass), the form quantization configs take.

  ``estimator(x, fmt, param=..., axis=..., rounding=..., key=..., scale=..., pad=...)`` quantizes ``x`` with the
  published backward formula. Subclasses state what they take:

  * ``takes_format``: whether the estimator rounds to a given format (else it sets its own levels; ``fmt`` must be
    None or, for the binary and ternary ones, that very format);
  * ``scaled``: whether that format may be a :class:`~lpnum.ScaledFormat` (per-channel or block scales);
  * ``learned``: the name of the parameter it learns (LSQ's ``step``, PACT's ``alpha``), passed as ``param``.
  """

  takes_format: ClassVar[bool] = True
  scaled: ClassVar[bool] = False
  learned: ClassVar[str | None] = None

  def check_format(self, fmt: Format | ScaledFormat | None) -> None:
    """Raises ValueError if the estimator cannot quantize to ``fmt``."""
    name = type(self).__name__
    if self.takes_format and fmt is None:
      raise ValueError(f"{name} quantizes to a format: fmt must not be None")
    if isinstance(fmt, ScaledFormat) and not self.scaled:
      raise ValueError(f"{name} rounds to an element format, not the scaled format {fmt.name}")

  def init_param(self, x: jax.Array, fmt: Format | None) -> jax.Array:
    """The initial value of the learned parameter, from the first operand seen."""
    raise TypeError(f"{type(self).__name__} learns no parameter")

  def __call__(self, x: ArrayLike, fmt: Format | ScaledFormat | None = None, *, param: jax.Array | None = None,
               axis: int = -1, rounding: str = "nearest_even", key: jax.Array | None = None,
               scale: ArrayLike | None = None, pad: bool = False) -> jax.Array:
    raise NotImplementedError


def _rounding_kwargs(fmt, rounding, key, scale, pad) -> dict:
  kwargs = dict(rounding=rounding, key=key if rounding in ("stochastic", Rounding.STOCHASTIC) else None)
  if isinstance(fmt, ScaledFormat):
    kwargs.update(scale=scale, pad=pad)
  return kwargs


def _nearest_only(est: Estimator, rounding: str) -> None:
  if rounding != "nearest_even":
    raise ValueError(f"{type(est).__name__} rounds to nearest: rounding={rounding!r}")


@dataclasses.dataclass(frozen=True)
class STE(Estimator):
  """:func:`ste` as a value: any format, scaled or not."""

  scaled: ClassVar[bool] = True

  def __call__(self, x, fmt=None, *, param=None, axis=-1, rounding="nearest_even", key=None, scale=None, pad=False):
    return ste(x, fmt, **_rounding_kwargs(fmt, rounding, key, scale, pad))


@dataclasses.dataclass(frozen=True)
class ClippedSTE(Estimator):
  """:func:`clipped_ste` as a value: any format, scaled or not."""

  scaled: ClassVar[bool] = True

  def __call__(self, x, fmt=None, *, param=None, axis=-1, rounding="nearest_even", key=None, scale=None, pad=False):
    return clipped_ste(x, fmt, **_rounding_kwargs(fmt, rounding, key, scale, pad))


@dataclasses.dataclass(frozen=True)
class HadamardSTE(Estimator):
  """:func:`hadamard_ste` as a value: rotate along ``axis`` (a matmul's K), quantize, rotate back."""

  block: int | str | None = "auto"
  scaled: ClassVar[bool] = True

  def __call__(self, x, fmt=None, *, param=None, axis=-1, rounding="nearest_even", key=None, scale=None, pad=False):
    _nearest_only(self, rounding)
    return hadamard_ste(x, fmt, axis=axis, block=self.block)


@dataclasses.dataclass(frozen=True)
class LSQ(Estimator):
  """:func:`lsq` as a value: a learned per-tensor step for an integer format.

  The step starts at ``2 mean|x| / sqrt(Q_P)`` of the first operand seen (Esser et al.).
  """

  grad_scale: float | None = None
  learned: ClassVar[str | None] = "step"

  def __post_init__(self):
    _check_params(grad_scale=self.grad_scale)

  def check_format(self, fmt):
    super().check_format(fmt)
    _int_format(fmt)

  def init_param(self, x, fmt):
    return 2.0 * jnp.mean(jnp.abs(x)).astype(jnp.float32) / math.sqrt(fmt.max_finite) + 1e-8

  def __call__(self, x, fmt=None, *, param=None, axis=-1, rounding="nearest_even", key=None, scale=None, pad=False):
    _nearest_only(self, rounding)
    if param is None:
      raise ValueError("LSQ learns its step: pass param=")
    return lsq(x, param, fmt, grad_scale=self.grad_scale)


@dataclasses.dataclass(frozen=True)
class _Levels(Estimator):
  """Estimators that set their own levels: ``fmt`` must be None (or, where ``allowed`` names one, that format)."""

  takes_format: ClassVar[bool] = False
  allowed: ClassVar[str | None] = None

  def check_format(self, fmt):
    if fmt is None:
      return
    name = type(self).__name__
    el = fmt.element if isinstance(fmt, ScaledFormat) else as_format(fmt)
    if self.allowed is None:
      raise ValueError(f"{name} sets its own levels; drop fmt={el.name}")
    if isinstance(fmt, ScaledFormat) or el != as_format(self.allowed):
      raise ValueError(f"{name} quantizes to {self.allowed}; fmt={fmt.name} is not")


@dataclasses.dataclass(frozen=True)
class PACT(_Levels):
  """:func:`pact` as a value: ``bits``-bit activations under a learned clip starting at ``alpha`` (Choi et al.
  start at 10)."""

  bits: int = 4
  alpha: float = 10.0
  learned: ClassVar[str | None] = "alpha"

  def __post_init__(self):
    _check_params(bits=self.bits, alpha=self.alpha)

  def init_param(self, x, fmt):
    return jnp.asarray(self.alpha, jnp.float32)

  def __call__(self, x, fmt=None, *, param=None, axis=-1, rounding="nearest_even", key=None, scale=None, pad=False):
    _nearest_only(self, rounding)
    if param is None:
      raise ValueError("PACT learns its clip: pass param=")
    return pact(x, param, self.bits)


def _levels_estimator(name: str, fn, doc: str, allowed: str | None = None, **fields):
  """A _Levels dataclass named ``name`` whose call is ``fn(x, **fields)``."""
  def call(self, x, fmt=None, *, param=None, axis=-1, rounding="nearest_even", key=None, scale=None, pad=False):
    _nearest_only(self, rounding)
    return fn(x, **{f.name: getattr(self, f.name) for f in dataclasses.fields(self)})

  def post_init(self):
    _check_params(**{name: getattr(self, name) for name in fields})

  ns = {"__call__": call, "__post_init__": post_init, "__doc__": doc, "allowed": allowed,
        "__annotations__": {k: type(v) for k, v in fields.items()}, **fields}
  cls = type(name, (_Levels,), ns)
  cls.__annotations__["allowed"] = ClassVar[str | None]
  return dataclasses.dataclass(frozen=True)(cls)


DoReFaWeight = _levels_estimator("DoReFaWeight", dorefa_weight, ":func:`dorefa_weight` as a value.", bits=4)
DoReFaActivation = _levels_estimator("DoReFaActivation", dorefa_activation, ":func:`dorefa_activation` as a value.",
                                     bits=4)
SignSTE = _levels_estimator("SignSTE", sign_ste, ":func:`sign_ste` as a value (``fmt``: None or ``binary``).",
                            allowed="binary")
XNOR = _levels_estimator("XNOR", xnor, ":func:`xnor` as a value (``fmt``: None or ``binary``).", allowed="binary",
                         axis=-1)
ReSTE = _levels_estimator("ReSTE", reste, ":func:`reste` as a value (``fmt``: None or ``binary``).", allowed="binary",
                          o=3.0, cap=10.0)
BiPer = _levels_estimator("BiPer", biper, ":func:`biper` as a value (``fmt``: None or ``binary``).", allowed="binary",
                          omega=math.pi)
BitNetTernary = _levels_estimator("BitNetTernary", bitnet_ternary,
                                  ":func:`bitnet_ternary` as a value (``fmt``: None or ``ternary``).",
                                  allowed="ternary", variant="absmean", eps=1e-5)
DenseShift = _levels_estimator("DenseShift", denseshift, ":func:`denseshift` as a value.", bits=4)

#: Every estimator class by its name in papers and tables (the string edge: studies, the CLI).
ESTIMATORS: dict[str, type[Estimator]] = {
    "ste": STE, "clipped_ste": ClippedSTE, "hadamard_ste": HadamardSTE, "lsq": LSQ, "pact": PACT,
    "dorefa_weight": DoReFaWeight, "dorefa_activation": DoReFaActivation, "sign_ste": SignSTE, "xnor": XNOR,
    "reste": ReSTE, "biper": BiPer, "bitnet_ternary": BitNetTernary, "denseshift": DenseShift,
}
