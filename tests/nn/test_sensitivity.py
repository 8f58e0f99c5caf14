"""lpnum.nn.sensitivity: Hutchinson's per-layer Hessian trace against the exact trace from jax.hessian, the
convergence check, and HAWQ-V2's sensitivity against NumPy / ml_dtypes / the MX reference quantizers."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest

import lpnum
from lpnum import nn as lnn
from lpnum.nn import sensitivity as sens
from lpnum.nn.ptq import fake_quantized_params
from lpnum.zoo.models import CNN, Transformer

import mx_reference
from scaled_reference import ref_fp8, ref_int


class _Net(nn.Module):
  """Dense(12) -> tanh -> Dense(4): 72 + 48 kernel entries (and biases, which are not probed)."""

  @nn.compact
  def __call__(self, x):
    h = jnp.tanh(nn.Dense(12)(x))
    return nn.Dense(4)(h)


def _problem():
  x = jax.random.normal(jax.random.key(1), (32, 6))
  y = jax.random.randint(jax.random.key(2), (32,), 0, 4)
  model = _Net()
  params = model.init(jax.random.key(0), x)["params"]

  def loss(p, batch):
    xb, yb = batch
    logits = model.apply({"params": p}, xb)
    return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), yb[:, None], axis=1))

  return params, loss, (x, y)


def _exact_block_traces(params, loss, batch):
  """Tr of each kernel's Hessian block: jax.hessian of the loss in that kernel alone, flattened."""
  out = {}
  for layer in ("Dense_0", "Dense_1"):
    w = params[layer]["kernel"]

    def f(flat, layer=layer, shape=w.shape):
      p = {**params, layer: {**params[layer], "kernel": flat.reshape(shape)}}
      return loss(p, batch)

    out[layer] = float(jnp.trace(jax.jit(jax.hessian(f))(w.ravel())))
  return out


def test_trace_matches_the_exact_hessian_trace_within_its_standard_error():
  params, loss, batch = _problem()
  exact = _exact_block_traces(params, loss, batch)
  est = sens.hessian_trace(loss, params, jax.random.key(3), batch=batch, tol=1e-9, max_probes=512, chunk=128)
  assert est.probes == 512 and not est.converged
  assert est.n_params == {"Dense_0": 72, "Dense_1": 48}
  for layer, t in exact.items():
    assert t > 0
    assert abs(est.trace[layer] - t) <= 4 * est.stderr[layer], (layer, est.trace[layer], t, est.stderr[layer])
    assert est.stderr[layer] < 0.2 * t  # the estimate is informative at this probe count
  assert est.mean_eigenvalue() == {p: est.trace[p] / est.n_params[p] for p in exact}


def _coupled():
  """Two kernels under a quadratic form with a dense, random Hessian A (cross-layer blocks included)."""
  rng = np.random.default_rng(0)
  m = rng.standard_normal((19, 19)).astype(np.float32)
  a = m @ m.T / 19
  params = {"a": {"kernel": jnp.ones((4, 3))}, "b": {"kernel": jnp.ones((5,)), "bias": jnp.ones(2)}}

  def loss(p):
    theta = jnp.concatenate([p["a"]["kernel"].ravel(), p["b"]["kernel"], p["b"]["bias"]])
    return 0.5 * theta @ a @ theta

  return params, loss, {"a": float(np.trace(a[:12, :12])), "b": float(np.trace(a[12:17, 12:17]))}


def test_estimate_is_a_function_of_the_key_and_probe_count_not_the_chunk_or_the_loss_form():
  params, loss, _ = _coupled()
  a = sens.hessian_trace(lambda p, batch: loss(p) * batch, params, jax.random.key(5), batch=1.0, tol=1e-9,
                         max_probes=40, chunk=8)
  b = sens.hessian_trace(jax.jit(loss), params, jax.random.key(5), tol=1e-9, max_probes=40, chunk=7)
  assert a.probes == b.probes == 40
  for layer in a.trace:
    np.testing.assert_allclose(b.trace[layer], a.trace[layer], rtol=1e-5)
    np.testing.assert_allclose(b.stderr[layer], a.stderr[layer], rtol=1e-4)


