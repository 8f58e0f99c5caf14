"""lpnum.nn.allocation: the ILP against brute-force enumeration, bytes against hand counts and ptq, MACs against
hand counts, and the rules applied with ptq / quantize_model on linen and nnx models."""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import lpnum
from lpnum import nn as lnn
from lpnum.nn import allocation
from lpnum.zoo.models import CNN, MLP, Transformer


def _brute_force(objective, constraints):
  """The least summed objective over every choice meeting the budgets (None if none does)."""
  layers, cands = objective.shape
  best = None
  for choice in itertools.product(range(cands), repeat=layers):
    rows = np.arange(layers), np.array(choice)
    if all(costs[rows].sum() <= budget for costs, budget in constraints.values()):
      value = objective[rows].sum()
      best = value if best is None else min(best, value)
  return best


@pytest.mark.parametrize("seed", range(12))
def test_ilp_matches_brute_force(seed):
  rng = np.random.default_rng(seed)
  layers, cands = rng.integers(3, 5), rng.integers(3, 5)
  objective = rng.exponential(size=(layers, cands)) * 10.0 ** rng.integers(-8, 3)
  size = rng.integers(1, 1000, size=(layers, cands)).astype(float)
  bops = rng.integers(1, 50, size=(layers, cands)).astype(float)
  lo, hi = size.min(1).sum(), size.max(1).sum()
  for budget in np.linspace(lo, hi, 9):
    for constraints in ({"max_bytes": (size, budget)},
                        {"max_bytes": (size, budget), "max_bops": (bops, np.median(bops.sum(0)))}):
      best = _brute_force(objective, constraints)
      if best is None:
        with pytest.raises(ValueError, match="cannot be met together|is infeasible"):
          allocation.solve(objective, constraints)
        continue
      choice, value = allocation.solve(objective, constraints)
      rows = np.arange(layers), choice
      assert all(costs[rows].sum() <= b for costs, b in constraints.values())
      assert value == objective[rows].sum()
      assert value <= best * (1 + 1e-6) + 1e-12, (value, best)


def test_solve_infeasible_budgets_name_themselves():
  objective = np.zeros((2, 2))
  size = np.array([[4.0, 2.0], [4.0, 2.0]])
  with pytest.raises(ValueError, match=r"max_bytes=3 is infeasible: the least any choice needs is 4"):
    allocation.solve(objective, {"max_bytes": (size, 3)})
  bops = np.array([[1.0, 9.0], [1.0, 9.0]])
  with pytest.raises(ValueError, match="the budgets max_bytes and max_bops cannot be met together"):
    allocation.solve(objective, {"max_bytes": (size, 4), "max_bops": (bops, 2)})


@pytest.mark.parametrize("objective,constraints,error,match", [
    (np.zeros(3), None, ValueError, r"objective of shape \(3,\)"),
    (np.array([[np.inf]]), None, ValueError, "objective must be finite"),
    ("abc", None, TypeError, "objective must be a"),
    (np.zeros((2, 2)), {"max_bytes": (np.zeros((2, 3)), 1)}, ValueError, r"must have the objective's shape \(2, 2\)"),
    (np.zeros((2, 2)), {"max_bytes": np.zeros((2, 2))}, TypeError, "must be a \\(costs, budget\\) pair"),
    (np.zeros((2, 2)), {"max_bytes": (np.zeros((2, 2)), "1")}, TypeError, "max_bytes='1' must be a real number"),
])
def test_solve_bad_inputs(objective, constraints, error, match):
  with pytest.raises(error, match=match):
    allocation.solve(objective, constraints)


# ---- bytes, bits and MACs --------------------------------------------------------------------------------------------
CANDIDATES = {
    "int8": lpnum.DotConfig.weight_only("int8"),
    "int4": lpnum.DotConfig.weight_only("int4"),
    "int4_g32": lpnum.DotConfig.weight_only("int4", lpnum.per_block(32)),
    "e4m3": lpnum.DotConfig.weight_only("float8_e4m3fn"),
    "mxfp4": lpnum.DotConfig.weight_only("mxfp4_e2m1"),
    "nvfp4": lpnum.DotConfig.weight_only("nvfp4"),
    "w8a8": lpnum.DotConfig.w8a8(),
    "float32": None,
}


