"""Compressed all-reduce (lpnum.nn.comm) on 8 host CPU devices, against an independent NumPy reference.

The multi-device runs happen once, in a subprocess (tests/_multidevice.py, which needs XLA_FLAGS before jax
starts); the tests here assert on its saved arrays and facts. The reference below uses only NumPy and ml_dtypes:
per block of each device's flattened tensor, the scale ``absmax / M`` (float32 division, at least 2^-126), the
quotient rounded half to even (``np.rint`` for int8, an ml_dtypes cast for float8), dequantized as the float32
product; the devices' values summed in float32 in device order; the sum quantized and dequantized again.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import optax
import pytest
from jax.sharding import Mesh, PartitionSpec as P

import lpnum
from lpnum.nn.comm import compressed_mean_grads, compressed_psum, data_parallel_step
import _multidevice as md

HERE = Path(__file__).parent

TOP = {"int8": 127.0, "float8_e4m3fn": 448.0, "float8_e5m2": 57344.0}
FP8 = {"float8_e4m3fn": ml_dtypes.float8_e4m3fn, "float8_e5m2": ml_dtypes.float8_e5m2}
#: (mantissa bits, exponent of the smallest normal) of the float8 formats, for the error bound.
FP8_BITS = {"float8_e4m3fn": (3, -6), "float8_e5m2": (2, -14)}


# One 8-device subprocess for the whole module: the slow set, which .ci/run runs.
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def run(tmp_path_factory):
  out = tmp_path_factory.mktemp("multidevice")
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu")
  proc = subprocess.run([sys.executable, str(HERE / "_multidevice.py"), str(out)], env=env, capture_output=True,
                        text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  with open(out / "results.json") as f:
    results = json.load(f)
  return dict(np.load(out / "arrays.npz")), results


# ---- the reference ---------------------------------------------------------------------------------------------
def ref_quantize(v: np.ndarray, fmt: str, block: int) -> tuple[np.ndarray, np.ndarray]:
  """Dequantized values of ``v (..., k * block)`` and each element's block scale."""
  b = v.reshape(v.shape[:-1] + (-1, block))
  amax = np.max(np.abs(b), axis=-1, keepdims=True)
  s = np.maximum(amax / np.float32(TOP[fmt]), np.float32(2.0 ** -126))
  q = b / s
  q = np.clip(np.rint(q), -128, 127) if fmt == "int8" else q.astype(FP8[fmt]).astype(np.float32)
  return (q * s).reshape(v.shape), np.broadcast_to(s, b.shape).reshape(v.shape)


def ref_sum(xs: np.ndarray, fmt: str, block: int, mean: bool = False) -> dict[str, np.ndarray]:
  """The compressed sum over axis 0 (the devices) and its intermediates, all flat and padded to whole blocks."""
  n = xs.shape[0]
  flat = xs.reshape(n, -1).astype(np.float32)
  flat = np.pad(flat, ((0, 0), (0, -flat.shape[1] % block)))
  dq1, s1 = ref_quantize(flat, fmt, block)
  partial = dq1[0]
  for row in dq1[1:]:
    partial = partial + row
  dq2, s2 = ref_quantize(partial, fmt, block)
  out = dq2 / np.float32(n) if mean else dq2
  return {"x": flat, "dq1": dq1, "s1": s1, "partial": partial, "s2": s2, "out": out}


def unpad(flat: np.ndarray, shape) -> np.ndarray:
  return flat[:int(np.prod(shape))].reshape(shape)


def quant_error_bound(v: np.ndarray, s: np.ndarray, fmt: str, steps: float = 0.5) -> np.ndarray:
  """The bound on one quantization's error: ``steps`` of the grid step around ``v``, with float32 slack."""
  if fmt == "int8":
    e = 2 * steps * s
  else:
    m, emin = FP8_BITS[fmt]
    e = 2 * steps * (2.0 ** -m * np.abs(v) + s * 2.0 ** (emin - m))
  return e * (1 + 2.0 ** -14)


