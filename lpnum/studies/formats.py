"""Format accuracy study: quantization error of every named format, and of scaled formats by granularity.

Tensors: Gaussian, Laplace, Student-t (3 degrees of freedom) and uniform samples, and real tensors:

* the weights (kernels, one row per output channel, along K) and activations (each Dense layer's input on the test
  set, one row per token, along K) of an MLP trained on digits (:func:`trained_mlp`, cached per process);
* ``cnn_weights``: the convolution kernels of the zoo CNN trained on digits, with each BatchNorm folded into the
  kernel before it (``w * gamma / sqrt(var + eps)`` per output channel, the inference form whose per-channel
  ranges spread; one row per output channel, K = kh * kw * c_in) (:func:`trained_cnn`, :func:`cnn_tensors`);
* ``photo_diffs``: the horizontal pixel differences of the two photographs scikit-learn ships
  (``load_sample_images``: luminance in [0, 1], BT.601 weights), natural-image statistics with a heavy tail, one
  row per image row (:func:`photo_tensors`).

Rows:

* ``tensor`` granularity, every named format (:func:`run`): each tensor is scaled per tensor before rounding:
  absmax onto the format's max finite value (integers, floats, power-of-two formats; never by less than 2^-64,
  which keeps wide formats such as bfloat16 in range), RMS onto 1 for posits, whose precision is densest around 1,
  and mean |x| for binary (XNOR-Net's scale). The scale is a float32 and the division exact (NumPy).
* ``channel`` and ``block32`` granularity for the scaled element formats (:data:`SCALED`): a
  :class:`lpnum.ScaledFormat` with float32 scales, one per row (output channel / token) or per 32 consecutive
  values along K, through :func:`lpnum.fake_quantize` (:func:`run_scaled`).
* the MX presets (blocks of 32 along K, E8M0 scales, the OCP ``floor`` rule) and NVFP4 (E2M1 in blocks of 16, E4M3
  block scales and a float32 tensor scale).

Metrics: SQNR ``10 log10(sum x^2 / sum (x - q)^2)``, the relative L1 error ``sum |x - q| / sum |x|``, and the
storage cost in bits per element (element bits plus the scale bits each element carries: 32 / K per channel,
32 / 32 per float32-scaled block, 8 / 32 for MX, 8 / 16 for NVFP4). Tables rank (format, granularity) by mean
SQNR per bit of storage; ``formats_sqnr_vs_bits.png`` plots mean SQNR against bits per element, every point
numbered, with a key beside the plot naming its formats, granularity, bits per element and SQNR.

Reproduction notes
------------------
*FP8 Formats for Deep Learning* (Micikevicius et al.) reported that E4M3 (3 mantissa bits) suits weights and
activations and E5M2 (wider range, 2 mantissa bits) gradients, and that FP8 post-training quantization works on
models that resisted INT8. Here (full run, seed 0), with absmax scaling, E4M3 gains about 6 dB over E5M2 (one
mantissa bit) on every tensor; per-tensor int8's uniform grid beats both FP8 formats on every tensor but the
heavy-tailed Student-t one (13.5 dB against E4M3's 31.6), where the floating-point grid's relative precision pays
off (on Laplace the two are within 1 dB). The paper's claim is about end-to-end accuracy of large models; SQNR
on small tensors only shows the mechanism.

*Microscaling Data Formats for Deep Learning* (Rouhani et al., OCP MX v1.0) reported MXFP8/MXINT8 as drop-in FP32
replacements for inference and MXFP6/MXFP4 as usable with some loss or fine-tuning. Here block scaling rescues
the narrow element formats on heavy tails at an overhead of 0.25 (MX) or 1 (float32) bit per element: on
Student-t, MXFP4 reaches 17 dB where per-tensor E2M1 has 1.3 dB, and MXINT8 38 dB against per-tensor int8's
13.5. FP8 E4M3 needs no block scale on these tensors (its range already covers them): MXFP8 E4M3 with the OCP
``floor`` rule is 0.8 to 2 dB below per-tensor E4M3, and 5.6 dB below on the uniform tensor, because ``floor`` maps
a block's amax into [256, 512) and every element above 448 saturates (the ``scale_rules`` study compares the
rules). NVFP4, with blocks of 16 and E4M3 scales, is 1.5 to 4 dB ahead of MXFP4 on every tensor. The paper
measures model accuracy, not SQNR, and on far larger models, so only the ordering is comparable.

*Quantizing deep convolutional networks for efficient inference* (Krishnamoorthi) recommended per-channel weight
scales over per-tensor ones because channel ranges differ, most in convolution kernels with batch norm folded in.
Here the ``channel`` rows gain 5.4 dB at 8 and 4 bits on the MLP's kernels and 3.3 to 3.5 dB on the CNN's
BatchNorm-folded kernels. The paper's large gains come from ImageNet networks whose folded channel ranges spread
over orders of magnitude; in these small, briefly trained models the largest channel amax is at most 3.7 times
the smallest in every layer (folded BatchNorm gains stay near 1 after 400 steps), so the gain is modest.

*Compressed Real Numbers for AI* (posits) reported 8-bit posits storing DNN weights without sensible loss: scaled
by RMS, posit8 matches E4M3 here (31.53 dB against 31.54 on Gaussian data), and posit8_0 (no exponent field: more
fraction bits near 1) beats per-tensor int8 on the Gaussian, Laplace, Student-t and MLP-weight tensors and trails
it by 0.9 to 2.4 dB on the MLP activations, CNN kernels and photographs and by 4.8 dB on the uniform tensor.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import time
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax.numpy as jnp
import numpy as np
import optax

from lpnum.carrier import F32
from lpnum.formats import ALL_FORMATS, BinaryFormat, Format, IntFormat, PositFormat, ShiftFormat, get_format
from lpnum.quantize import quantize
from lpnum.results import progress, save_figure, write_json
from lpnum.studies._common import arg_parser, parse_args
from lpnum.zoo import data, train
from lpnum.zoo import models as zoo

__all__ = ["DISTRIBUTIONS", "REAL", "TENSORS", "SCALED", "PRESETS", "NOTES", "Row", "sample", "sqnr_db",
           "rel_error", "trained_mlp", "mlp_tensors", "trained_cnn", "cnn_tensors", "photo_tensors", "tensors", "run",
           "run_scaled", "table", "plot", "main"]

#: Synthetic distributions sampled by the study, by name.
DISTRIBUTIONS = ("gaussian", "laplace", "student_t3", "uniform")
#: Real tensors: an MLP's and a CNN's (both trained on digits) and photographs' (shipped in scikit-learn).
REAL = ("mlp_weights", "mlp_activations", "cnn_weights", "photo_diffs")
#: Every tensor of the study.
TENSORS = DISTRIBUTIONS + REAL
#: Element formats also measured with per-channel and per-block-32 float32 scales.
SCALED = ("int8", "int4", "float8_e4m3fn", "float8_e5m2", "float6_e3m2fn", "float6_e2m3fn", "float4_e2m1fn")
#: Block-format presets: the MX formats and NVFP4.
PRESETS = ("mxfp8_e4m3", "mxfp8_e5m2", "mxfp6_e3m2", "mxfp6_e2m3", "mxfp4_e2m1", "mxint8", "nvfp4")
_QUICK_SCALED = ("int8", "int4", "float8_e4m3fn", "float4_e2m1fn")
_QUICK_PRESETS = ("mxfp8_e4m3", "mxfp4_e2m1", "nvfp4")
#: Row width of the synthetic tensors (and the width every tensor is padded to for the scaled rows).
COLUMNS = 1024
#: The MLP: hidden widths and training steps, by mode.
MLP_SETUPS = {"quick": ((128,), 120), "full": ((256, 256), 400)}
#: The CNN: residual block widths and training steps, by mode.
CNN_SETUPS = {"quick": ((16,), 60), "full": ((16, 32), 400)}
#: Columns of the photographs' pixel differences kept per image row (the images are 640 pixels wide).
PHOTO_COLUMNS = 512

NOTES = __doc__[__doc__.index("Reproduction notes"):].split("\n", 2)[2].strip()


def sample(name: str, n: int, seed: int = 0) -> np.ndarray:
  """``n`` float32 samples of a named distribution (numpy's generator, fixed seed); uniform is on [-1, 1)."""
  rng = np.random.default_rng(seed)
  if name == "gaussian":
    x = rng.standard_normal(n)
  elif name == "laplace":
    x = rng.laplace(size=n)
  elif name == "student_t3":
    x = rng.standard_t(3, size=n)
  elif name == "uniform":
    x = rng.uniform(-1.0, 1.0, size=n)
  else:
    raise ValueError(f"distribution={name!r}; expected one of {list(DISTRIBUTIONS)}")
  return x.astype(np.float32)


def sqnr_db(x: np.ndarray, q: np.ndarray) -> float:
  """Signal-to-quantization-noise ratio ``10 log10(sum x^2 / sum (x - q)^2)`` in dB, computed in float64."""
  x64, q64 = np.asarray(x, np.float64), np.asarray(q, np.float64)
  noise = float(np.sum((x64 - q64) ** 2))
  signal = float(np.sum(x64**2))
  return math.inf if noise == 0 else 10.0 * math.log10(signal / noise)


def rel_error(x: np.ndarray, q: np.ndarray) -> float:
  """Relative L1 error ``sum |x - q| / sum |x|``, computed in float64."""
  x64, q64 = np.asarray(x, np.float64), np.asarray(q, np.float64)
  return float(np.sum(np.abs(x64 - q64)) / np.sum(np.abs(x64)))


@dataclasses.dataclass(frozen=True)
class Row:
  """One (format, granularity, tensor) measurement.

  Attributes:
    format: the format's (or preset's) name.
    bits: bits per element code.
    distribution: the tensor (a distribution of :data:`DISTRIBUTIONS` or a tensor of :data:`REAL`).
    sqnr_db: SQNR in dB.
    granularity: ``tensor``, ``channel``, ``block32`` or ``preset``.
    rel_error: relative L1 error.
    bits_per_element: storage per element, scales included.
  """

  format: str
  bits: int
  distribution: str
  sqnr_db: float
  granularity: str = "tensor"
  rel_error: float = math.nan
  bits_per_element: float = math.nan

  @property
  def sqnr_per_bit(self) -> float:
    """SQNR per bit of storage (element bits when the storage is not known)."""
    return self.sqnr_db / (self.bits if math.isnan(self.bits_per_element) else self.bits_per_element)


@functools.lru_cache(maxsize=4)
def trained_mlp(features: tuple[int, ...], steps: int, seed: int) -> tuple[Any, dict[str, Any], list[float]]:
  """``MLP(features)`` trained in float32 on digits (Adam 3e-3, batches of 128): ``(model, variables, losses)``.

  Cached per process, so studies and tests that ask for the same MLP train it once.
  """
  return _trained_on_digits(zoo.MLP(features=features), steps, seed, flat=True)


def _trained_on_digits(model: Any, steps: int, seed: int, *, flat: bool) -> tuple[Any, dict[str, Any], list[float]]:
  """``model`` trained in float32 on the digits training split (Adam 3e-3, batches of 128)."""
  variables, losses = train.fit(model, data.digits("train", seed=seed, flat=flat), steps=steps, batch_size=128,
                                seed=seed, optimizer=optax.adam(3e-3))
  return model, variables, losses


def mlp_tensors(model: Any, variables: dict[str, Any], seed: int) -> dict[str, list[np.ndarray]]:
  """The MLP's kernels and the inputs of its Dense layers on the digits test set, as ``(rows, K)`` matrices.

  A kernel ``(K, N)`` is transposed to one row per output channel; an activation ``(M, K)`` has one row per token;
  K (the contracted axis, along which blocks and channels run) is last in both.
  """
  x_test, _ = data.digits("test", seed=seed, flat=True)
  acts: list[np.ndarray] = []

  def record(next_fun, args, kwargs, context):
    if isinstance(context.module, nn.Dense) and context.method_name == "__call__":
      acts.append(np.asarray(args[0]))
    return next_fun(*args, **kwargs)

  with nn.intercept_methods(record):
    model.apply(variables, jnp.asarray(x_test))
  weights = [np.asarray(layer["kernel"]).T for _, layer in sorted(variables["params"].items())]
  return {"mlp_weights": weights, "mlp_activations": acts}


@functools.lru_cache(maxsize=4)
def trained_cnn(channels: tuple[int, ...], steps: int, seed: int) -> tuple[Any, dict[str, Any], list[float]]:
  """``CNN(channels)`` trained in float32 on digits (Adam 3e-3, batches of 128): ``(model, variables, losses)``.

  Cached per process.
  """
  return _trained_on_digits(zoo.CNN(channels=channels), steps, seed, flat=False)


def cnn_tensors(variables: dict[str, Any], eps: float = 1e-5) -> dict[str, list[np.ndarray]]:
  """The zoo CNN's convolution kernels with the BatchNorm that follows each folded in, as ``(c_out, K)`` rows.

  In every scope of the zoo CNN, ``Conv_i`` feeds ``BatchNorm_i``; in inference BatchNorm is
  ``(y - mean) * scale / sqrt(var + eps) + bias``, so the folded kernel is ``kernel * scale / sqrt(var + eps)``
  per output channel (``eps`` is flax's default). A kernel ``(kh, kw, c_in, c_out)`` becomes ``c_out`` rows of
  ``K = kh * kw * c_in``.
  """
  rows = []

  def walk(params, stats):
    for name in sorted(params):
      if name.startswith("Conv_"):
        norm = "BatchNorm_" + name.removeprefix("Conv_")
        kernel = np.asarray(params[name]["kernel"], np.float32)
        gain = np.asarray(params[norm]["scale"], np.float32) / np.sqrt(np.asarray(stats[norm]["var"], np.float32)
                                                                         + np.float32(eps))
        rows.append((kernel * gain).reshape(-1, kernel.shape[-1]).T)
      elif not name.startswith(("BatchNorm_", "Dense_")):
        walk(params[name], stats[name])

  walk(variables["params"], variables["batch_stats"])
  return {"cnn_weights": rows}


def photo_tensors() -> dict[str, list[np.ndarray]]:
  """Horizontal pixel differences of scikit-learn's two sample photographs, one ``(427, PHOTO_COLUMNS)`` matrix
  each: luminance ``0.299 R + 0.587 G + 0.114 B`` in [0, 1], differenced along each row, first columns kept.

  Raises:
    ImportError: scikit-learn (or Pillow, which it uses to read the JPEGs) is not installed.
  """
  from sklearn.datasets import load_sample_images

  out = []
  for image in load_sample_images().images:
    luma = np.asarray(image, np.float64) @ np.array([0.299, 0.587, 0.114]) / 255.0
    out.append(np.diff(luma, axis=1)[:, :PHOTO_COLUMNS].astype(np.float32))
  return {"photo_diffs": out}


def tensors(n: int, seed: int = 0, mlp: tuple[tuple[int, ...], int] | None = MLP_SETUPS["quick"],
            cnn: tuple[tuple[int, ...], int] | None = CNN_SETUPS["quick"], photos: bool = True
            ) -> dict[str, list[np.ndarray]]:
  """Every tensor of the study as a list of ``(rows, K)`` float32 matrices (one per synthetic distribution, one
  per layer for the MLP and the CNN, one per photograph); ``mlp=None``, ``cnn=None`` and ``photos=False`` leave
  out the real tensors."""
  if n % COLUMNS:
    raise ValueError(f"n={n} must be a multiple of {COLUMNS}")
  sources = {"samples": lambda: {d: [sample(d, n, seed).reshape(-1, COLUMNS)] for d in DISTRIBUTIONS}}
  if mlp is not None:
    sources["mlp"] = lambda: mlp_tensors(*trained_mlp(mlp[0], mlp[1], seed)[:2], seed)
  if cnn is not None:
    sources["cnn"] = lambda: cnn_tensors(trained_cnn(cnn[0], cnn[1], seed)[1])
  if photos:
    sources["photos"] = photo_tensors
  out: dict[str, list[np.ndarray]] = {}
  for source in progress(list(sources.values()), f"tensors ({', '.join(sources)})"):
    out.update(source())
  return out


def _scale(fmt: Format, x: np.ndarray) -> np.float32:
  if isinstance(fmt, PositFormat):
    return np.float32(np.sqrt(np.mean(np.square(x, dtype=np.float64))))
  if isinstance(fmt, BinaryFormat):
    return np.float32(np.mean(np.abs(x), dtype=np.float64))
  return np.maximum(np.float32(np.max(np.abs(x))) / np.float32(fmt.max_finite), np.float32(2.0**-64))


def _metrics(parts: Sequence[np.ndarray], quantized: Sequence[np.ndarray]) -> tuple[float, float]:
  x = np.concatenate([p.ravel() for p in parts])
  q = np.concatenate([p.ravel() for p in quantized])
  return sqnr_db(x, q), rel_error(x, q)


def run(formats: Sequence[Format] = ALL_FORMATS, n: int = 1 << 16, seed: int = 0,
        data: dict[str, list[np.ndarray]] | None = None) -> list[Row]:
  """SQNR of each format on each tensor, scaled per tensor; formats that cannot hold float32 values are skipped.

  Args:
    formats: the formats.
    n: values per synthetic distribution (when ``data`` is None).
    seed: the seed of the samples.
    data: the tensors (:func:`tensors`); default: the synthetic distributions only.
  """
  data = tensors(n, seed, mlp=None, cnn=None, photos=False) if data is None else data
  names = list(data)
  parts = [p for t in names for p in data[t]]
  rows = []
  for fmt in progress(formats, "formats scaled per tensor"):
    if fmt.carrier_problem(F32) is not None:
      continue
    scales = [_scale(fmt, p) for p in parts]
    flat = np.concatenate([(p / s).ravel() for p, s in zip(parts, scales)])
    q = np.asarray(quantize(jnp.asarray(flat), fmt))
    out, start = [], 0
    for p, s in zip(parts, scales):
      out.append(q[start:start + p.size].reshape(p.shape) * s)
      start += p.size
    i = 0
    for t in names:
      k = len(data[t])
      sqnr, rel = _metrics(parts[i:i + k], out[i:i + k])
      rows.append(Row(fmt.name, fmt.bits, t, sqnr, "tensor", rel, float(fmt.bits) + 32 / sum(p.size for p in
                                                                                               parts[i:i + k])))
      i += k
  return rows


def _stack(parts: Sequence[np.ndarray]) -> tuple[np.ndarray, list[tuple[int, int, int]]]:
  """Rows of every part, zero-padded to the widest K, and each part's (first row, rows, K)."""
  width = max(p.shape[1] for p in parts)
  where, start = [], 0
  for p in parts:
    where.append((start, p.shape[0], p.shape[1]))
    start += p.shape[0]
  out = np.zeros((start, width), np.float32)
  for p, (r, m, k) in zip(parts, where):
    out[r:r + m, :k] = p
  return out, where


def run_scaled(data: dict[str, list[np.ndarray]], elements: Sequence[str] = SCALED,
               presets: Sequence[str] = PRESETS) -> list[Row]:
  """Per-channel and per-block-32 rows of ``elements`` (float32 scales) and rows of the MX/NVFP4 ``presets``.

  All tensors are stacked into one zero-padded matrix and quantized in one pass per format (rows and blocks are
  independent and zero padding never changes a scale), except NVFP4, whose tensor scale is per tensor (each
  tensor is zero-padded to whole blocks of 16). A row whose K is not a multiple of the block size ends in a
  partial block, which carries a whole scale: the bits per element count it.
  """
  import lpnum

  names = list(data)
  parts = [p for t in names for p in data[t]]
  stacked, where = _stack(parts)
  jx = jnp.asarray(stacked)
  rows: list[Row] = []

  def add(name: str, bits: int, gran: str, quantized: list[np.ndarray], overhead) -> None:
    i = 0
    for t in names:
      k = len(data[t])
      sqnr, rel = _metrics(parts[i:i + k], quantized[i:i + k])
      size = sum(p.size for p in parts[i:i + k])
      scale_bits = sum(overhead(p) for p in parts[i:i + k])
      rows.append(Row(name, bits, t, sqnr, gran, rel, bits + scale_bits / size))
      i += k

  def unstack(q: np.ndarray) -> list[np.ndarray]:
    return [q[r:r + m, :k] for r, m, k in where]

  grans = (("channel", lpnum.per_channel(0), lambda p: 32 * p.shape[0]),
           ("block32", lpnum.per_block(32, -1), lambda p: 32 * _blocks(p, 32)))
  for name, (gran, g, overhead) in progress([(n, g) for n in elements for g in grans], "scaled element formats"):
    el = lpnum.get_format(name)
    q = np.asarray(lpnum.fake_quantize(jx, lpnum.ScaledFormat(el, g)))
    add(name, el.bits, gran, unstack(q), overhead)
  for name in progress(presets, "MX and NVFP4 presets"):
    fmt = lpnum.mx.format(name)
    bits = fmt.element.bits
    if name == "nvfp4":
      quantized = [np.asarray(lpnum.fake_quantize(jnp.asarray(np.pad(p, ((0, 0), (0, -p.shape[1] % 16)))),
                                                  fmt))[:, :p.shape[1]] for p in parts]
      add(name, bits, "preset", quantized, lambda p: 8 * _blocks(p, 16) + 32)
    else:
      add(name, bits, "preset", unstack(np.asarray(lpnum.fake_quantize(jx, fmt))), lambda p: 8 * _blocks(p, 32))
  return rows


def _blocks(p: np.ndarray, size: int) -> int:
  """Blocks of ``size`` along the rows of ``p``, a partial last block counted whole."""
  return p.shape[0] * -(-p.shape[1] // size)


def _family(row: Row) -> str:
  if row.granularity == "preset":
    return "nvfp4" if row.format == "nvfp4" else "mx"
  fmt = get_format(row.format)
  for cls, name in ((PositFormat, "posit"), (IntFormat, "int"), (BinaryFormat, "binary"), (ShiftFormat, "shift")):
    if isinstance(fmt, cls):
      return name
  return "float"


def _summary(rows: Sequence[Row]) -> list[dict[str, Any]]:
  """One entry per (format, granularity): SQNR per tensor, mean SQNR, mean relative error, bits per element."""
  groups: dict[tuple[str, str], list[Row]] = {}
  for r in rows:
    groups.setdefault((r.format, r.granularity), []).append(r)
  out = []
  for (fmt, gran), rs in groups.items():
    sqnr = float(np.mean([r.sqnr_db for r in rs]))
    bpe = float(np.mean([r.bits_per_element for r in rs])) if not any(math.isnan(r.bits_per_element)
                                                                       for r in rs) else float(rs[0].bits)
    out.append({"format": fmt, "granularity": gran, "family": _family(rs[0]), "bits": rs[0].bits,
                "bits_per_element": bpe, "sqnr_db": {r.distribution: r.sqnr_db for r in rs},
                "mean_sqnr_db": sqnr, "mean_rel_error": float(np.mean([r.rel_error for r in rs])),
                "sqnr_per_bit": sqnr / bpe})
  return sorted(out, key=lambda e: -e["sqnr_per_bit"])


def table(rows: Sequence[Row]) -> str:
  """A text table: one line per (format, granularity), SQNR per tensor, ranked by mean SQNR per bit."""
  summary = _summary(rows)
  cols = list(dict.fromkeys(r.distribution for r in rows))
  widths = [max(9, len(d) + 1) for d in cols]  # whole tensor names as headers, each column as wide as its name
  head = (f"{'format':<20}{'granularity':>12}{'bits/el':>8}" + "".join(f"{d:>{w}}" for d, w in zip(cols, widths))
          + f"{'rel.err':>9}{'dB/bit':>9}")
  lines = [head, "-" * len(head)]
  for e in summary:
    vals = [e["sqnr_db"].get(d, math.nan) for d in cols]
    lines.append(f"{e['format']:<20}{e['granularity']:>12}{e['bits_per_element']:>8.2f}"
                 + "".join(f"{v:>{w}.2f}" for v, w in zip(vals, widths))
                 + f"{e['mean_rel_error']:>9.4f}{e['sqnr_per_bit']:>9.2f}")
  return "\n".join(lines)


_MARKERS = {"int": "o", "float": "s", "posit": "^", "binary": "x", "shift": "D", "mx": "*", "nvfp4": "P"}
_COLORS = {"tensor": "tab:blue", "channel": "tab:orange", "block32": "tab:green", "preset": "tab:red"}


def _points(summary: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
  """The plot's points: entries of one granularity and family with the same bits per element and SQNR (to 0.01
  dB) share one, named together; ordered by bits per element, then by SQNR from the highest."""
  points: dict[tuple, dict[str, Any]] = {}
  for e in summary:
    if not math.isfinite(e["mean_sqnr_db"]):
      continue
    key = (round(e["bits_per_element"], 3), round(e["mean_sqnr_db"], 2), e["granularity"], e["family"])
    points.setdefault(key, {**e, "names": []})["names"].append(e["format"])
  return sorted(points.values(), key=lambda p: (p["bits_per_element"], -p["mean_sqnr_db"]))


def _label_heights(ys: Sequence[float], gap: float, low: float, high: float) -> list[float]:
  """Heights for labels of points at heights ``ys`` (ascending): at least ``gap`` apart, centred on the points and
  kept within [``low``, ``high``] where they fit."""
  out = [ys[0]]
  for y in ys[1:]:
    out.append(max(y, out[-1] + gap))
  shift = (sum(out) - sum(ys)) / len(ys)
  shift = max(min(shift, out[0] - low), out[-1] - high)
  return [h - shift for h in out]


def _key_lines(points: Sequence[dict[str, Any]], width: int = 64) -> list[str]:
  """The key: one entry per point (number, formats, granularity, bits per element, mean SQNR), wrapped."""
  import textwrap

  lines = []
  for i, p in enumerate(points):
    text = (f"{i + 1:>2} {', '.join(p['names'])} ({p['granularity']}): {p['bits_per_element']:.2f} b, "
            f"{p['mean_sqnr_db']:.1f} dB")
    lines += textwrap.wrap(text, width, subsequent_indent="   ")
  return lines


#: Lines of the key per column.
_KEY_ROWS = 54


def plot(rows: Sequence[Row], path) -> Any:
  """Mean SQNR against bits per element, one marker per family, one color per granularity; each point numbered
  (the numbers of points close together stacked beside them), with the key beside the plot: number, formats,
  granularity, bits per element, mean SQNR."""
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  points = _points(_summary(rows))
  lines = _key_lines(points)
  columns = -(-len(lines) // _KEY_ROWS)
  fig, (ax, key) = plt.subplots(1, 2, figsize=(8 + 4.4 * columns, 7.5), width_ratios=[8, 4.4 * columns])
  for p in points:
    ax.scatter(p["bits_per_element"], p["mean_sqnr_db"], marker=_MARKERS[p["family"]],
               color=_COLORS[p["granularity"]], s=36, zorder=3)
  sqnr = [p["mean_sqnr_db"] for p in points]
  low, high = min(0.0, min(sqnr)) - 4, max(sqnr) * 1.08 + 4
  ax.set_ylim(low, high)
  gap = 0.03 * (high - low)
  clusters: list[list[int]] = []
  for i, p in enumerate(points):  # points within 0.1 octave of a cluster's first join it
    if clusters and math.log2(p["bits_per_element"] / points[clusters[-1][0]]["bits_per_element"]) < 0.1:
      clusters[-1].append(i)
    else:
      clusters.append([i])
  bits = [[points[i]["bits_per_element"] for i in c] for c in clusters]
  for k, cluster in enumerate(clusters):  # numbers on the side of the cluster with more room
    room_left = math.log2(bits[k][0] / bits[k - 1][-1]) if k else math.inf
    room_right = math.log2(bits[k + 1][0] / bits[k][-1]) if k + 1 < len(clusters) else math.inf
    left = room_left > room_right
    x_label = bits[k][0] * 2 ** -0.07 if left else bits[k][-1] * 2 ** 0.07
    members = sorted(cluster, key=lambda i: points[i]["mean_sqnr_db"])
    heights = _label_heights([points[i]["mean_sqnr_db"] for i in members], gap, low + gap / 2, high - gap / 2)
    for i, h in zip(members, heights):
      ax.annotate(str(i + 1), (points[i]["bits_per_element"], points[i]["mean_sqnr_db"]), (x_label, h),
                  fontsize=6.5, va="center", ha="right" if left else "left",
                  arrowprops={"arrowstyle": "-", "color": "0.6", "lw": 0.5, "shrinkA": 0, "shrinkB": 2})
  for fam, m in _MARKERS.items():
    ax.scatter([], [], marker=m, color="gray", label=fam)
  for gran, c in _COLORS.items():
    ax.scatter([], [], marker="o", color=c, label=f"scale: {gran}")
  ax.set(xscale="log", xlabel="bits per element (scales included)", ylabel="mean SQNR over tensors (dB)",
         title="SQNR vs storage (numbers: see the key)")
  ax.set_xticks([1, 2, 4, 8, 16, 32], ["1", "2", "4", "8", "16", "32"])
  ax.set_xticks([], minor=True)
  ax.grid(True, alpha=0.3)
  ax.legend(fontsize=7, ncol=2, loc="upper left")
  key.axis("off")
  for c in range(columns):
    key.text(c / columns, 1.0, "\n".join(lines[c * _KEY_ROWS:(c + 1) * _KEY_ROWS]), transform=key.transAxes,
             va="top", ha="left", fontsize=6.5, family="monospace")
  fig.tight_layout()
  return save_figure(fig, path)


def main(argv: Sequence[str] | None = None) -> list[Row]:
  """``lpnum study formats [--quick] [--out DIR] [--seed N]``: prints the table, writes ``formats.json`` and
  ``formats_sqnr_vs_bits.png`` and returns the rows."""
  quick_help = (f"2^14 values per distribution instead of 2^20, an MLP{MLP_SETUPS['quick'][0]} trained "
                f"{MLP_SETUPS['quick'][1]} steps, a CNN{CNN_SETUPS['quick'][0]} trained {CNN_SETUPS['quick'][1]} "
                f"steps, scaled rows for {', '.join(_QUICK_SCALED + _QUICK_PRESETS)}")
  args = parse_args(arg_parser("formats", __doc__, quick=quick_help), argv)
  mode = "quick" if args.quick else "full"
  start = time.perf_counter()
  data = tensors(1 << 14 if args.quick else 1 << 20, args.seed, MLP_SETUPS[mode], CNN_SETUPS[mode])
  rows = run(data=data)
  rows += run_scaled(data, *((_QUICK_SCALED, _QUICK_PRESETS) if args.quick else (SCALED, PRESETS)))
  print("SQNR (dB) per tensor; ranked by mean SQNR per bit of storage")
  print(table(rows))
  write_json("formats", {"config": {"quick": args.quick, "seed": args.seed, "tensors": list(data),
                                           "mlp_features": list(MLP_SETUPS[mode][0]), "mlp_steps": MLP_SETUPS[mode][1],
                                           "cnn_channels": list(CNN_SETUPS[mode][0]),
                                           "cnn_steps": CNN_SETUPS[mode][1]},
                                "rows": [dataclasses.asdict(r) for r in rows], "ranking": _summary(rows),
                                "notes": NOTES}, args.out)
  plot(rows, args.out / "formats_sqnr_vs_bits.png")
  print(f"({time.perf_counter() - start:.1f} s)")
  return rows
