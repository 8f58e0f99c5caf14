"""Speed of lpnum's block-scaled fake quantization (MX, NVFP4, per-channel int) against a floor and other libraries.

Every case is a round trip ``float32 -> quantized -> float32`` of one ``(4096, 4096)`` standard-normal array. The
candidates of a case are compiled and then timed side by side (interleaved rounds, medians):

* ``floor``: jitted ``x * 2``, one read and one write of the array, the memory floor;
* ``lpnum``: jitted ``lpnum.fake_quantize(x, fmt)``, the fused round trip;
* ``lpnum_packed``: jitted ``lpnum.dequantize(lpnum.quantize_scaled(x, fmt))``, through packed codes and scales;
* ``jnp``: an obvious hand-written jnp round trip. MX: blocks of 32 along the last axis, ``amax``,
  ``e = floor(log2(amax))`` from ``jnp.frexp``, ``scale = 2^(e - emax)`` (clamped to E8M0's range), ``x / scale``
  clipped to the element's max, ``astype`` to the ml_dtypes element dtype and back, times ``scale``. XLA cannot
  cast to FP6 on the CPU (``jnp_astype``, recorded as ``fails``), so the FP6 elements are rounded by hand
  (``frexp`` exponent, ``round(v / ulp) * ulp``); MXINT8 is ``round(v * 64)`` clipped to +-127. NVFP4: per-tensor
  ``T = max(amax / (448 * 6), 2^-126)``, block scales ``clip(bamax / 6 / T, 2^-9, 448)`` cast to E4M3, elements
  ``x / (s * T)`` clipped to +-6 and cast to E2M1. Per-channel: ``scale = amax / qmax``, ``round``, ``clip``, times
  ``scale``;
* ``qwix``: jitted ``qwix.dequantize(qwix.quantize(x, qtype, ...))`` (the public API; qwix's own QAT fake quant,
  ``OdmlQatProvider._fake_quant``, is calibrate + ``quantize_with_scale_zero_point`` + ``dequantize``, the same
  ops). qtypes ``"mxfp8"`` (E4M3 elements) and ``"mxfp4"`` with ``tiled_axes={1: 32}``, ``"nvfp4"`` with
  ``tiled_axes={1: 16}``, ``jnp.int8``/``jnp.int4`` with ``channelwise_axes=(0,)``. qwix has no MX E5M2, FP6 or
  MXINT8 qtype. Its MX scale is ``2^ceil(log2(amax / max))`` kept in float32 and its NVFP4 has no per-tensor scale;
  its int scale is ``amax / (qmax + 0.5)``;
* ``aqt``: jitted ``aqt_quantizer.make_fake_quant(aqt_quantizer.quantizer_make(bits), calibration_axes=[1])``
  (``AbsMaxCalibration``, ``IntSymmetric``: scale ``amax / (qmax + 0.5)``), per-channel ints only; aqt has no MX or
  NVFP4 format;
* ``gfloat``: jitted MX round trip built on ``gfloat.round_ndarray(fi.etype, x / scale, sat=True) * scale`` with the
  scale rule of ``gfloat.compute_scale_amax`` (``2^(floor(log2 amax) - etype.emax)``, clipped to ``2^[-127, 127]``)
  written in jnp, for gfloat's ``format_info_mx*`` presets; NVFP4 composed the same way from
  ``round_ndarray(format_info_ocp_e4m3)`` scales and ``round_ndarray(format_info_ocp_e2m1)`` elements (gfloat has no
  NVFP4 preset). gfloat's own block API (``quantize_block``, ``compute_scale_amax``) branches on a Python bool and
  cannot be traced: ``gfloat_block_jit`` records that failure;
* ``gfloat_block``: eager ``gfloat.quantize_block(fi, block, gfloat.compute_scale_amax)`` over numpy blocks (pure
  Python per element), timed on the first few blocks and scaled to the full array;
* ``torchao``: eager ``MXTensor.to_mx(t, elem_dtype, 32, ScaleCalculationMode.FLOOR).dequantize(torch.float32)``
  from ``torchao.prototype.mx_formats`` on the same data as a CPU torch tensor; NVFP4:
  ``NVFP4Tensor.to_nvfp4(t, 16, per_tensor_amax_to_scale(amax)).dequantize(torch.float32)``. torchao has no MXINT8.

A third table times the compilation of ``jax.jit(lambda x: lpnum.fake_quantize(x, fmt))`` for ``fmt =
lpnum.ScaledFormat("int4", lpnum.per_block(32), calibration=c)`` on a ``(256, 1024)`` array, for ``c`` among
``absmax()``, ``percentile(99.9)``, ``mse(8)`` and ``mse(64)`` (quick: ``absmax()`` and ``mse(64)``): the MSE search
is one ``lax.scan`` over its candidates, so its compile time should not grow with their number.

A second table times ``lpnum.dequantize`` of the QArray of the same array (MXFP8, MXFP4, NVFP4 and int4 in groups
of 128 with float32 scales) side by side with the floor and with ``u8_to_f32``, a jitted ``codes.astype(float32)``
of a uint8 array of the same shape: the least an XLA decode that reads bytes and writes float32 can cost. Each
QArray is dequantized as users call it (eagerly: on the CPU, lpnum's native kernel) and inside ``jax.jit``
(``_traced``: XLA operations, what a jitted model fuses).

Per-channel formats are ``lpnum.ScaledFormat(int8|int4, lpnum.per_channel(0))``: channel axis 0, so one scale per
row of ``x``, reducing over the last axis; ``int8_per_column`` is ``lpnum.per_channel(-1)``, one scale per column
(an ``(in, out)`` kernel's output channels), reducing over axis 0. Every library is given the same granularity.

Every library's optional package is imported lazily; a missing one marks its candidates ``skipped``. Before
timing, each case checks (untimed, on a small array) what fraction of every candidate's values equal lpnum's: for
the FLOOR MX formats the hand-written jnp version should agree almost everywhere (XLA may turn ``x / scale`` into a
multiplication by a reciprocal, and flushes subnormals); qwix and aqt use other scale rules and are expected to
differ.

Run ``python -m benchmarks.scaled [--quick] [--repeats N] [--out DIR]``; results go to
``lpnum-results/bench/scaled/scaled.json`` unless ``--out`` says otherwise.
"""

