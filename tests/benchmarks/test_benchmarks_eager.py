"""Smoke test of benchmarks/eager.py: a tiny quick run and the schema of the JSON it writes."""

from __future__ import annotations

import pytest

import benchmark_checks
pytest.importorskip("gfloat")  # the eager benchmark takes its formats and inputs from the formats benchmark
from lpnum.benchmarks import eager, formats

# Each runs a benchmark end to end (tiny sizes): the slow set, which .ci/run runs after the default tests.
pytestmark = pytest.mark.slow

REPEATS = 1


def test_eager_quick(tmp_path, capsys):
  path = eager.main(["--quick", "--size-log2", "10", "--repeats", str(REPEATS), "--out", str(tmp_path)])
  assert path == tmp_path / "eager.json"
  results = benchmark_checks.load_document(path, "eager")
  config = results["config"]
  assert config["values"] == 1 << 10 and config["quick"] and config["scaled_shape"] == list(eager.QUICK_SCALED_SHAPE)

  records = results["records"]
  want = [(name, op) for name in formats.REPRESENTATIVE for op in eager.FORMAT_OPS]
  want += [(name, op) for name in eager.QUICK_CASES for op in eager.SCALED_OPS]
  assert [(r["format"], r["op"]) for r in records] == want
  for r in records:
    assert set(r["candidates"]) == {"eager", "jit"}
    for m in r["candidates"].values():
      benchmark_checks.check_measurement(m, REPEATS)
      assert m["status"] == "ok", (r["format"], r["op"])
      assert m["peak_bytes"] is None or m["peak_bytes"] >= 0
    assert r["figures"]["eager_over_jit"] > 0

  targets = results["targets"]
  assert set(targets) == {"eager_time", "eager_peak"}
  assert set(targets["eager_time"]["values"]) == {f"{name}/{op}" for name, op in want}
  for t in targets.values():
    assert t["status"] in ("PASS", "FAIL", "N/A")

  out = capsys.readouterr().out
  assert "eager/jit" in out and "(a) speed target (" in out and ": eager call" in out
  assert "(b) memory target (" in out