def sum_error_bound(r: dict, fmt: str, steps: float = 0.5) -> np.ndarray:
  n = r["x"].shape[0]
  x, dq1, partial = (r[k].astype(np.float64) for k in ("x", "dq1", "partial"))
  first = quant_error_bound(x, r["s1"], fmt, steps).sum(0)
  second = quant_error_bound(partial, r["s2"], fmt, steps)
  return first + second + (n - 1) * 2.0 ** -24 * np.abs(dq1).sum(0)


# ---- results on 8 devices ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", list(md.CASES))
def test_equals_the_numpy_reference_bit_for_bit(run, name):
  arrays, results = run
  fmt, shape, block, mean, dtype = md.CASES[name]
  want = unpad(ref_sum(arrays["x__" + name], fmt, block, mean)["out"], shape)
  if dtype == "bfloat16":
    want = want.astype(ml_dtypes.bfloat16).astype(np.float32)
  got = arrays[name]
  assert got.shape == shape and results["dtypes"][name] == dtype
  np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("name", ["int8", "e4m3", "e5m2", "tiny", "odd_block"])
def test_error_within_the_stated_bound(run, name):
  arrays, _ = run
  fmt, shape, block, mean, _ = md.CASES[name]
  xs = arrays["x__" + name]
  r = ref_sum(xs, fmt, block, mean)
  exact = xs.reshape(xs.shape[0], -1).astype(np.float64).sum(0)
  bound = unpad(sum_error_bound(r, fmt), exact.shape)
  n = xs.shape[0] if mean else 1
  err = np.abs(arrays[name].reshape(-1).astype(np.float64) * n - exact)
  assert np.all(err <= bound), np.max(err / bound)
  assert np.max(err / bound) > 0.1  # the bound is not vacuous
  if fmt == "int8":  # the summary form: about 2/254 of the sum of the block maxima
    amax = np.abs(r["x"].reshape(8, -1, block)).max(-1).sum(0)
    assert np.all(err <= unpad(np.repeat(amax, block) * 2 / 254 * (1 + 2.0 ** -12), err.shape))


def test_tree_mean_keeps_leaves_in_separate_blocks(run):
  """Each leaf is averaged as if alone: its blocks never hold another leaf's values."""
  arrays, _ = run
  for name, shape in md.TREE.items():
    want = unpad(ref_sum(arrays["x__tree_" + name], "int8", md.TREE_BLOCK, mean=True)["out"], shape)
    np.testing.assert_array_equal(arrays["tree__" + name], want)


def test_codes_travel_as_bytes_and_no_float32_tensor_is_reduced(run):
  _, results = run
  lowered = results["psum_lowered"]
  assert {op for op, _, _ in lowered} == {"all_to_all", "all_gather"}
  assert {dtype for _, dtype, _ in lowered} == {"i8", "f32"}
  # Every phase sends codes, then one float32 scale per block of them.
  blocks = {block for _, _, block, _, _ in md.CASES.values()} | {64, md.TREE_BLOCK}
  assert len(lowered) == 4 * (len(md.CASES) + 3)  # the cases, with and without rotation, the tree
  for (op, dtype, count), (op2, dtype2, count2) in zip(lowered[::2], lowered[1::2]):
    assert (op, dtype, op2, dtype2) == (op, "i8", op, "f32")
    assert count // count2 in blocks and count % count2 == 0
  # XLA keeps them bytes: it widens float8 collectives to float16 on the CPU, but these are int8.
  compiled = results["psum_compiled"]
  assert len(compiled) == len(lowered)
  assert {op for op, _ in compiled} == {"all-to-all", "all-gather"}
  assert {t for _, types in compiled for t in types} == {"s8", "f32"}


def test_training_step_communicates_bytes(run):
  _, results = run
  step = results["step_lowered"]
  assert [dtype for op, dtype, _ in step if op != "all_reduce"] == ["i8", "f32", "i8", "f32"]
  assert [(dtype, count) for op, dtype, count in step if op == "all_reduce"] == [("f32", 1)]  # the loss
  assert set(results["step_shardings"]) <= {"P()", "P(None,)", "P(None, None)"}