from __future__ import annotations

import dataclasses
import importlib
import math
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np

import lpnum
from lpnum.results import progress
from lpnum.carrier import F32
from lpnum.scaled import xla_cpu

from ._report import (arg_parser, figure_values, format_targets, lpnum_revision, median_s, ms, parse_args,
                                ratio, table, target, times, write_json)
from ._timing import Candidate, error_reason, failure, time_fn, time_fns

#: Shape of the timed array (and with ``--quick``).
SHAPE: tuple[int, int] = (4096, 4096)
QUICK_SHAPE: tuple[int, int] = (512, 512)
#: Shape of the (untimed) agreement check.
PROBE_SHAPE: tuple[int, int] = (64, 256)
#: Eager gfloat.quantize_block is timed on this many blocks and scaled up.
GFLOAT_BLOCK_MAX_BLOCKS = 64
MX_BLOCK = 32
NVFP4_BLOCK = 16

#: Candidates that are timed against lpnum (the order of the tables).
THIRD_PARTY: tuple[str, ...] = ("qwix", "aqt", "gfloat", "gfloat_block", "torchao")
#: Candidates compared with lpnum in the ratio table (``<name> / lpnum``).
COMPARED: tuple[str, ...] = ("jnp", *THIRD_PARTY)

#: What each candidate calls, written to the JSON (the module docstring has the details).
CANDIDATE_DOCS: dict[str, str] = {
    "floor": "jax.jit(lambda x: x * 2)",
    "lpnum": "jax.jit(lambda x: lpnum.fake_quantize(x, fmt))",
    "lpnum_packed": "jax.jit(lambda x: lpnum.dequantize(lpnum.quantize_scaled(x, fmt)))",
    "jnp": "hand-written jax.numpy round trip (frexp exponent, ldexp scale, clip, astype to the ml_dtypes element "
           "dtype and back; FP6 rounded by hand; MXINT8 round(v * 64); per-channel amax / qmax, round, clip)",
    "jnp_astype": "the jnp MX round trip with astype to the FP6 dtype (XLA's CPU cast)",
    "qwix": "jax.jit(qwix.dequantize(qwix.quantize(x, qtype, tiled_axes={1: 32|16} | channelwise_axes=(0,)))), "
            "qtype 'mxfp8' | 'mxfp4' | 'nvfp4' | jnp.int8 | jnp.int4",
    "aqt": "jax.jit(aqt.jax.v2.aqt_quantizer.make_fake_quant(quantizer_make(8|4), calibration_axes=[1]))",
    "gfloat": "jax.jit: gfloat.round_ndarray(fi.etype, x / scale, sat=True) * scale, scale by the rule of "
              "gfloat.compute_scale_amax in jnp, fi = gfloat.formats.format_info_<mx preset>; NVFP4 from "
              "round_ndarray(format_info_ocp_e4m3) scales and round_ndarray(format_info_ocp_e2m1) elements",
    "gfloat_block": "eager gfloat.quantize_block(fi, block, gfloat.compute_scale_amax) per 32-value numpy block, "
                    f"on the first {GFLOAT_BLOCK_MAX_BLOCKS} blocks, scaled to the full array",
    "gfloat_block_jit": "jax.jit of gfloat.quantize_block on one block (recorded to show that it cannot be traced)",
    "torchao": "eager torchao.prototype.mx_formats MXTensor.to_mx(t, elem_dtype, 32, ScaleCalculationMode.FLOOR)"
               ".dequantize(torch.float32); NVFP4Tensor.to_nvfp4(t, 16, per_tensor_amax_to_scale(max|t|))"
               ".dequantize(torch.float32)",
}

#: The calibrations whose compile time is measured (name -> calibration), on int4 in blocks of 32.
CALIBRATIONS: dict[str, Any] = {"absmax": lpnum.absmax(), "percentile_99.9": lpnum.percentile(99.9),
                                "mse_8": lpnum.mse(8), "mse_64": lpnum.mse(64)}
QUICK_CALIBRATIONS: tuple[str, ...] = ("absmax", "mse_64")
#: Shape of the array the calibrations are compiled for.
CALIBRATION_SHAPE: tuple[int, int] = (256, 1024)

#: Target thresholds.
JNP_SPEEDUP_MIN = 1.5
QWIX_SPEEDUP_MIN = 1.5
FLOOR_MAX = 2.0
GFLOAT_SPEEDUP_MIN = 5.0
CHANNEL_SPEEDUP_MIN = 1.0
DEQUANTIZE_FLOOR_MAX = 0.7
#: Seconds within which ``calibration=mse(64)`` compiles (int4, blocks of 32, a (256, 1024) array).
MSE_COMPILE_MAX_S = 5.0


@dataclasses.dataclass(frozen=True)
class Case:
  """One benchmarked format.

  Attributes:
    name: the record name (an lpnum preset name, ``int8_per_channel``/``int4_per_channel`` or
      ``int8_per_column``).
    kind: ``"mx"``, ``"nvfp4"`` or ``"per_channel"``.
    fmt: what is passed to ``lpnum.fake_quantize`` (a preset name or a ScaledFormat).
    channel_axis: per-channel cases: the axis that keeps one scale per index (the other one is reduced).
  """

  name: str
  kind: str
  fmt: str | lpnum.ScaledFormat
  channel_axis: int = 0


def _per_channel(bits: int, axis: int = 0) -> Case:
  name = f"int{bits}_per_channel" if axis == 0 else f"int{bits}_per_column"
  return Case(name, "per_channel", lpnum.ScaledFormat(f"int{bits}", lpnum.per_channel(axis)), axis % 2)


