"""Plain NumPy references for scaled quantization, written the obvious way: reshape into blocks, absmax,
``scale = amax / qmax`` as a float32 division, ``np.round(x / scale)`` (NumPy's float32 division and
round-half-even), clip, multiply back."""

from __future__ import annotations

import ml_dtypes
import numpy as np

F32 = np.float32
#: float32's smallest normal: no reference scale is below it.
TINY = F32(2.0 ** -126)


def blocks_of(x: np.ndarray, block: tuple[int, ...]) -> np.ndarray:
  """``x`` reshaped to ``(n0, b0, n1, b1, ...)``."""
  shape = []
  for d, b in zip(x.shape, block):
    shape += [d // b, b]
  return x.reshape(shape)


def amax_of_blocks(xb: np.ndarray) -> np.ndarray:
  """Each block's max |x| (keepdims)."""
  axes = tuple(range(1, xb.ndim, 2))
  return np.max(np.abs(xb), axis=axes, keepdims=True)


def ref_int(x: np.ndarray, bits: int, block: tuple[int, ...], narrow: bool = False):
  """Symmetric integer fake quantization with a float32 scale per block."""
  qmax = 2 ** (bits - 1) - 1
  qmin = -qmax if narrow else -qmax - 1
  xb = blocks_of(x, block)
  scale = np.clip(amax_of_blocks(xb) / F32(qmax), TINY, np.finfo(F32).max).astype(F32)
  q = np.clip(np.round(xb / scale), qmin, qmax).astype(F32) + F32(0)  # integers have no -0
  return (q * scale).reshape(x.shape), q, scale


def ref_fp8(x: np.ndarray, dtype, block: tuple[int, ...]):
  """Float-element fake quantization with a float32 scale: amax maps to the element's max."""
  top = F32(float(ml_dtypes.finfo(dtype).max))
  xb = blocks_of(x, block)
  scale = np.clip(amax_of_blocks(xb) / top, TINY, np.finfo(F32).max).astype(F32)
  q = np.clip(xb / scale, -top, top).astype(dtype).astype(F32)
  return (q * scale).reshape(x.shape)


def int_elements(bits: int):
  """Rounds float32 quotients to the signed ``bits``-bit integers (half to even, saturating)."""
  top = 2 ** (bits - 1)
  return lambda q: np.clip(np.round(q), -top, top - 1).astype(F32) + F32(0)


def float_elements(dtype):
  """Rounds float32 quotients to the ml_dtypes float ``dtype`` (saturating at its max)."""
  top = F32(float(ml_dtypes.finfo(dtype).max))
  return lambda q: np.clip(q, -top, top).astype(dtype).astype(F32)


def mse_search(x: np.ndarray, block: tuple[int, ...], ratios, elements, element_max: float,
               scale_dtype=F32) -> np.ndarray:
  """Fake quantization with the MSE-calibrated range, searched the documented way: for each candidate ratio ``c``
  in order, the block's range is ``c * amax`` (float32), its scale ``range / element_max`` (float32 division,
  clamped to [2^-126, max] and rounded to ``scale_dtype``), the elements ``elements(x / scale)``; each block keeps
  the first candidate whose float32 sum of squared errors is smaller than every earlier one's (ties keep the
  earlier)."""
  xb = blocks_of(x, block)
  axes = tuple(range(1, xb.ndim, 2))
  amax = amax_of_blocks(xb)
  best = best_err = None
  for c in ratios:
    ideal = np.clip(amax * F32(c) / F32(element_max), TINY, np.finfo(F32).max).astype(F32)
    scale = ideal.astype(scale_dtype).astype(F32)
    y = elements(xb / scale) * scale
    err = np.sum(np.square(y - xb), axis=axes, keepdims=True, dtype=F32)
    if best is None:
      best, best_err = y, err
    else:
      better = err < best_err
      best, best_err = np.where(better, y, best), np.where(better, err, best_err)
  return best.reshape(x.shape)