def test_stochastic_rounding_is_deterministic_per_key(run):
  arrays, _ = run
  for name in ("crafted_int8", "crafted_e4m3", "int8"):
    np.testing.assert_array_equal(arrays["sr_a__" + name], arrays["sr_a_again__" + name])
    assert (arrays["sr_a__" + name] != arrays["sr_b__" + name]).mean() > 0.1


@pytest.mark.parametrize("name, anchor", [("crafted_int8", 127.0), ("crafted_e4m3", 448.0)])
def test_stochastic_rounding_is_unbiased(run, name, anchor):
  """Blocks of 31 values 10.25 (a quarter step above 10) and one anchor fixing the scale: to nearest, every
  device sends 10 and the sum is 80 instead of 82; stochastically the mean over ~15k elements is 82 within 5
  standard errors."""
  arrays, _ = run
  anchors = np.zeros(4096, bool)
  anchors[::32] = True
  nearest = arrays[name]
  np.testing.assert_array_equal(nearest[anchors], 8 * anchor)
  np.testing.assert_array_equal(nearest[~anchors], 80.0)
  for tag in ("a", "b"):
    y = arrays[f"sr_{tag}__{name}"]
    np.testing.assert_array_equal(y[anchors], 8 * anchor)
    v = y[~anchors].astype(np.float64)
    assert abs(v.mean() - 82.0) <= 5 * v.std() / np.sqrt(v.size), (v.mean(), v.std())


def test_stochastic_rounding_error_within_one_step(run):
  arrays, _ = run
  xs = arrays["x__int8"]
  r = ref_sum(xs, "int8", 32)
  exact = xs.reshape(8, -1).astype(np.float64).sum(0)
  bound = unpad(sum_error_bound(r, "int8", steps=1.0), exact.shape)
  for tag in ("a", "b"):
    err = np.abs(arrays[f"sr_{tag}__int8"].reshape(-1) - exact)
    assert np.all(err <= bound * (1 + 2.0 ** -8)), np.max(err / bound)


def test_rotation_protects_small_values_next_to_outliers(run):
  arrays, _ = run
  exact = arrays["x__outliers"].astype(np.float64).sum(0)
  small = np.ones(exact.size, bool)
  small[::64] = False
  rms = lambda e: np.sqrt(np.mean(e ** 2))
  plain, rotated = arrays["no_rotate"] - exact, arrays["rotate"] - exact
  assert rms(plain[small]) > 0.9 * rms(exact[small])  # the outlier's scale rounds its neighbours to zero
  assert rms(rotated) < 0.5 * rms(plain)
  assert np.max(np.abs(rotated)) < 0.01 * np.max(np.abs(exact))


def test_data_parallel_training(run):
  arrays, results = run
  single, none, int8 = (np.array(results[f"losses_{k}"]) for k in ("single", "none", "int8"))
  # Sharded, uncompressed: the single-device step on the whole batch, up to float32 rounding.
  np.testing.assert_allclose(none, single, rtol=1e-5)
  np.testing.assert_allclose(arrays["params_none"], arrays["params_single"], rtol=1e-4, atol=1e-6)
  # int8 gradients train as well and stay close to the uncompressed run.
  assert int8[-1] < 0.1 * int8[0]
  np.testing.assert_allclose(int8, none, rtol=0.01)
  p, q = arrays["params_int8"], arrays["params_none"]
  assert np.linalg.norm(p - q) < 0.01 * np.linalg.norm(q)
  # A mesh with explicit axes (jax.make_mesh's default) gives the same steps.
  np.testing.assert_array_equal(results["losses_int8_explicit"], int8[:3])
  np.testing.assert_array_equal(arrays["params_int8_explicit"], arrays["int8_params3"])
  assert "batch" in results["bad_batch_error"] and "divisible by the 8 devices" in results["bad_batch_error"]