CASES: tuple[Case, ...] = (
    *(Case(name, "mx", name) for name in lpnum.mx.NAMES),
    Case("nvfp4", "nvfp4", "nvfp4"),
    _per_channel(8),
    _per_channel(4),
    _per_channel(8, -1),
)
#: The cases of ``--quick``.
QUICK_CASES: tuple[str, ...] = ("mxfp8_e4m3", "mxfp4_e2m1", "nvfp4", "int8_per_channel", "int8_per_column")

#: The QArrays whose ``lpnum.dequantize`` is timed against the floor (name -> format).
DEQUANTIZE_CASES: dict[str, str | lpnum.ScaledFormat] = {
    "mxfp8_e4m3": "mxfp8_e4m3", "mxfp4_e2m1": "mxfp4_e2m1", "nvfp4": "nvfp4",
    "int4_g128": lpnum.ScaledFormat("int4", lpnum.per_block(128)),
}

#: MX element dtypes (ml_dtypes), None for MXINT8.
MX_DTYPES: dict[str, Any] = {
    "mxfp8_e4m3": ml_dtypes.float8_e4m3fn, "mxfp8_e5m2": ml_dtypes.float8_e5m2,
    "mxfp6_e3m2": ml_dtypes.float6_e3m2fn, "mxfp6_e2m3": ml_dtypes.float6_e2m3fn,
    "mxfp4_e2m1": ml_dtypes.float4_e2m1fn, "mxint8": None,
}
#: Element dtypes XLA cannot cast to on the CPU: the jnp version rounds them by hand.
XLA_UNCASTABLE: frozenset[str] = frozenset({"mxfp6_e3m2", "mxfp6_e2m3"})
#: Candidates run only to record that they fail (not run again for the agreement check).
KNOWN_FAILURES: tuple[str, ...] = ("jnp_astype", "gfloat_block_jit")
#: MXINT8 elements are k * 2^-MXINT8_FRACTION_BITS, |k| <= 127.
MXINT8_FRACTION_BITS = 6


# ---- optional libraries -----------------------------------------------------------------------------------------
@dataclasses.dataclass
class Libraries:
  """Lazily imported optional packages: a module, or the reason it is missing (``reasons[name]``)."""

  modules: dict[str, Any] = dataclasses.field(default_factory=dict)
  reasons: dict[str, str] = dataclasses.field(default_factory=dict)
  versions: dict[str, str] = dataclasses.field(default_factory=dict)

  def get(self, name: str) -> Any:
    """The modules of library ``name`` (a dict by module name), or None if it is missing."""
    return self.modules.get(name)


def _version(dist: str) -> str:
  from importlib import metadata

  try:
    return metadata.version(dist)
  except metadata.PackageNotFoundError:
    return "unknown"


def load_libraries(quick: bool) -> Libraries:
  """Imports the third-party packages (none with ``quick``); records why any could not be imported."""
  libs = Libraries()
  imports = {
      "qwix": (("qwix",), "qwix"),
      "aqt": (("aqt.jax.v2.aqt_quantizer",), "aqtp"),
      "gfloat": (("gfloat", "gfloat.formats"), "gfloat"),
      "torchao": (("torch", "torchao.prototype.mx_formats.mx_tensor", "torchao.prototype.mx_formats.nvfp4_tensor",
                   "torchao.prototype.mx_formats.constants"), "torchao"),
  }
  for name, (modules, dist) in imports.items():
    if quick:
      libs.reasons[name] = "not run with --quick"
      continue
    try:
      with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        libs.modules[name] = {m: importlib.import_module(m) for m in modules}
      libs.versions[name] = _version(dist)
      if name == "torchao":
        libs.versions["torch"] = libs.modules[name]["torch"].__version__
    except Exception as e:  # noqa: BLE001 -- any import failure means "skipped", with the reason
      libs.reasons[name] = f"{dist} not importable: {error_reason(e)}"
  return libs


# ---- lpnum and the floor ----------------------------------------------------------------------------------------
def _floor() -> Callable[[jax.Array], jax.Array]:
  return jax.jit(lambda v: v * 2)


def _lpnum_fake(case: Case) -> Callable[[jax.Array], jax.Array]:
  return jax.jit(lambda v: lpnum.fake_quantize(v, case.fmt))


def _lpnum_packed(case: Case) -> Callable[[jax.Array], jax.Array]:
  return jax.jit(lambda v: lpnum.dequantize(lpnum.quantize_scaled(v, case.fmt)))