def test_a_diagonal_hessian_is_exact_from_one_probe_and_converges_at_once():
  """Rademacher probes have v_i^2 = 1, so v^T D v = Tr(D) for a diagonal D: every sample is exact."""
  c = {"a": np.arange(1, 7, dtype=np.float32).reshape(2, 3), "b/c": np.full((4, 1), 0.25, np.float32)}
  params = {"a": {"kernel": jnp.ones((2, 3)), "bias": jnp.ones(3)}, "b": {"c": {"kernel": jnp.ones((4, 1))}}}

  def loss(p):
    return (jnp.sum(c["a"] * p["a"]["kernel"] ** 2) + jnp.sum(c["b/c"] * p["b"]["c"]["kernel"] ** 2)
            + jnp.sum(p["a"]["bias"] ** 4))

  est = sens.hessian_trace(loss, params, jax.random.key(0), min_probes=4, chunk=4)
  assert est.converged and est.probes == 4
  assert est.trace == pytest.approx({"a": 2 * 21.0, "b/c": 2 * 1.0}, rel=1e-6)
  assert est.stderr == {"a": 0.0, "b/c": 0.0}


def test_convergence_check_stops_once_the_relative_standard_error_is_below_tol():
  params, loss, exact = _coupled()
  loose = sens.hessian_trace(loss, params, jax.random.key(6), tol=0.1, min_probes=8, chunk=8, max_probes=4096)
  assert loose.converged and 8 <= loose.probes < 4096 and loose.probes % 8 == 0
  for p, t in exact.items():
    assert loose.stderr[p] <= 0.1 * abs(loose.trace[p])
    assert abs(loose.trace[p] - t) <= 4 * loose.stderr[p]
  tight = sens.hessian_trace(loss, params, jax.random.key(6), tol=1e-6, min_probes=8, chunk=8, max_probes=24)
  assert not tight.converged and tight.probes == 24 and tight.tol == 1e-6


def test_layers_selects_and_checks_paths():
  params = {"a": {"kernel": jnp.ones((2, 2))}, "b": {"kernel": jnp.ones((3,))}}
  loss = lambda p: jnp.sum(p["a"]["kernel"] ** 2) + jnp.sum(jnp.sin(p["b"]["kernel"]))
  est = sens.hessian_trace(loss, params, jax.random.key(0), layers=["b"], min_probes=2, chunk=2)
  assert list(est.trace) == ["b"] and est.trace["b"] == pytest.approx(-3 * np.sin(1.0), rel=1e-6)
  with pytest.raises(ValueError, match="layers: 'Dense_7' is not a layer"):
    sens.hessian_trace(loss, params, jax.random.key(0), layers=["Dense_7"])


def test_layer_paths_of_zoo_models():
  init = lambda model, x, **kw: jax.eval_shape(lambda: model.init(jax.random.key(0), x, **kw))["params"]
  cnn = init(CNN(channels=(4, 8)), jnp.zeros((1, 8, 8, 1)), train=False)
  assert sens.layer_paths(cnn) == ("Conv_0", "Dense_0", "ResidualBlock_0/Conv_0", "ResidualBlock_0/Conv_1",
                                   "ResidualBlock_1/Conv_0", "ResidualBlock_1/Conv_1", "ResidualBlock_1/Conv_2")
  tf = Transformer(vocab=8, length=4, dim=8, heads=2, layers=1, mlp_dim=16)
  paths = sens.layer_paths(init(tf, jnp.zeros((1, 4), jnp.int32)))
  assert "TransformerBlock_0/MultiHeadDotProductAttention_0/query" in paths and len(paths) == 7
  assert not any("embed" in p for p in paths)  # embeddings hold "embedding", not a kernel


