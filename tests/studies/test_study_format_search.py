"""The format-search study in quick mode: JSON schema, the ILP's optimality against the uniform models it could have
chosen, bytes against an independent count, the packed check, the plot."""

import json

import numpy as np
import pytest

from lpnum.studies import format_search as study

#: A quick study run takes about a minute: under -m slow, which .ci/run runs after the suite.
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
  out = tmp_path_factory.mktemp("format_search")
  return out, study.main(["--quick", "--out", str(out)])


def test_json_schema_and_files(quick):
  out, results = quick
  doc = json.loads((out / "format_search.json").read_text())
  assert doc["study"] == "format_search" and doc["results"]["notes"] == study.NOTES
  assert (out / "format_search.png").stat().st_size > 10_000
  assert (out / "format_search_records.csv").read_text().startswith("model,kind,label,nbytes,accuracy,loss")
  res = doc["results"]
  assert res["setup"]["candidates"] == list(study.QUICK_CANDIDATES) and res["setup"]["quick"]
  assert set(res["models"]) == set(study.MODELS)
  for name, model in res["models"].items():
    kinds = [r["kind"] for r in model["records"]]
    assert kinds.count("float32") == 1 and kinds.count("uniform") == len(study.QUICK_CANDIDATES)
    assert kinds.count("hawq") == kinds.count("blind") == study.QUICK_BUDGETS
    assert set(model["hessian"]["trace"]) == set(model["layers"]) == set(model["omega"])
    assert model["hessian"]["probes"] <= study.QUICK_MAX_PROBES
    for r in model["records"]:
      assert 0 <= r["accuracy"] <= 1 and r["loss"] > 0
    assert results["models"][name]["records"] == model["records"]


def test_ilp_is_no_worse_than_any_uniform_model_that_fits_and_meets_its_budget(quick):
  _, results = quick
  for model in results["models"].values():
    uniform = [r for r in model["records"] if r["kind"] == "uniform"]
    for r in model["records"]:
      if r["kind"] not in ("hawq", "blind"):
        continue
      assert r["nbytes"] <= r["budget"]
      assert r["integer_layers"] + r["fp_layers"] == len(model["layers"])
      if r["kind"] == "hawq":
        assert r["objective"] == pytest.approx(r["hawq_objective"], rel=1e-9)
        for u in uniform:
          if u["nbytes"] <= r["budget"]:
            assert r["objective"] <= u["hawq_objective"] * (1 + 1e-6) + 1e-12, (r["label"], u["label"])
    largest = max(uniform, key=lambda u: u["nbytes"])
    top = max((r for r in model["records"] if r["kind"] == "hawq"), key=lambda r: r["budget"])
    assert top["objective"] <= min(u["hawq_objective"] for u in uniform) * (1 + 1e-6)
    assert top["budget"] == largest["nbytes"]


def test_bytes_and_omega_against_independent_counts(quick):
  """The float model's bytes are 4 per parameter; a uniform model's bytes are the fixed float params plus each
  layer's kernel bytes; Omega = trace / n * perturbation >= 0 where the trace is positive."""
  _, results = quick
  for model in results["models"].values():
    float_record = next(r for r in model["records"] if r["kind"] == "float32")
    assert float_record["nbytes"] == model["float_bytes"] == 4 * (
        model["fixed_bytes"] // 4 + sum(model["n_params"].values()))
    for u in (r for r in model["records"] if r["kind"] == "uniform"):
      assert u["nbytes"] == model["fixed_bytes"] + sum(b[u["label"]] for b in model["layer_nbytes"].values())
      assert u["nbytes"] < float_record["nbytes"] / 2   # kernels shrink 4x or more; embeddings stay float
    for layer, row in model["omega"].items():
      if model["hessian"]["trace"][layer] > 0:
        assert all(v > 0 for v in row.values())
      assert row["int8"] * 10 < row["int4"] or model["hessian"]["trace"][layer] <= 0


def test_packed_run_predicts_as_the_dequantized_model(quick):
  _, results = quick
  checks = [m["packed_check"] for m in results["models"].values() if m["packed_check"] is not None]
  assert len(checks) == 1
  for check in checks:
    assert check["same_predictions"] == 1.0 and check["nbytes"] == check["allocation_nbytes"]
    assert check["max_abs_logit_difference"] < 1e-3


def test_candidates():
  assert list(study.candidates()) == ["int8", "int8_g32", "int4", "int4_g32", "fp8_e4m3", "fp8_e5m2", "fp4_e2m1_g32",
                                      "mxfp8_e4m3", "mxfp6_e3m2", "mxfp4", "mxint8", "nvfp4"]
  assert set(study.INTEGER) < set(study.candidates())
  with pytest.raises(ValueError, match=r"unknown candidates \['int3'\]"):
    study.candidates(["int8", "int3"])
  assert np.all([c.rhs is not None and c.lhs is None for c in study.candidates().values()])
