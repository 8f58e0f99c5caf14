"""Integer convolutions in NumPy int64, written from their definition (loops over window positions), and their two
transposes: the oracle of lpnum's integer convolutions. Layout NHWC input, HWIO kernel, NHWC output; strides,
explicit padding and feature groups."""

from __future__ import annotations

import numpy as np


def _padded(x: np.ndarray, padding) -> np.ndarray:
  return np.pad(x, ((0, 0), *padding, (0, 0)))


def conv(x: np.ndarray, w: np.ndarray, strides, padding, groups: int = 1) -> np.ndarray:
  """``y[n, p, q, o] = sum_{a, b, i} x_pad[n, p*s0 + a, q*s1 + b, g(o)*I + i] * w[a, b, i, o]``."""
  x, w = _padded(x.astype(np.int64), padding), w.astype(np.int64)
  kh, kw, i_n, o_n = w.shape
  oh = (x.shape[1] - kh) // strides[0] + 1
  ow = (x.shape[2] - kw) // strides[1] + 1
  og = o_n // groups
  y = np.zeros((x.shape[0], oh, ow, o_n), np.int64)
  for a in range(kh):
    for b in range(kw):
      patch = x[:, a:a + (oh - 1) * strides[0] + 1:strides[0], b:b + (ow - 1) * strides[1] + 1:strides[1]]
      for g in range(groups):
        y[..., g * og:(g + 1) * og] += patch[..., g * i_n:(g + 1) * i_n] @ w[a, b, :, g * og:(g + 1) * og]
  return y


def conv_input_grad(g: np.ndarray, w: np.ndarray, x_shape, strides, padding, groups: int = 1) -> np.ndarray:
  """The transpose of :func:`conv` in its input: every output ``g[n, p, q, o]`` sends ``g * w[a, b, i, o]`` back
  to the input pixel it read."""
  g, w = g.astype(np.int64), w.astype(np.int64)
  kh, kw, i_n, o_n = w.shape
  og = o_n // groups
  n, h, wd, _ = x_shape
  dx = np.zeros((n, h + padding[0][0] + padding[0][1], wd + padding[1][0] + padding[1][1], x_shape[3]), np.int64)
  oh, ow = g.shape[1:3]
  for a in range(kh):
    for b in range(kw):
      rows = slice(a, a + (oh - 1) * strides[0] + 1, strides[0])
      cols = slice(b, b + (ow - 1) * strides[1] + 1, strides[1])
      for k in range(groups):
        dx[:, rows, cols, k * i_n:(k + 1) * i_n] += g[..., k * og:(k + 1) * og] @ w[a, b, :, k * og:(k + 1) * og].T
  return dx[:, padding[0][0]:padding[0][0] + h, padding[1][0]:padding[1][0] + wd]


def conv_kernel_grad(x: np.ndarray, g: np.ndarray, w_shape, strides, padding, groups: int = 1) -> np.ndarray:
  """The transpose of :func:`conv` in its kernel: ``dw[a, b, i, o] = sum_{n, p, q} x_pad[n, p*s0 + a, q*s1 + b,
  g(o)*I + i] * g[n, p, q, o]``."""
  x, g = _padded(x.astype(np.int64), padding), g.astype(np.int64)
  kh, kw, i_n, o_n = w_shape
  og = o_n // groups
  oh, ow = g.shape[1:3]
  dw = np.zeros(w_shape, np.int64)
  for a in range(kh):
    for b in range(kw):
      patch = x[:, a:a + (oh - 1) * strides[0] + 1:strides[0], b:b + (ow - 1) * strides[1] + 1:strides[1]]
      for k in range(groups):
        dw[a, b, :, k * og:(k + 1) * og] = np.einsum("npqi,npqo->io", patch[..., k * i_n:(k + 1) * i_n],
                                                     g[..., k * og:(k + 1) * og])
  return dw


def same_padding(size: int, k: int, stride: int) -> tuple[int, int]:
  """TensorFlow/XLA 'SAME' padding: the output has ceil(size / stride) positions, the extra pad after."""
  out = -(-size // stride)
  total = max((out - 1) * stride + k - size, 0)
  return (total // 2, total - total // 2)