def test_layer_nbytes_are_the_hand_counted_bytes_of_codes_and_scales():
  k, n = 64, 48
  params = {"Dense_0": {"kernel": jnp.zeros((k, n)), "bias": jnp.zeros(n)}}
  got = allocation.layer_nbytes(params, CANDIDATES)
  # Codes: bits/8 per entry; float32 scales per channel or per group of 32 along K; MX: an E8M0 byte per 32;
  # NVFP4: an E4M3 byte per 16 and one float32 tensor scale.
  assert got == {"Dense_0": {"int8": k * n + 4 * n, "int4": k * n // 2 + 4 * n,
                             "int4_g32": k * n // 2 + 4 * n * k // 32, "e4m3": k * n + 4 * n,
                             "mxfp4": k * n // 2 + n * k // 32, "nvfp4": k * n // 2 + n * k // 16 + 4,
                             "w8a8": k * n + 4 * n, "float32": 4 * k * n}}


def test_layer_nbytes_equal_what_ptq_stores():
  """Including the kernel layout's padding: a (512, 256) int4 kernel is stored in the kernel layout."""
  params = {"Dense_0": {"kernel": jax.random.normal(jax.random.key(0), (512, 256))}}
  got = allocation.layer_nbytes(params, {"int4": CANDIDATES["int4"]})
  packed = jax.jit(lambda p: lnn.ptq(p, [lnn.Rule(".*", CANDIDATES["int4"])]))(params)["Dense_0"]["kernel"]
  assert type(packed.value).__name__ == "PackedWeights"
  assert got == {"Dense_0": {"int4": lnn.params_nbytes(packed)}}


def test_bits():
  assert allocation.bits(CANDIDATES["int4"]) == (4, 32)
  assert allocation.bits(CANDIDATES["nvfp4"]) == (4, 32)
  assert allocation.bits(CANDIDATES["w8a8"]) == (8, 8)
  assert allocation.bits(lpnum.DotConfig.fp8()) == (8, 8)
  assert allocation.bits(None) == (32, 32)
  with pytest.raises(TypeError, match="config='int8' must be a DotConfig or None"):
    allocation.bits("int8")
  with pytest.raises(ValueError, match="has no bit width"):
    allocation.bits(lpnum.DotConfig(rhs=lpnum.OperandQuant(None, estimator=lpnum.estimators.PACT(bits=4))))


def test_layer_macs_are_hand_counted():
  assert allocation.layer_macs(MLP(features=(32,)), jnp.zeros((3, 8, 8, 1))) == {"Dense_0": 3 * 64 * 32,
                                                                              "Dense_1": 3 * 32 * 10}
  cnn = allocation.layer_macs(CNN(channels=(4, 8)), jnp.zeros((2, 8, 8, 1)), train=False)
  assert cnn["Conv_0"] == 2 * 8 * 8 * 4 * (3 * 3 * 1)
  assert cnn["ResidualBlock_1/Conv_0"] == 2 * 4 * 4 * 8 * (3 * 3 * 4)    # stride 2
  assert cnn["ResidualBlock_1/Conv_2"] == 2 * 4 * 4 * 8 * 4               # the 1x1 projection
  assert cnn["Dense_0"] == 2 * 8 * 10
  b, length, dim, heads, mlp = 2, 5, 8, 2, 16
  tf = allocation.layer_macs(Transformer(vocab=7, length=length, dim=dim, heads=heads, layers=1, mlp_dim=mlp),
                             jnp.zeros((b, length), jnp.int32))
  attention = "TransformerBlock_0/MultiHeadDotProductAttention_0"
  assert tf[f"{attention}/query"] == b * length * dim * dim      # (dim) -> (heads, dim / heads)
  assert tf[f"{attention}/out"] == b * length * dim * dim        # (heads, dim / heads) -> (dim)
  assert tf["TransformerBlock_0/Dense_0"] == b * length * dim * mlp
  with pytest.raises(TypeError, match="model must be a flax.linen Module"):
    allocation.layer_macs(object(), jnp.zeros(2))


# ---- allocate ----------------------------------------------------------------------------------------------------
def _mlp():
  model = MLP(features=(64, 32))
  x = jax.random.normal(jax.random.key(1), (4, 8, 8, 1))
  return model, x, model.init(jax.random.key(0), x)["params"]


