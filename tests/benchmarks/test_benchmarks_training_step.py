"""Smoke test of benchmarks/training_step.py: a quick run and the schema of the JSON it writes."""

from __future__ import annotations

import math
from typing import Any

import pytest

import benchmark_checks
from lpnum.benchmarks import training_step

# Each runs a benchmark end to end (tiny sizes): the slow set, which .ci/run runs after the default tests.
pytestmark = pytest.mark.slow

REPEATS = 2


def check_measurement(m: dict[str, Any]) -> None:
  benchmark_checks.check_measurement(m, REPEATS)


def test_training_step_quick(tmp_path, capsys):
  path = training_step.main(["--quick", "--repeats", str(REPEATS), "--out", str(tmp_path)])
  assert path == tmp_path / "training_step.json"
  results = benchmark_checks.load_document(path, "training_step")
  config = results["config"]
  assert config["quick"] and config["repeats"] == REPEATS and config["loss_steps"] == REPEATS
  assert list(results["variants"]) == list(training_step.QUICK_VARIANTS)
  assert results["variants"]["ste/int8_per_channel"]["group"] == "ste"

  records = results["models"]
  assert [r["model"] for r in records] == ["mlp", "transformer"]
  sizes = {"mlp": training_step.QUICK_MLP, "transformer": training_step.QUICK_TRANSFORMER}
  for r in records:
    assert r["config"] == vars(sizes[r["model"]])
    assert r["params"] > 0 and r["kernels"]
    assert list(r["candidates"]) == list(training_step.QUICK_VARIANTS)
    for name, m in r["candidates"].items():
      check_measurement(m)
      assert m["status"] == "ok", (r["model"], name, m)
      losses = r["losses"][name]
      assert losses["status"] == "ok" and losses["steps"] == REPEATS and losses["finite"], (r["model"], name)
      assert math.isfinite(losses["initial"]) and math.isfinite(losses["final"])
      assert r["figures"]["ratio_to_float32"][name] > 0
    assert r["figures"]["ratio_to_float32"]["float32"] == 1.0

  targets = results["targets"]
  assert set(targets) == {"ste_vs_float32"}
  t = targets["ste_vs_float32"]
  assert t["status"] in ("PASS", "FAIL") and t["threshold"] == training_step.STE_MAX
  assert set(t["values"]) == {"mlp/ste/int8_per_channel", "transformer/ste/int8_per_channel"}
  assert all(v > 0 for v in t["values"].values()) and set(t["failures"]) <= set(t["values"])
  assert results["sanity"]["status"] == "PASS" and results["sanity"]["checked"] == 6

  out = capsys.readouterr().out
  assert "/ float32" in out and "(a) speed target (" in out and ": STE fake-quant" in out and "Sanity:" in out