@pytest.mark.parametrize("bad,kwargs,error,match", [
    ("loss", {}, TypeError, "loss_fn="),
    (None, {"key": 3}, TypeError, "key="),
    (None, {"tol": 0.0}, ValueError, "tol=0.0 must be positive"),
    (None, {"min_probes": 1}, ValueError, r"min_probes=1 must be in \[2, inf\]"),
    (None, {"min_probes": 8, "max_probes": 4}, ValueError, "max_probes=4 must be at least min_probes=8"),
    (None, {"chunk": 0}, ValueError, "chunk=0"),
    (None, {"layers": "Dense_0"}, TypeError, "layers='Dense_0' must be a sequence"),
    (None, {"layers": []}, ValueError, "layers=.* must name distinct layers"),
])
def test_hessian_trace_bad_inputs(bad, kwargs, error, match):
  params, loss, batch = _problem()
  args = {"key": jax.random.key(0), **kwargs}
  with pytest.raises(error, match=match):
    sens.hessian_trace(bad or loss, params, args.pop("key"), batch=batch, **args)


def test_hessian_trace_rejects_a_non_scalar_loss_and_integer_kernels():
  params, _, _ = _problem()
  with pytest.raises(ValueError, match="loss_fn must return a float scalar"):
    sens.hessian_trace(lambda p: p["Dense_0"]["kernel"], params, jax.random.key(0))
  with pytest.raises(TypeError, match="Dense_0/kernel has dtype int32"):
    sens.hessian_trace(lambda p: 0.0, {"Dense_0": {"kernel": jnp.ones((2, 2), jnp.int32)}}, jax.random.key(0))
  with pytest.raises(ValueError, match="kernel_name='kernel': params hold no such leaf"):
    sens.hessian_trace(lambda p: 0.0, {"w": jnp.ones(2)}, jax.random.key(0))


# ---- sensitivity -----------------------------------------------------------------------------------------------
def _kernels():
  rng = np.random.default_rng(0)
  return {"Dense_0": {"kernel": rng.standard_normal((64, 24)).astype(np.float32)},
          "blk/Conv_0": {"kernel": rng.standard_normal((3, 3, 4, 8)).astype(np.float32)}}


def _reference_perturbation(w, fmt):
  """||Q(W) - W||^2 with Q written independently, in the 2-D view (K, N)."""
  w2 = w.reshape(-1, w.shape[-1])
  k = w2.shape[0]
  if fmt == "int8":
    q = ref_int(w2, 8, (k, 1))[0]
  elif fmt == "int4_g8":
    pad = -k % 8
    q = ref_int(np.pad(w2, ((0, pad), (0, 0))), 4, (8, 1))[0][:k]
  elif fmt == "e4m3":
    q = ref_fp8(w2, ml_dtypes.float8_e4m3fn, (k, 1))
  elif fmt == "mxfp4":
    pad = -k % 32
    q = mx_reference.mx_quantize(np.pad(w2, ((0, pad), (0, 0))), "mxfp4_e2m1", axis=0)[2][:k]
  else:
    q = w2
  return float(np.sum((q.astype(np.float64) - w2.astype(np.float64)) ** 2))


CANDIDATES = {"int8": lpnum.DotConfig.weight_only("int8"), "e4m3": lpnum.DotConfig.weight_only("float8_e4m3fn"),
              "float32": None}
#: Per-group and MX candidates: the same check, in the slow set (each format compiles its own quantizer).
MORE_CANDIDATES = {"int4_g8": lpnum.DotConfig.weight_only("int4", lpnum.per_block(8)),
                   "mxfp4": lpnum.DotConfig.weight_only("mxfp4_e2m1")}


@pytest.mark.parametrize("candidates", [pytest.param(CANDIDATES, id="channel"),
                                        pytest.param(MORE_CANDIDATES, id="group_mx", marks=pytest.mark.slow)])
def test_sensitivity_matches_trace_over_n_times_the_reference_perturbation(candidates):
  params = _kernels()
  traces = {"Dense_0": 3.5, "blk/Conv_0": -0.25}   # a trace may be negative away from a minimum
  omega = sens.sensitivity(params, traces, candidates)
  assert list(omega) == ["Dense_0", "blk/Conv_0"]
  for layer, t in traces.items():
    w = params[layer]["kernel"]
    for label in candidates:
      expected = t / w.size * _reference_perturbation(w, label)
      assert omega[layer][label] == pytest.approx(expected, rel=1e-9, abs=1e-12), (layer, label)
      assert label == "float32" or omega[layer][label] != 0


