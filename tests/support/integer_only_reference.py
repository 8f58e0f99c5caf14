"""An independent NumPy int64 re-implementation of lpnum.nn.integer_only's integer programs.

It reads only the programs' integer arrays (and their strides and ReLU flags) and computes every layer with
int64 NumPy: convolutions as explicit sums over kernel offsets of a TensorFlow-style SAME-padded input, Dense
layers as int64 matmuls, requantization and residual adds with the gemmlowp/TFLite formulas of
dyadic_reference, mean pooling as exact rational rounding (ties away from zero).
"""

from __future__ import annotations

from fractions import Fraction

import numpy as np

import dyadic_reference as dref

ADD_LEFT_SHIFT = 20


def conv_same(x: np.ndarray, w: np.ndarray, stride: int) -> np.ndarray:
  """NHWC x HWIO convolution with SAME padding (output ceil(n / stride); padding split low-first), int64."""
  n, h, wd, _ = x.shape
  kh, kw, _, cout = w.shape
  oh, ow = -(-h // stride), -(-wd // stride)
  pad_h, pad_w = max((oh - 1) * stride + kh - h, 0), max((ow - 1) * stride + kw - wd, 0)
  xp = np.pad(x.astype(np.int64), ((0, 0), (pad_h // 2, pad_h - pad_h // 2), (pad_w // 2, pad_w - pad_w // 2),
                                   (0, 0)))
  out = np.zeros((n, oh, ow, cout), np.int64)
  for i in range(kh):
    for j in range(kw):
      patch = xp[:, i:i + (oh - 1) * stride + 1:stride, j:j + (ow - 1) * stride + 1:stride, :]
      out += np.einsum("nhwc,cd->nhwd", patch, w[i, j].astype(np.int64))
  return out


def layer(x: np.ndarray, lin) -> np.ndarray:
  """One IntegerLinear: int64 accumulators plus bias, then requantization and the ReLU clamp."""
  w = np.asarray(lin.weight)
  if w.ndim == 4:
    acc = conv_same(x, w, lin.strides)
  else:
    acc = x.reshape(x.shape[0], -1).astype(np.int64) @ w.astype(np.int64)
  acc = acc + np.asarray(lin.bias, np.int64)
  assert np.abs(acc).max(initial=0) < 2**31, "an int32 accumulator would overflow"
  if lin.multiplier is None:
    return acc.astype(np.int32)
  y = dref.requantize(acc.astype(np.int32), np.asarray(lin.multiplier), np.asarray(lin.shift), 0, np.int8)
  return np.maximum(y, 0) if lin.relu else y


def add(a: np.ndarray, b: np.ndarray, op) -> np.ndarray:
  m, s = np.asarray(op.multipliers), np.asarray(op.shifts)
  sa = dref.mbqm(a.astype(np.int64) * 2**ADD_LEFT_SHIFT, m[0], s[0])
  sb = dref.mbqm(b.astype(np.int64) * 2**ADD_LEFT_SHIFT, m[1], s[1])
  y = dref.requantize(sa.astype(np.int64) + sb, m[2], s[2], 0, np.int8)
  return np.maximum(y, 0) if op.relu else y


def mean_pool(x: np.ndarray) -> np.ndarray:
  """Mean over H and W, rounded to nearest with ties away from zero (exact rationals)."""
  n = x.shape[1] * x.shape[2]
  sums = x.astype(np.int64).sum(axis=(1, 2))
  return np.vectorize(lambda v: dref.round_half_away(Fraction(int(v), n)))(sums).astype(np.int8)


def mlp(program, x_codes: np.ndarray) -> np.ndarray:
  x = np.asarray(x_codes)
  for lin in program.layers:
    x = layer(x, lin)
  return x


def cnn(program, x_codes: np.ndarray) -> np.ndarray:
  x = layer(np.asarray(x_codes), program.stem)
  for block in program.blocks:
    y = layer(layer(x, block.conv1), block.conv2)
    x = add(y, x if block.shortcut is None else layer(x, block.shortcut), block.add)
  return layer(mean_pool(x), program.head)
