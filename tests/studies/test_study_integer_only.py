"""The integer-only study's quick mode: outputs, the reproduction claim (integer-only agrees with fake
quantization), integer-only op census, and the census parser on a known program."""

import json

import jax
import jax.numpy as jnp
import matplotlib.image
import pytest

from lpnum.studies import integer_only as study

#: A quick run trains two models: under -m slow, which .ci/run runs after the suite.
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def run(tmp_path_factory):
  out = tmp_path_factory.mktemp("integer_only")
  return study.main(["--quick", "--out", str(out)]), out


def test_quick_run_writes_its_files_and_reproduces_the_claim(run):
  results, out = run
  doc = json.loads((out / "integer_only.json").read_text())
  assert doc["study"] == "integer_only" and doc["results"]["notes"] == study.NOTES
  assert (out / "integer_only_records.csv").read_text().startswith("model,")
  assert matplotlib.image.imread(out / "integer_only.png").shape[0] > 100
  assert [r["model"] for r in results["records"]] == ["mlp", "cnn"]
  for r in results["records"]:
    assert r["float32"] > 0.85 and r["agreement"] >= 0.98
    assert abs(r["integer_only"] - r["fake_quant"]) <= 0.01
    assert r["census"]["float_types"] == [] and set(r["census"]["types"]) <= {"i1", "i8", "i32", "ui32"}
  assert "convolution" in results["records"][1]["census"]["ops"]


def test_op_census_finds_float_types():
  text = jax.jit(lambda a: (a * 2).astype(jnp.int32)).lower(jnp.ones(3, jnp.float32)).as_text()
  census = study.op_census(text)
  assert census["float_types"] == ["f32"] and census["ops"]["convert"] == 1 and "i32" in census["types"]