# ---- hand-written jnp -------------------------------------------------------------------------------------------
def _blocks(v: jax.Array, size: int) -> jax.Array:
  return v.reshape(*v.shape[:-1], v.shape[-1] // size, size)


def _floor_log2(a: jax.Array) -> jax.Array:
  """``floor(log2(a))`` for positive normal ``a``, from ``jnp.frexp`` (``a = m * 2^e``, ``m`` in [0.5, 1))."""
  return jnp.frexp(a)[1] - 1


def _round_minifloat(v: jax.Array, mantissa_bits: int, min_exponent: int) -> jax.Array:
  """``v`` (already clipped to the format's range) rounded to nearest even on a float grid, by hand."""
  step = jnp.ldexp(jnp.float32(1), jnp.maximum(_floor_log2(jnp.abs(v)), min_exponent) - mantissa_bits)
  return jnp.round(v / step) * step


def _mx_element_cast(name: str, *, astype: bool) -> tuple[int, Callable[[jax.Array], jax.Array]]:
  """The element's ``emax`` and its round trip on scaled values (clip, cast or hand rounding, back to float32)."""
  dtype = MX_DTYPES[name]
  if dtype is None:  # MXINT8: k * 2^-6, |k| <= 127
    unit = 2.0 ** MXINT8_FRACTION_BITS
    return 0, lambda v: jnp.clip(jnp.round(v * unit), -127, 127) / unit
  info = ml_dtypes.finfo(dtype)
  top = float(info.max)
  emax = math.frexp(top)[1] - 1
  if astype or name not in XLA_UNCASTABLE:
    return emax, lambda v: jnp.clip(v, -top, top).astype(dtype).astype(jnp.float32)
  min_exponent = math.frexp(float(info.smallest_normal))[1] - 1
  return emax, lambda v: _round_minifloat(jnp.clip(v, -top, top), int(info.nmant), min_exponent)


def _jnp_mx(name: str, *, astype: bool = False) -> Callable[[jax.Array], jax.Array]:
  emax, cast = _mx_element_cast(name, astype=astype)

  def round_trip(v: jax.Array) -> jax.Array:
    xb = _blocks(v, MX_BLOCK)
    amax = jnp.max(jnp.abs(xb), axis=-1, keepdims=True)
    scale = jnp.ldexp(jnp.float32(1), jnp.clip(_floor_log2(amax) - emax, -127, 127))
    return (cast(xb / scale) * scale).reshape(v.shape)
  return jax.jit(round_trip)


def _jnp_nvfp4() -> Callable[[jax.Array], jax.Array]:
  e4m3_max = float(ml_dtypes.finfo(ml_dtypes.float8_e4m3fn).max)
  e2m1_max = float(ml_dtypes.finfo(ml_dtypes.float4_e2m1fn).max)

  def round_trip(v: jax.Array) -> jax.Array:
    tensor = jnp.maximum(jnp.max(jnp.abs(v)) / (e4m3_max * e2m1_max), jnp.float32(2.0 ** -126))
    xb = _blocks(v, NVFP4_BLOCK)
    ideal = jnp.max(jnp.abs(xb), axis=-1, keepdims=True) / e2m1_max / tensor
    s = jnp.clip(ideal, 2.0 ** -9, e4m3_max).astype(jnp.float8_e4m3fn).astype(jnp.float32) * tensor
    q = jnp.clip(xb / s, -e2m1_max, e2m1_max).astype(jnp.float4_e2m1fn).astype(jnp.float32)
    return (q * s).reshape(v.shape)
  return jax.jit(round_trip)


def _jnp_per_channel(bits: int, axis: int) -> Callable[[jax.Array], jax.Array]:
  qmax = 2 ** (bits - 1) - 1

  def round_trip(v: jax.Array) -> jax.Array:
    scale = jnp.max(jnp.abs(v), axis=1 - axis, keepdims=True) / qmax
    scale = jnp.where(scale == 0, jnp.float32(1), scale)
    return jnp.clip(jnp.round(v / scale), -qmax, qmax) * scale
  return jax.jit(round_trip)


def _bits(case: Case) -> int:
  return case.fmt.element.bits


def _jnp(case: Case) -> Callable[[jax.Array], jax.Array]:
  if case.kind == "mx":
    return _jnp_mx(case.name)
  if case.kind == "nvfp4":
    return _jnp_nvfp4()
  return _jnp_per_channel(_bits(case), case.channel_axis)


# ---- third parties ----------------------------------------------------------------------------------------------
QWIX_QTYPES: dict[str, tuple[str, int]] = {"mxfp8_e4m3": ("mxfp8", MX_BLOCK), "mxfp4_e2m1": ("mxfp4", MX_BLOCK),
                                           "nvfp4": ("nvfp4", NVFP4_BLOCK)}


def _qwix(case: Case, libs: Libraries) -> Callable[[jax.Array], jax.Array] | dict[str, Any]:
  qwix = libs.get("qwix")
  if qwix is None:
    return failure("skipped", libs.reasons["qwix"])
  qwix = qwix["qwix"]
  if case.kind == "per_channel":
    qtype = {8: jnp.int8, 4: jnp.int4}[_bits(case)]
    return jax.jit(lambda v: qwix.dequantize(qwix.quantize(v, qtype, channelwise_axes=(case.channel_axis,))))
  if case.name not in QWIX_QTYPES:
    return failure("unsupported", "qwix's block-scaled qtypes are 'mxfp8' (E4M3 elements), 'mxfp4' and 'nvfp4' "
                                  "(qarray.HowToQuantize, numerics.convert_to); no MX E5M2, FP6 or MXINT8")
  qtype, tile = QWIX_QTYPES[case.name]
  return jax.jit(lambda v: qwix.dequantize(qwix.quantize(v, qtype, tiled_axes={v.ndim - 1: tile})))


def _aqt(case: Case, libs: Libraries) -> Callable[[jax.Array], jax.Array] | dict[str, Any]:
  aqt = libs.get("aqt")
  if aqt is None:
    return failure("skipped", libs.reasons["aqt"])
  if case.kind != "per_channel":
    return failure("unsupported", "aqt (aqt.jax.v2) has no MX or NVFP4 format: its numerics are IntSymmetric, "
                                  "Fp8Numerics (e4m3/e5m2) and FpNumerics, scaled by float scales (po2_scale "
                                  "rounds them up), not E8M0/E4M3 block scales")
  quantizer = aqt["aqt.jax.v2.aqt_quantizer"]
  fake = quantizer.make_fake_quant(quantizer.quantizer_make(_bits(case)), calibration_axes=[1 - case.channel_axis])
  return jax.jit(fake)


def _gfloat(case: Case, libs: Libraries) -> Callable[[jax.Array], jax.Array] | dict[str, Any]:
  mods = libs.get("gfloat")
  if mods is None:
    return failure("skipped", libs.reasons["gfloat"])
  gfloat, gff = mods["gfloat"], mods["gfloat.formats"]

  def rnd(fi: Any, v: jax.Array) -> jax.Array:
    with warnings.catch_warnings():  # gfloat asks for int64; jax gives int32, enough for these formats
      warnings.filterwarnings("ignore", message="Explicitly requested dtype int64")
      return gfloat.round_ndarray(fi, v, sat=True)

  if case.kind == "nvfp4":
    e4m3, e2m1 = gff.format_info_ocp_e4m3, gff.format_info_ocp_e2m1

    def nvfp4(v: jax.Array) -> jax.Array:
      tensor = jnp.maximum(jnp.max(jnp.abs(v)) / (e4m3.max * e2m1.max), jnp.float32(2.0 ** -126))
      xb = _blocks(v, NVFP4_BLOCK)
      ideal = jnp.max(jnp.abs(xb), axis=-1, keepdims=True) / e2m1.max / tensor
      s = rnd(e4m3, jnp.clip(ideal, 2.0 ** -9, e4m3.max)) * tensor
      return (rnd(e2m1, xb / s) * s).reshape(v.shape)
    return jax.jit(nvfp4)
  fi = getattr(gff, f"format_info_{case.name}")

  def mx(v: jax.Array) -> jax.Array:
    xb = _blocks(v, fi.k)
    amax = jnp.max(jnp.abs(xb), axis=-1, keepdims=True)
    log2_scale = jnp.clip(jnp.floor(jnp.log2(amax)) - fi.etype.emax, -127, 127)  # compute_scale_amax's rule
    log2_scale = jnp.where(amax == 0, -127, log2_scale).astype(jnp.int32)
    scale = jnp.ldexp(jnp.float32(1), log2_scale)
    return (rnd(fi.etype, xb / scale) * scale).reshape(v.shape)
  return jax.jit(mx)


def _gfloat_block_fns(case: Case, libs: Libraries) -> tuple[Any, Any] | dict[str, Any]:
  """gfloat's block API as it is: the eager per-block function and (to record that it fails) its jit."""
  mods = libs.get("gfloat")
  if mods is None:
    return failure("skipped", libs.reasons["gfloat"])
  gfloat, gff = mods["gfloat"], mods["gfloat.formats"]
  fi = getattr(gff, f"format_info_{case.name}")

  def eager(v: np.ndarray) -> np.ndarray:
    blocks = v.reshape(-1, fi.k)
    out = np.empty(blocks.shape, np.float32)
    for i, block in enumerate(blocks):
      out[i] = gfloat.quantize_block(fi, block, gfloat.compute_scale_amax)
    return out.reshape(v.shape)

  def traced(v: jax.Array) -> jax.Array:
    return jnp.asarray(gfloat.quantize_block(fi, _blocks(v, fi.k)[0, 0], gfloat.compute_scale_amax))
  return eager, jax.jit(traced)


def _torchao(case: Case, libs: Libraries) -> Callable[[Any], Any] | dict[str, Any]:
  mods = libs.get("torchao")
  if mods is None:
    return failure("skipped", libs.reasons["torchao"])
  torch = mods["torch"]
  mx_tensor, nvfp4_tensor = mods["torchao.prototype.mx_formats.mx_tensor"], \
      mods["torchao.prototype.mx_formats.nvfp4_tensor"]
  constants = mods["torchao.prototype.mx_formats.constants"]
  if case.kind == "nvfp4":
    def nvfp4(t: Any) -> Any:
      tensor_scale = nvfp4_tensor.per_tensor_amax_to_scale(torch.max(torch.abs(t)))
      return nvfp4_tensor.NVFP4Tensor.to_nvfp4(t, NVFP4_BLOCK, tensor_scale).dequantize(torch.float32)
    return nvfp4
  elem = {"mxfp8_e4m3": torch.float8_e4m3fn, "mxfp8_e5m2": torch.float8_e5m2,
          "mxfp6_e3m2": constants.DTYPE_FP6_E3M2, "mxfp6_e2m3": constants.DTYPE_FP6_E2M3,
          "mxfp4_e2m1": getattr(torch, "float4_e2m1fn_x2", None)}.get(case.name)
  if elem is None or elem not in constants.SUPPORTED_ELEM_DTYPES:
    return failure("unsupported", "torchao.prototype.mx_formats has no MXINT8 element dtype "
                                  "(constants.SUPPORTED_ELEM_DTYPES)")
  floor_mode = mx_tensor.ScaleCalculationMode.FLOOR

  def mx(t: Any) -> Any:
    return mx_tensor.MXTensor.to_mx(t, elem, MX_BLOCK, floor_mode).dequantize(torch.float32)
  return mx


# ---- candidates -------------------------------------------------------------------------------------------------
def candidates(case: Case, x: jax.Array, libs: Libraries, *, max_blocks: int = GFLOAT_BLOCK_MAX_BLOCKS
               ) -> tuple[dict[str, Candidate], dict[str, dict[str, Any]], dict[str, float]]:
  """The candidates of ``case`` on ``x``.

  Returns:
    The candidates to time, the measurements decided without timing (``skipped``/``unsupported``), and the factor
    by which a candidate timed on part of ``x`` is scaled to the full size.
  """
  runs: dict[str, Candidate] = {"floor": (_floor(), (x,)), "lpnum": (_lpnum_fake(case), (x,)),
                                "lpnum_packed": (_lpnum_packed(case), (x,)), "jnp": (_jnp(case), (x,))}
  if case.name in XLA_UNCASTABLE:
    runs["jnp_astype"] = (_jnp_mx(case.name, astype=True), (x,))
  fixed: dict[str, dict[str, Any]] = {}
  scales: dict[str, float] = {}
  made: dict[str, Any] = {"qwix": _qwix(case, libs), "aqt": _aqt(case, libs)}
  if case.kind != "per_channel":
    made["gfloat"] = _gfloat(case, libs)
    if case.kind == "mx":
      block = _gfloat_block_fns(case, libs)
      if isinstance(block, dict):
        made["gfloat_block"] = made["gfloat_block_jit"] = block
      else:
        eager, traced = block
        values = min(x.size, max_blocks * MX_BLOCK)
        runs["gfloat_block"] = (eager, (np.asarray(x).reshape(-1)[:values],))
        scales["gfloat_block"] = x.size / values
        made["gfloat_block_jit"] = traced
    made["torchao"] = _torchao(case, libs)
  for name, fn in made.items():
    if isinstance(fn, dict):
      fixed[name] = fn
    elif name == "torchao":
      torch = libs.get("torchao")["torch"]
      runs[name] = (fn, (torch.from_numpy(np.array(x)),))
    else:
      runs[name] = (fn, (x,))
  return runs, fixed, scales


def _to_numpy(value: Any) -> np.ndarray:
  if hasattr(value, "detach"):  # a torch tensor
    return value.detach().cpu().numpy()
  return np.asarray(value)


def agreement(case: Case, libs: Libraries) -> dict[str, Any]:
  """Fraction of every candidate's values equal to lpnum's on a small standard-normal array (untimed).

  Also the fraction within two float32 ulps of lpnum's value (dequantized products rounded twice, or scales from
  a reciprocal multiplication, differ by an ulp). NaN equals NaN. Candidates that are not run, or raise, get None.
  ``lpnum_packed`` must give 1.0.
  """
  x = jax.random.normal(jax.random.key(1), PROBE_SHAPE, jnp.float32)
  runs, _, _ = candidates(case, x, libs, max_blocks=4)
  ref = np.asarray(lpnum.fake_quantize(x, case.fmt)).reshape(-1)
  out: dict[str, Any] = {}
  near: dict[str, Any] = {}
  for name, (fn, args) in runs.items():
    if name in ("floor", "lpnum", *KNOWN_FAILURES):
      continue
    try:
      with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        got = _to_numpy(fn(*args)).astype(np.float32).reshape(-1)
    except Exception:  # noqa: BLE001 -- the timing records why it fails
      out[name] = near[name] = None
      continue
    want = ref[:got.size]
    both_nan = np.isnan(got) & np.isnan(want)
    with np.errstate(invalid="ignore"):
      out[name] = float(np.mean((got == want) | both_nan))
      near[name] = float(np.mean((np.abs(got - want) <= 2 * np.spacing(np.abs(want))) | both_nan))
  return {"values": int(x.size), "fraction_equal": out, "fraction_within_2ulp": near}


def bench_case(case: Case, x: jax.Array, libs: Libraries, *, repeats: int) -> dict[str, Any]:
  """Times every candidate of one case on ``x``; returns the case's JSON record."""
  record: dict[str, Any] = {"format": case.name, "kind": case.kind, "lpnum_format": str(case.fmt),
                            "values": int(x.size), "shape": list(x.shape)}
  record["agreement"] = agreement(case, libs)
  runs, fixed, scales = candidates(case, x, libs)
  with warnings.catch_warnings():
    warnings.filterwarnings("ignore", message="Explicitly requested dtype int64")
    measured = time_fns(runs, repeats=repeats)
  for name, scale in scales.items():
    if measured[name]["status"] == "ok":
      measured[name].update(values=int(round(x.size / scale)), scale=scale)
  measured.update(fixed)
  record["candidates"] = measured
  record["figures"] = figures(measured)
  return record


def xla_cpu_workarounds(x: jax.Array, *, repeats: int) -> dict[str, Any]:
  """Times the two scheduling workarounds of :mod:`lpnum.scaled.xla_cpu` against what they replace, on ``x``.

  * abs-max along a non-minor axis in groups of 32 (one scale per column block): the slices pass
    (``xla_cpu.abs_max``) against XLA's ``max(|x|)`` reduction;
  * the element pass (NVFP4's E2M1 rounding of ``x``) over rows of 16, 32, 64 and 128 elements: the row view
    runs blocks of 8 or 16 as rows of 32 and splits longer blocks into rows of 64.
  """
  n, m = x.shape
  grouped = x.reshape(n // 32, 32, m)
  e2m1 = lpnum.get_format("float4_e2m1fn")
  nearest, saturate = lpnum.Rounding.NEAREST_EVEN, lpnum.Overflow.SATURATE

  def element_pass(row: int) -> Callable[[jax.Array], jax.Array]:
    return jax.jit(lambda v: e2m1.round_values(v.reshape(-1, row) * np.float32(3), F32, nearest, saturate, None,
                                               None).reshape(v.shape))

  runs = {"abs_max_slices": (jax.jit(lambda v: xla_cpu.abs_max(v, 1)), (grouped,)),
          "abs_max_xla_reduce": (jax.jit(lambda v: jnp.max(jnp.abs(v), axis=1, keepdims=True)), (grouped,)),
          **{f"element_pass_rows_{row}": (element_pass(row), (x,)) for row in (16, 32, 64, 128)}}
  measured = time_fns(runs, repeats=repeats)
  rows32 = median_s(measured["element_pass_rows_32"])
  return {"candidates": measured, "figures": {
      "abs_max_reduce_over_slices": ratio(median_s(measured["abs_max_xla_reduce"]),
                                          median_s(measured["abs_max_slices"])),
      **{f"rows_{row}_over_rows_32": ratio(median_s(measured[f"element_pass_rows_{row}"]), rows32)
         for row in (16, 64, 128)}}}


def dequantize_vs_floor(x: jax.Array, *, repeats: int) -> dict[str, Any]:
  """Times ``lpnum.dequantize`` of each ``DEQUANTIZE_CASES`` QArray of ``x``, called as users call it (eagerly: the
  native kernel on the CPU) and inside ``jax.jit`` (``<name>_traced``: XLA operations), side by side with the floor
  and ``u8_to_f32``; returns the candidates and each one's ratio to the floor."""
  codes = jax.block_until_ready(jax.random.randint(jax.random.key(1), x.shape, 0, 256).astype(jnp.uint8))
  runs: dict[str, Candidate] = {"floor": (_floor(), (x,)),
                                "u8_to_f32": (jax.jit(lambda c: c.astype(jnp.float32)), (codes,))}
  for name, fmt in DEQUANTIZE_CASES.items():
    q = jax.block_until_ready(lpnum.quantize_scaled(x, fmt))
    runs[name] = (lpnum.dequantize, (q,))
    runs[f"{name}_traced"] = (jax.jit(lpnum.dequantize), (q,))
  measured = time_fns(runs, repeats=repeats)
  floor = median_s(measured["floor"])
  return {"candidates": measured,
          "ratio_to_floor": {name: ratio(median_s(m), floor) for name, m in measured.items() if name != "floor"}}


def calibration_compile(names: Sequence[str], *, repeats: int) -> dict[str, dict[str, Any]]:
  """Compile time (and run time) of ``jax.jit(lambda x: lpnum.fake_quantize(x, fmt))`` on a
  ``CALIBRATION_SHAPE`` standard-normal array, ``fmt`` int4 in blocks of 32 with each named calibration."""
  x = jax.block_until_ready(jax.random.normal(jax.random.key(2), CALIBRATION_SHAPE, jnp.float32))
  measured = {}
  for name in progress(names, "calibration compile times"):
    fmt = lpnum.ScaledFormat("int4", lpnum.per_block(32), calibration=CALIBRATIONS[name])
    measured[name] = time_fn(jax.jit(lambda v, f=fmt: lpnum.fake_quantize(v, f)), x, repeats=repeats)
  return measured


# ---- figures and targets ----------------------------------------------------------------------------------------
def figures(measured: dict[str, dict[str, Any]]) -> dict[str, Any]:
  """Ratios of one case's medians (None where a side was not measured)."""
  floor, fused, packed = (median_s(measured.get(name)) for name in ("floor", "lpnum", "lpnum_packed"))
  return {
      "ratio_to_floor": ratio(fused, floor),
      "packed_ratio_to_floor": ratio(packed, floor),
      "packed_over_fused": ratio(packed, fused),
      "speedup_vs": {name: ratio(median_s(measured.get(name)), fused) for name in COMPARED},
      "packed_speedup_vs": {name: ratio(median_s(measured.get(name)), packed) for name in COMPARED},
  }


def _statuses(records: list[dict[str, Any]], name: str) -> dict[str, str]:
  """Why each record may have no figure for candidate ``name``: the candidate's status, or ``not a candidate``."""
  return {r["format"]: r["candidates"][name]["status"] if name in r["candidates"] else "not a candidate"
          for r in records}


def evaluate_targets(records: list[dict[str, Any]], dequantize: dict[str, Any],
                     calibration: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
  """The speed targets, each judged on ratios of medians measured in the same interleaved run (the compile time of
  the MSE search on its budget)."""
  block = [r for r in records if r["kind"] in ("mx", "nvfp4")]
  channel = [r for r in records if r["kind"] == "per_channel"]

  def speedup(label: str, description: str, group: list[dict[str, Any]], name: str,
              threshold: float) -> dict[str, Any]:
    values = figure_values(group, lambda f: f["speedup_vs"][name])
    return target(label, description, values, threshold, at_least=True, reasons=_statuses(group, name))
  return {
      "vs_jnp": speedup("a", f"MX/NVFP4 fake_quantize >= {JNP_SPEEDUP_MIN}x faster than hand-written jnp "
                        "(jnp / lpnum)", block, "jnp", JNP_SPEEDUP_MIN),
      "vs_qwix": speedup("b", f"MX/NVFP4 fake_quantize >= {QWIX_SPEEDUP_MIN}x faster than qwix (qwix / lpnum)",
                         block, "qwix", QWIX_SPEEDUP_MIN),
      "vs_floor": target("c", f"MX/NVFP4 fake_quantize <= {FLOOR_MAX}x the x*2 floor (lpnum / floor)",
                         figure_values(block, lambda f: f["ratio_to_floor"]), FLOOR_MAX, at_least=False,
                         reasons=_statuses(block, "lpnum")),
      "vs_gfloat": speedup("d", f"MX/NVFP4 fake_quantize >= {GFLOAT_SPEEDUP_MIN}x faster than gfloat "
                           "(jitted round_ndarray version; gfloat / lpnum)", block, "gfloat", GFLOAT_SPEEDUP_MIN),
      "channel_vs_qwix": speedup("e1", "per-channel int8/int4 at least as fast as qwix (qwix / lpnum >= 1)",
                                 channel, "qwix", CHANNEL_SPEEDUP_MIN),
      "channel_vs_aqt": speedup("e2", "per-channel int8/int4 at least as fast as aqt (aqt / lpnum >= 1)",
                                channel, "aqt", CHANNEL_SPEEDUP_MIN),
      "dequantize_vs_floor": target(
          "f", f"dequantize of MXFP8/MXFP4/NVFP4/int4-g128 QArrays <= {DEQUANTIZE_FLOOR_MAX}x the x*2 floor "
          "(dequantize / floor)", {name: dequantize["ratio_to_floor"][name] for name in DEQUANTIZE_CASES},
          DEQUANTIZE_FLOOR_MAX, at_least=False),
      "mse_compile": target(
          "g", f"ScaledFormat('int4', per_block(32), calibration=mse(64)) on {CALIBRATION_SHAPE} compiles within "
          f"{MSE_COMPILE_MAX_S:.0f} s (compile s / {MSE_COMPILE_MAX_S:.0f} s)",
          {"mse_64": ratio(calibration["mse_64"]["compile_s"], MSE_COMPILE_MAX_S)}, 1.0, at_least=False),
  }


# ---- printing ---------------------------------------------------------------------------------------------------
TIME_COLUMNS: tuple[str, ...] = ("floor", "lpnum", "lpnum_packed", "jnp", *THIRD_PARTY)


def format_tables(records: list[dict[str, Any]]) -> str:
  """Median times, then ratios to lpnum (fused and packed), then agreement, then why candidates did not run."""
  medians = table(("format", *(f"{c} ms" for c in TIME_COLUMNS)),
                  [(r["format"], *(ms(r["candidates"].get(c)) for c in TIME_COLUMNS)) for r in records])
  ratio_cols = ("format", "lpnum/floor", "packed/floor", "packed/fused", *(f"{c}/lpnum" for c in COMPARED))
  ratios = table(ratio_cols, [
      (r["format"], times(r["figures"]["ratio_to_floor"]), times(r["figures"]["packed_ratio_to_floor"]),
       times(r["figures"]["packed_over_fused"]), *(times(r["figures"]["speedup_vs"][c]) for c in COMPARED))
      for r in records])
  packed = table(("format", *(f"{c}/packed" for c in COMPARED)), [
      (r["format"], *(times(r["figures"]["packed_speedup_vs"][c]) for c in COMPARED)) for r in records])
  agree_cols = ("lpnum_packed", "jnp", "qwix", "aqt", "gfloat", "gfloat_block", "torchao")
  agree = table(("format", *agree_cols), [
      (r["format"], *("-" if r["agreement"]["fraction_equal"].get(c) is None
                      else f"{r['agreement']['fraction_equal'][c]:.4f}" for c in agree_cols)) for r in records])
  notes: dict[str, list[str]] = {}
  for r in records:
    for name, m in r["candidates"].items():
      if m["status"] != "ok":
        notes.setdefault(f"{name}: {m['status']}: {m['reason']}", []).append(r["format"])
  note_lines = [f"  [{', '.join(fmts)}] {text}" for text, fmts in notes.items()]
  return "\n".join(["Median ms per call (* = timed on part of the array and scaled):", medians,
                    "\nSpeed ratios (x/lpnum > 1: lpnum is faster; lpnum/floor: cost over one read + write):", ratios,
                    "\nPacked round trip (informational; x/packed > 1: lpnum's packed round trip is faster):", packed,
                    f"\nFraction of values equal to lpnum.fake_quantize (untimed, {PROBE_SHAPE} standard normal):",
                    agree, "\nNot timed:", *note_lines])


# ---- entry point ------------------------------------------------------------------------------------------------
def main(argv: Sequence[str] | None = None) -> Path:
  """Runs the benchmark, prints the tables and the target verdicts, and returns the JSON file written."""
  quick = (f"a {QUICK_SHAPE} array, 3 repeats, only {', '.join(QUICK_CASES)}, and only lpnum, the floor and the "
           "hand-written jnp versions")
  args = parse_args(arg_parser("scaled", __doc__, quick=quick), argv)
  cases = [c for c in CASES if c.name in QUICK_CASES] if args.quick else list(CASES)
  shape = QUICK_SHAPE if args.quick else SHAPE
  libs = load_libraries(args.quick)
  x = jax.block_until_ready(jax.random.normal(jax.random.key(0), shape, jnp.float32))
  records = [bench_case(case, x, libs, repeats=args.repeats) for case in progress(cases, "formats")]
  dequantize = dequantize_vs_floor(x, repeats=args.repeats)
  calibration = calibration_compile(QUICK_CALIBRATIONS if args.quick else list(CALIBRATIONS), repeats=args.repeats)
  targets = evaluate_targets(records, dequantize, calibration)
  workarounds = xla_cpu_workarounds(x, repeats=args.repeats)

  print(f"Block-scaled fake quantization of a {shape[0]}x{shape[1]} float32 standard-normal array on "
        f"{jax.devices()[0]}; jitted unless eager (gfloat_block, torchao); median of {args.repeats} interleaved "
        "calls per candidate, compile excluded. Per-channel: one scale per row (lpnum.per_channel(0), reducing over "
        "the last axis); per-column: lpnum.per_channel(-1), reducing over axis 0; the same for every library.")
  print(format_tables(records))
  print("\nDequantize of a QArray against the floor (eager lpnum.dequantize, as users call it; _traced: inside "
        "jax.jit; u8_to_f32: a jitted uint8 array to float32, the least an XLA decode that writes float32 can cost):")
  print(table(("candidate", "ms", "ratio to floor"),
              [(name, ms(m), times(dequantize["ratio_to_floor"].get(name)) if name != "floor" else "")
               for name, m in dequantize["candidates"].items()]))
  print("\nXLA-CPU workarounds (lpnum.scaled.xla_cpu) against what they replace (ratio > 1: the workaround pays):")
  print(table(("measure", "ratio"), [(k, times(v)) for k, v in workarounds["figures"].items()]))
  print(table(("pass", "ms"), [(k, ms(v)) for k, v in workarounds["candidates"].items()]))
  print(f"\nCompile time of fake_quantize, int4 in blocks of 32 on a {CALIBRATION_SHAPE} array, by calibration:")
  print(table(("calibration", "compile s", "run ms"),
              [(name, f"{m['compile_s']:.2f}", ms(m)) for name, m in calibration.items()]))
  print("\nTargets (ratios of medians from the same run):")
  print(format_targets(targets))

  payload = {
      "config": {"lpnum_revision": lpnum_revision(), "shape": list(shape), "values": int(x.size),
                 "repeats": args.repeats, "quick": args.quick, "input": "jax.random.normal(key(0), shape, float32)",
                 "probe_shape": list(PROBE_SHAPE), "gfloat_block_max_blocks": GFLOAT_BLOCK_MAX_BLOCKS,
                 "per_channel": "lpnum.per_channel(0): one scale per row, reducing over the last axis; "
                                "int8_per_column: lpnum.per_channel(-1), one scale per column, reducing over axis 0",
                 "torch_threads": libs.get("torchao")["torch"].get_num_threads() if libs.get("torchao") else None},
      "libraries": {"versions": libs.versions, "missing": libs.reasons},
      "candidates": CANDIDATE_DOCS,
      "formats": records,
      "targets": targets,
      "dequantize": dequantize,
      "xla_cpu": workarounds,
      "calibration_compile": calibration,
  }
  return write_json("scaled", payload, args.out)


if __name__ == "__main__":
  main()