def _omega(params, labels, seed):
  rng = np.random.default_rng(seed)
  return {layer: {f: (0.0 if f == "float32" else float(rng.exponential())) for f in labels}
          for layer in ("Dense_0", "Dense_1", "Dense_2")}


def test_allocate_is_optimal_and_its_rules_quantize_each_layer_as_chosen():
  model, x, params = _mlp()
  labels = ("int8", "int4", "mxfp4", "float32")
  cands = {f: CANDIDATES[f] for f in labels}
  nbytes = allocation.layer_nbytes(params, cands)
  fixed = lnn.params_nbytes(params) - sum(lnn.params_nbytes(params[p]["kernel"]) for p in nbytes)
  omega = _omega(params, labels, 0)
  size = np.array([[nbytes[p][f] for f in labels] for p in omega], float)
  sens = np.array([[omega[p][f] for f in labels] for p in omega])
  for budget in np.linspace(size.min(1).sum(), size.max(1).sum(), 5)[1:-1] + fixed:
    alloc = allocation.allocate(params, omega, cands, max_bytes=budget)
    assert alloc.objective == pytest.approx(_brute_force(sens, {"b": (size, budget - fixed)}), rel=1e-6)
    assert alloc.nbytes <= budget
    packed = jax.eval_shape(lambda p: lnn.ptq(p, alloc.rules), params)  # what ptq makes, traced abstractly
    assert lnn.params_nbytes(packed) == alloc.nbytes
    for rule, (layer, label) in zip(alloc.rules, alloc.choice.items()):
      assert rule.pattern == layer and rule.config == cands[label]
      kernel = packed[layer]["kernel"]
      if label == "float32":
        assert not isinstance(kernel, lnn.QuantizedKernel)
      else:
        assert kernel.value.fmt.name == cands[label].rhs.rhs_format.name
    assert alloc.summary().splitlines()[-1].startswith(f"model bytes {alloc.nbytes}, BOPs -")
  assert len(set(alloc.choice.values())) > 1


@pytest.mark.slow
def test_a_mixed_allocation_runs_packed_through_quantize_model():
  model, x, params = _mlp()
  cands = {f: CANDIDATES[f] for f in ("int8", "int4", "mxfp4", "float32")}
  omega = {"Dense_0": {"int8": 1.0, "int4": 3.0, "mxfp4": 2.0, "float32": 0.0},
           "Dense_1": {"int8": 1.0, "int4": 2.0, "mxfp4": 3.0, "float32": 0.0},
           "Dense_2": {"int8": 1.0, "int4": 2.0, "mxfp4": 3.0, "float32": 0.0}}
  nbytes = allocation.layer_nbytes(params, cands)
  fixed = lnn.params_nbytes(params) - sum(lnn.params_nbytes(params[p]["kernel"]) for p in nbytes)
  budget = fixed + nbytes["Dense_0"]["mxfp4"] + nbytes["Dense_1"]["int4"] + nbytes["Dense_2"]["float32"]
  alloc = allocation.allocate(params, omega, cands, max_bytes=budget)
  assert alloc.choice == {"Dense_0": "mxfp4", "Dense_1": "int4", "Dense_2": "float32"}
  packed = lnn.ptq(params, alloc.rules)
  y = jax.jit(lnn.quantize_model(model, alloc.rules).apply)({"params": packed}, x)
  # The reference: the float model with each kernel dequantized from its packing.
  w = {p: {**params[p], "kernel": lnn.dequantize_kernel(packed[p]["kernel"].unbox())
           if isinstance(packed[p]["kernel"], lnn.QuantizedKernel) else params[p]["kernel"]} for p in params}
  np.testing.assert_allclose(np.asarray(y), np.asarray(model.apply({"params": w}, x)), rtol=1e-5, atol=1e-5)


