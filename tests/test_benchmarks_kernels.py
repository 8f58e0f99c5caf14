"""Smoke test of benchmarks/kernels.py: a tiny run and the schema of the JSON it writes."""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import benchmark_checks  # noqa: E402
from benchmarks import kernels  # noqa: E402


def test_kernels_benchmark_tiny(tmp_path, monkeypatch, capsys):
  monkeypatch.setattr(kernels, "QUICK_SIZES", (256,))
  monkeypatch.setattr(kernels, "QUICK_M", (4,))
  monkeypatch.setattr(kernels, "TARGET_SHAPE", (4, 256, 256))
  monkeypatch.setattr(kernels, "ACC_SIZE", 32)
  path = kernels.main(["--quick", "--repeats", "1", "--out", str(tmp_path)])
  results = benchmark_checks.load_document(path, "kernels")
  assert results["config"]["path"] == "xla"
  names = {r["kernel"] for r in results["matmul"]}
  assert {"f32 dot", "w int4 g128", "w nvfp4", "W8A8 (x quantized)"} <= names
  for r in results["matmul"]:
    benchmark_checks.check_measurement(r["measurement"], 1, statuses=("ok",))
    assert r["tflop_s"] > 0 and r["weight_bytes"] > 0
  for m in results["accumulators"].values():
    benchmark_checks.check_measurement(m, 1, statuses=("ok",))
  assert set(results["targets"]) == {"a", "b", "c"}
  assert all(t["status"] in ("PASS", "FAIL") for t in results["targets"].values())
  assert (tmp_path / "kernels.png").exists()
  assert "weight GB/s" in capsys.readouterr().out
