"""Small bundled data sets for tests, studies and benchmarks: no downloads, the same arrays on every machine.

=====================  ===============================================================================
``digits``             scikit-learn's 8x8 handwritten digits (1797 images, 10 classes), split by a seed
``sequence_task``      synthetic pointer look-up: the first token says which position's token to predict
``batches``            a seeded, shuffling mini-batch iterator over ``(x, y)`` arrays
=====================  ===============================================================================

``digits`` needs scikit-learn (in the ``dev`` extra), which ships the images inside the package.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterator

import numpy as np

__all__ = ["digits", "sequence_task", "batches"]

_SPLITS = ("train", "test")


def _positive_int(value, name: str) -> int:
  if isinstance(value, bool) or not isinstance(value, int | np.integer):
    raise TypeError(f"{name}={value!r} must be an integer")
  if value <= 0:
    raise ValueError(f"{name}={value} must be positive")
  return int(value)


@functools.lru_cache(maxsize=1)
def _load_digits() -> tuple[np.ndarray, np.ndarray]:
  try:
    from sklearn.datasets import load_digits
  except ImportError as e:
    raise ImportError("lpnum.zoo.data.digits needs scikit-learn: pip install scikit-learn "
                      "(or install lpnum with the dev extra: pip install 'lpnum[dev]')") from e
  bunch = load_digits()
  x = np.asarray(bunch.images, np.float32) / np.float32(16.0)
  y = np.asarray(bunch.target, np.int32)
  x.flags.writeable = False
  y.flags.writeable = False
  return x, y


def digits(split: str = "train", *, seed: int = 0, test_fraction: float = 0.2,
           flat: bool = False) -> tuple[np.ndarray, np.ndarray]:
  """scikit-learn's handwritten digits, split into train and test sets, stratified by class.

  Each class's images are permuted by ``numpy.random.default_rng(seed)`` (classes in order 0..9) and the first
  ``round(test_fraction * class size)`` of them (at least one, never all) go to the test set; the same ``seed``
  and ``test_fraction`` give the same, disjoint splits on every machine. Images keep the data set's order.

  Args:
    split: ``"train"`` or ``"test"``.
    seed: seed of the split.
    test_fraction: share of each class held out for testing, in (0, 1).
    flat: return ``x`` as ``(n, 64)`` instead of ``(n, 8, 8, 1)``.

  Returns:
    ``(x, y)``: float32 pixels in [0, 1] (the data set's 0..16 intensities divided by 16), shape
    ``(n, 8, 8, 1)`` (NHWC, one channel) or ``(n, 64)``; int32 labels in 0..9, shape ``(n,)``.

  Raises:
    ImportError: scikit-learn is not installed.

  Example:
    >>> from lpnum.zoo import data
    >>> x, y = data.digits("train")
    >>> x.shape, x.dtype, y.shape, float(x.max())
    ((1438, 8, 8, 1), dtype('float32'), (1438,), 1.0)
    >>> data.digits("test", flat=True)[0].shape
    (359, 64)
  """
  if split not in _SPLITS:
    raise ValueError(f"split={split!r} must be one of {list(_SPLITS)}")
  if isinstance(test_fraction, bool) or not isinstance(test_fraction, int | float):
    raise TypeError(f"test_fraction={test_fraction!r} must be a number")
  if not 0.0 < test_fraction < 1.0:
    raise ValueError(f"test_fraction={test_fraction} must lie in (0, 1)")
  if isinstance(seed, bool) or not isinstance(seed, int | np.integer):
    raise TypeError(f"seed={seed!r} must be an integer")
  images, labels = _load_digits()
  rng = np.random.default_rng(seed)
  test = np.zeros(labels.shape, bool)
  for c in range(10):
    members = np.flatnonzero(labels == c)
    n_test = min(max(round(test_fraction * members.size), 1), members.size - 1)
    test[rng.permutation(members)[:n_test]] = True
  keep = test if split == "test" else ~test
  x, y = images[keep], labels[keep]
  return (x.reshape(-1, 64) if flat else x[..., None]), y


def sequence_task(n: int, *, length: int = 16, vocab: int = 16, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
  """A synthetic sequence classification task that needs attention: look up the token a pointer names.

  Every token is uniform in ``[0, vocab)`` except the first, a pointer ``k`` uniform in
  ``[1, min(length, vocab))``; the label is the token at position ``k``. A model that pools positions
  independently cannot solve it (the label depends on a pair of positions), chance accuracy is ``1 / vocab``,
  and a 2-layer transformer solves it: one layer copies the pointer to every position, the next attends to the
  position it names.

  Args:
    n: number of sequences.
    length: tokens per sequence, at least 2.
    vocab: vocabulary size (and number of classes), at least 2.
    seed: seed of ``numpy.random.default_rng``.

  Returns:
    ``(x, y)``: int32 tokens of shape ``(n, length)`` and int32 labels of shape ``(n,)``.

  Example:
    >>> from lpnum.zoo import data
    >>> x, y = data.sequence_task(3, length=6, vocab=5)
    >>> x.shape, y.shape
    ((3, 6), (3,))
    >>> bool((y == x[range(3), x[:, 0]]).all())
    True
  """
  n = _positive_int(n, "n")
  length = _positive_int(length, "length")
  vocab = _positive_int(vocab, "vocab")
  if length < 2:
    raise ValueError(f"length={length} must be at least 2 (a pointer and a token)")
  if vocab < 2:
    raise ValueError(f"vocab={vocab} must be at least 2")
  rng = np.random.default_rng(seed)
  x = rng.integers(0, vocab, size=(n, length), dtype=np.int32)
  x[:, 0] = rng.integers(1, min(length, vocab), size=n, dtype=np.int32)
  y = x[np.arange(n), x[:, 0]]
  return x, y


def batches(x: np.ndarray, y: np.ndarray, batch_size: int, *, seed: int,
            epochs: int | None = None) -> Iterator[tuple[np.ndarray, np.ndarray]]:
  """Shuffled mini-batches of ``(x, y)``: a fresh ``default_rng(seed)`` permutation every epoch.

  Every batch has exactly ``batch_size`` examples (an epoch's last ``len(x) % batch_size`` examples are
  dropped, so a jitted step compiles once); the sequence depends only on the arrays, ``batch_size`` and ``seed``.

  Args:
    x: inputs, indexed along the first axis.
    y: targets, the same length as ``x``.
    batch_size: examples per batch, at most ``len(x)``.
    seed: seed of the shuffling.
    epochs: passes over the data; ``None`` iterates forever.

  Yields:
    ``(x_batch, y_batch)`` numpy arrays.

  Example:
    >>> import numpy as np
    >>> from lpnum.zoo import data
    >>> x = np.arange(10)
    >>> [b[0].tolist() for b in data.batches(x, x, 4, seed=0, epochs=1)]
    [[4, 6, 2, 7], [3, 5, 9, 0]]
  """
  x, y = np.asarray(x), np.asarray(y)
  if x.ndim == 0 or y.ndim == 0 or len(x) != len(y):
    raise ValueError(f"x (shape {x.shape}) and y (shape {y.shape}) must have the same, non-zero length")
  batch_size = _positive_int(batch_size, "batch_size")
  if batch_size > len(x):
    raise ValueError(f"batch_size={batch_size} must be at most len(x)={len(x)}")
  if isinstance(seed, bool) or not isinstance(seed, int | np.integer):
    raise TypeError(f"seed={seed!r} must be an integer")
  if epochs is not None:
    epochs = _positive_int(epochs, "epochs")
  return _batches(x, y, batch_size, seed, math.inf if epochs is None else epochs)


def _batches(x, y, batch_size, seed, epochs):
  rng = np.random.default_rng(seed)
  epoch = 0
  while epoch < epochs:
    order = rng.permutation(len(x))
    for start in range(0, len(x) - batch_size + 1, batch_size):
      idx = order[start:start + batch_size]
      yield x[idx], y[idx]
    epoch += 1