# ---- argument checks (one device) --------------------------------------------------------------------------------
@pytest.mark.parametrize("kwargs, match", [
    ({"fmt": "int4"}, "fmt='int4'"),
    ({"fmt": "float8_e4m3fnuz"}, "fmt="),
    ({"block": 0}, "block=0"),
    ({"block": 2.0}, "block=2.0"),
    ({"block": True}, "block=True"),
    ({"block": 48, "rotate": True}, "block=48"),
    ({"rounding": "stochastic"}, "key="),
    ({"rounding": "nearest"}, "rounding='nearest'"),
])
def test_bad_arguments(kwargs, match):
  with pytest.raises(ValueError, match=match):
    compressed_psum(jnp.ones(4), "data", **kwargs)
  with pytest.raises(ValueError, match=match):
    compressed_mean_grads({"w": jnp.ones(4)}, "data", **kwargs)


def test_bad_step_arguments():
  mesh = Mesh(np.array(jax.devices()[:1]), ("data",))
  loss = lambda w, b: jnp.mean(b * w)
  with pytest.raises(ValueError, match="axis='batch'"):
    data_parallel_step(loss, optax.sgd(0.1), mesh, axis="batch")
  with pytest.raises(ValueError, match="comm_fmt='int2'"):
    data_parallel_step(loss, optax.sgd(0.1), mesh, comm_fmt="int2")
  with pytest.raises(TypeError, match="optimizer"):
    data_parallel_step(loss, lambda g: g, mesh)
  w = jnp.ones(())
  step = data_parallel_step(loss, optax.sgd(0.1), mesh, rounding="stochastic")
  with pytest.raises(ValueError, match="key="):
    step(w, optax.sgd(0.1).init(w), jnp.ones(4))
  with pytest.raises(ValueError, match="batch"):
    step(w, optax.sgd(0.1).init(w), jnp.ones(()), jax.random.key(0))
  with pytest.raises(TypeError, match="x must be"):
    compressed_psum(jnp.ones(4, jnp.int32), "data")


# ---- one device ----------------------------------------------------------------------------------------------
def test_one_device_format_objects_float32_empty_and_non_finite():
  mesh = Mesh(np.array(jax.devices()[:1]), ("data",))

  def body(x, empty):
    return {"object": compressed_psum(x, "data", lpnum.get_format("float8_e5m2"), block=4),
            "name": compressed_psum(x, "data", "float8_e5m2", block=4),
            "float32": compressed_psum(x, "data", None),
            "empty": compressed_psum(empty, "data"),
            "nan": compressed_psum(x.at[1].set(jnp.nan), "data", block=4),
            "inf": compressed_psum(x.at[1].set(jnp.inf), "data", "float8_e4m3fn", block=4)}

  x = jnp.arange(8.0) * 1.1 - 3.0
  out = jax.jit(jax.shard_map(body, mesh=mesh, in_specs=P(), out_specs=P()))(x, jnp.zeros((0, 3)))
  np.testing.assert_array_equal(out["object"], out["name"])
  np.testing.assert_array_equal(out["float32"], x)
  assert out["empty"].shape == (0, 3)
  for name in ("nan", "inf"):  # a non-finite value makes its block NaN, and only its block
    assert np.isnan(out[name][:4]).all() and np.isfinite(out[name][4:]).all()


def test_one_device_stochastic_rotated_step():
  mesh = Mesh(np.array(jax.devices()[:1]), ("data",))
  loss_fn = lambda w, batch: jnp.mean((batch["x"] @ w - batch["y"]) ** 2)
  opt = optax.sgd(0.5)
  step = data_parallel_step(loss_fn, opt, mesh, comm_fmt="float8_e5m2", block=4, rounding="stochastic",
                            rotate=True)
  x = jnp.tile(jnp.eye(4), (2, 1))
  batch = {"x": x, "y": x @ jnp.array([1.1, -2.3, 3.7, 0.55])}
  w = jnp.zeros(4)
  runs = {}
  for seed in (0, 0, 1):
    p, s = w, opt.init(w)
    losses = []
    for i in range(8):
      p, s, loss = step(p, s, batch, jax.random.fold_in(jax.random.key(seed), i))
      losses.append(float(loss))
    runs.setdefault(seed, []).append(np.asarray(p))
    assert losses[-1] < 0.05 * losses[0]
  np.testing.assert_array_equal(runs[0][0], runs[0][1])
  assert (runs[0][0] != runs[1][0]).any()