def test_sensitivity_takes_a_hessian_trace_and_views():
  rng = np.random.default_rng(1)
  w = rng.standard_normal((6, 2, 5)).astype(np.float32)   # a DenseGeneral-like kernel contracting its first 2 axes
  params = {"out": {"kernel": w}}
  est = sens.HessianTrace(trace={"out": 2.0}, stderr={"out": 0.0}, n_params={"out": 60}, probes=2, converged=True,
                          tol=0.1)
  cands = {"int8": lpnum.DotConfig.weight_only("int8")}
  omega = sens.sensitivity(params, est, cands, views={"out": 2})
  assert omega["out"]["int8"] == pytest.approx(2.0 / 60 * float(
      np.sum((ref_int(w.reshape(12, 5), 8, (12, 1))[0] - w.reshape(12, 5)).astype(np.float64) ** 2)), rel=1e-9)
  default = sens.sensitivity(params, est, cands)   # without views: K = 6 * 2 as well (all but the last axis)
  assert default == omega


def test_sensitivity_bad_inputs():
  params = _kernels()
  with pytest.raises(TypeError, match="candidates=.* must be a non-empty mapping"):
    sens.sensitivity(params, {"Dense_0": 1.0}, [lpnum.DotConfig.weight_only("int8")])
  with pytest.raises(TypeError, match=r"candidates\['x'\]='int8' must be a DotConfig or None"):
    sens.sensitivity(params, {"Dense_0": 1.0}, {"x": "int8"})
  with pytest.raises(ValueError, match="trace: 'Dense_9' is not a layer"):
    sens.sensitivity(params, {"Dense_9": 1.0}, CANDIDATES)
  with pytest.raises(ValueError, match=r"trace\['Dense_0'\]=nan must be finite"):
    sens.sensitivity(params, {"Dense_0": float("nan")}, CANDIDATES)
  with pytest.raises(TypeError, match="trace=.* must be a HessianTrace"):
    sens.sensitivity(params, {}, CANDIDATES)


#: A direct cast: ptq packs it with a static scale of 1, and quantized_kernel must round it the same way.
CASTS = {"int8_cast": lpnum.DotConfig.weight_only("int8", lpnum.per_tensor(), scaling="none")}


@pytest.mark.parametrize("label,layer,views", [("mxfp4", "blk/Conv_0", None), ("int8_cast", "Dense_0", None),
                                               pytest.param("int4_g8", "Dense_0", None, marks=pytest.mark.slow),
                                               pytest.param("int8", "out", {"out": 2}, marks=pytest.mark.slow)])
def test_quantized_kernel_is_what_ptq_stores(label, layer, views):
  """Bit for bit the kernel that lpnum.nn.ptq packs, dequantized (K = 36 pads to the MX block of 32 along K)."""
  params = {**_kernels(), "out": {"kernel": np.random.default_rng(2).standard_normal((6, 2, 5)).astype(np.float32)}}
  config = {**CANDIDATES, **MORE_CANDIDATES, **CASTS}[label]
  ptq_kernel = fake_quantized_params({layer: params[layer]}, [lnn.Rule(".*", config)], views=views)[layer]["kernel"]
  got = sens.quantized_kernel(params[layer]["kernel"], config, contract=None if views is None else views[layer])
  np.testing.assert_array_equal(np.asarray(got), np.asarray(ptq_kernel))
  assert got.shape == params[layer]["kernel"].shape


def test_quantized_kernel_bad_inputs():
  with pytest.raises(TypeError, match="config='int8' must be a DotConfig or None"):
    sens.quantized_kernel(jnp.ones((2, 2)), "int8")
  with pytest.raises(ValueError, match=r"kernel has shape \(3,\): it must have at least 2 dimensions"):
    sens.quantized_kernel(jnp.ones(3), CANDIDATES["int8"])
  with pytest.raises(ValueError, match=r"contract=2 must be in \[1, 1\]"):
    sens.quantized_kernel(jnp.ones((2, 2)), CANDIDATES["int8"], contract=2)
  assert sens.quantized_kernel(jnp.ones((2, 2)), None) is not None