def test_allocate_bops_budget_binds():
  model, x, params = _mlp()
  cands = {f: CANDIDATES[f] for f in ("int8", "int4", "w8a8")}
  omega = {p: {"int8": 0.0, "int4": 1.0, "w8a8": 0.5} for p in ("Dense_0", "Dense_1", "Dense_2")}
  macs = allocation.layer_macs(model, x[:1])
  free = allocation.allocate(params, omega, cands, max_bytes=1e9, macs=macs)
  assert set(free.choice.values()) == {"int8"} and free.bops == sum(m * 8 * 32 for m in macs.values())
  assert free.layer_bops == {p: m * 8 * 32 for p, m in macs.items()}
  limit = sum(m * 8 * 8 for m in macs.values())      # W8A8 everywhere fits exactly; int8 weight-only does not
  bound = allocation.allocate(params, omega, cands, max_bytes=1e9, macs=macs, max_bops=limit)
  assert set(bound.choice.values()) == {"w8a8"} and bound.bops == limit and bound.objective == 1.5
  room = limit + macs["Dense_2"] * 8 * (32 - 8)       # room for the smallest layer to keep float activations
  alloc = allocation.allocate(params, omega, cands, max_bytes=1e9, macs=macs, max_bops=room)
  assert alloc.choice == {"Dense_0": "w8a8", "Dense_1": "w8a8", "Dense_2": "int8"} and alloc.bops == room
  with pytest.raises(ValueError, match=rf"max_bops={limit - 1} is infeasible"):
    allocation.allocate(params, omega, cands, max_bytes=1e9, macs=macs, max_bops=limit - 1)


def test_allocate_bad_inputs():
  _, _, params = _mlp()
  cands = {f: CANDIDATES[f] for f in ("int8", "int4")}
  omega = {p: {"int8": 0.0, "int4": 1.0} for p in ("Dense_0", "Dense_1", "Dense_2")}
  with pytest.raises(ValueError, match=r"max_bytes=1000 is infeasible: the smallest model has \d+ bytes"):
    allocation.allocate(params, omega, cands, max_bytes=1000)
  with pytest.raises(ValueError, match="max_bops needs macs"):
    allocation.allocate(params, omega, cands, max_bytes=1e9, max_bops=10)
  with pytest.raises(ValueError, match=r"macs has no count for layers \['Dense_2'\]"):
    allocation.allocate(params, omega, cands, max_bytes=1e9, macs={"Dense_0": 1, "Dense_1": 1})
  with pytest.raises(ValueError, match=r"omega\['Dense_0'\] must give every candidate's sensitivity"):
    allocation.allocate(params, {**omega, "Dense_0": {"int8": 0.0}}, cands, max_bytes=1e9)
  with pytest.raises(ValueError, match=r"omega\['Dense_1'\]\['int4'\]=inf must be finite"):
    allocation.allocate(params, {**omega, "Dense_1": {"int8": 0.0, "int4": float("inf")}}, cands, max_bytes=1e9)
  with pytest.raises(ValueError, match="omega: 'Dense_5' is not a layer"):
    allocation.allocate(params, {"Dense_5": {"int8": 0.0, "int4": 1.0}}, cands, max_bytes=1e9)
  with pytest.raises(TypeError, match="max_bytes=None must be a real number"):
    allocation.allocate(params, omega, cands, max_bytes=None)


class _NnxMLP(nnx.Module):
  def __init__(self, rngs):
    self.first = nnx.Linear(64, 32, rngs=rngs)
    self.second = nnx.Linear(32, 10, rngs=rngs)

  def __call__(self, x):
    return self.second(nnx.relu(self.first(x)))


def test_allocation_rules_apply_to_an_nnx_model():
  model = _NnxMLP(nnx.Rngs(0))
  params = nnx.state(model, nnx.Param).to_pure_dict()
  cands = {f: CANDIDATES[f] for f in ("int8", "int4")}
  omega = {"first": {"int8": 0.0, "int4": 2.0}, "second": {"int8": 0.0, "int4": 1.0}}
  alloc = allocation.allocate(params, omega, cands, max_bytes=2600)   # int8 for both: 2704 bytes
  assert alloc.choice == {"first": "int8", "second": "int4"}
  lnn.ptq_nnx(model, alloc.rules)
  assert model.first.kernel[...].value.fmt.name == cands["int8"].rhs.rhs_format.name
  assert model.second.kernel[...].value.fmt.name == cands["int4"].rhs.rhs_format.name
  assert model(jnp.ones((2, 64))).shape == (2, 10)
