"""Small helpers shared by the tests: data, the dimension numbers of a plain matmul, float64 references."""

from __future__ import annotations

import re

import jax
import numpy as np
from flax import nnx

from scaled_reference import ref_int

F32 = np.float32
#: ``lhs (M, K) @ rhs (K, N)`` as dot_general dimension numbers.
DN = (((1,), (0,)), ((), ()))
#: How a numeric function is called in the tests: as it is (eager) and under jax.jit.
TRANSFORMS = {"eager": lambda f: f, "jit": jax.jit}


def ramp(x):
  """Weights ``1, 2, ..., x.size`` in ``x``'s shape: ``sum(f(x) * ramp(x))`` makes every cotangent distinct."""
  return jax.numpy.arange(1, x.size + 1, dtype=jax.numpy.float32).reshape(x.shape)


def data(shape, seed):
  """Standard-normal float32 data, fixed by ``seed``."""
  return np.random.default_rng(seed).standard_normal(shape).astype(F32)


def int_codes(x, bits, block):
  """ref_int's integer codes and scales, unblocked: codes with x's shape, scales (rows/b0, cols/b1)."""
  _, q, scale = ref_int(x, bits, block)
  return q.reshape(x.shape), scale.reshape(x.shape[0] // block[0], x.shape[1] // block[1])


def matmul64(a, b):
  """``a @ b`` in float64 (a reference for float32 matmuls of exactly representable operands)."""
  return a.astype(np.float64) @ b.astype(np.float64)


def mlp_reference(params, x, wbits):
  """A Dense(16)-relu-Dense(16)-relu-Dense(3, name="head") network with numpy matmuls and the first two kernels int-quantized per channel."""
  for name in ("Dense_0", "Dense_1"):
    w = np.asarray(params[name]["kernel"])
    x = np.maximum(matmul64(x, ref_int(w, wbits, (w.shape[0], 1))[0]) + params[name]["bias"], 0).astype(F32)
  return matmul64(x, np.asarray(params["head"]["kernel"])) + params["head"]["bias"]


class NnxNet(nnx.Module):
  """The network of :func:`mlp_reference` in nnx (l1, l2, head)."""

  def __init__(self, rngs):
    self.l1 = nnx.Linear(10, 16, rngs=rngs)
    self.l2 = nnx.Linear(16, 16, rngs=rngs)
    self.head = nnx.Linear(16, 3, rngs=rngs)

  def __call__(self, x):
    return self.head(nnx.relu(self.l2(nnx.relu(self.l1(x)))))


def dots_in(f, *args):
  """The (lhs, rhs, out) tensor types of every dot_general in the lowered program of ``f(*args)``, and of every call
  of lpnum's native int8 x int8 -> int32 kernel (which computes a dot's integer sums on the CPU for few rows)."""
  txt = jax.jit(f).lower(*args).as_text()
  return re.findall(r"(?:dot_general|custom_call @lpnum_packed_matmul_int8\()[^\n]*?: "
                    r"\((tensor<[^>]*>), (tensor<[^>]*>)\) -> (tensor<[^>]*>)", txt)
