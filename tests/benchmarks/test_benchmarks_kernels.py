"""Smoke test of benchmarks/kernels.py: a tiny run and the schema of the JSON it writes."""

from __future__ import annotations

import csv

import matplotlib.image
import pytest

import benchmark_checks
from lpnum.benchmarks import kernels

# Each runs a benchmark end to end (tiny sizes): the slow set, which .ci/run runs after the default tests.
pytestmark = pytest.mark.slow


def test_kernels_benchmark_tiny(tmp_path, monkeypatch, capsys):
  monkeypatch.setattr(kernels, "QUICK_SIZES", (256,))
  monkeypatch.setattr(kernels, "QUICK_M", (4,))
  monkeypatch.setattr(kernels, "DECODE_SIZES", (256,))
  monkeypatch.setattr(kernels, "DECODE_M", (1, 16))
  monkeypatch.setattr(kernels, "TARGET_SHAPE", (4, 256, 256))
  monkeypatch.setattr(kernels, "ACC_SIZE", 32)
  monkeypatch.setattr(kernels, "BANDWIDTH_BYTES", 2**20)
  monkeypatch.setattr(kernels, "CAST_COUNT_SIZE", 1024)
  monkeypatch.setattr(kernels, "CAST_SIZES", {True: 512, False: 512})
  monkeypatch.setattr(kernels, "GROUPED_QUICK", ((16, 256), (128, 256)))
  monkeypatch.setattr(kernels, "GROUPED_EXPERTS", 4)
  path = kernels.main(["--quick", "--repeats", "1", "--out", str(tmp_path)])
  results = benchmark_checks.load_document(path, "kernels")
  assert results["config"]["path"] == kernels.matmul_path() in (
      "xla",
      "native (avx512) below 32 rows for 4-bit codes, 32 rows for 8-bit integers, 24 rows for FP8 codes, xla otherwise",
      "native (avx2) below 24 rows for 4-bit codes, 32 rows for 8-bit integers, 8 rows for FP8 codes, xla otherwise")
  names = {r["kernel"] for r in results["matmul"]}
  # Below 128 rows the CPU's XLA path is timed beside the default (the native kernel where it runs).
  assert {"f32 dot", "w int4 g128", "w nvfp4", "W8A8 (x quantized)", "w int4 g128 (XLA path)"} <= names
  assert {tuple(r["shape"]) for r in results["matmul"] if r["kernel"].endswith("(XLA path)")} == {(4, 256, 256),
                                                                                                  (1, 256, 256),
                                                                                                  (16, 256, 256)}
  for r in results["matmul"]:
    benchmark_checks.check_measurement(r["measurement"], 1, statuses=("ok",))
    assert r["tflop_s"] > 0 and r["weight_bytes"] > 0
    m, k, n = r["shape"]
    assert r["bytes_moved"] > r["weight_bytes"] and r["intensity"] == 2 * m * k * n / r["bytes_moved"]
    if r["kernel"] == "f32 dot" or r["kernel"].startswith("w "):
      # The weights as stored (packed codes and scales), a float32 x (M x 256) and a float32 output (M x 256).
      assert r["bytes_moved"] == r["weight_bytes"] + 2 * m * 256 * 4
  assert {tuple(r["shape"]) for r in results["matmul"]} == {(4, 256, 256), (1, 256, 256), (16, 256, 256)}
  roofs = results["roofs"]
  benchmark_checks.check_measurement(roofs["bandwidth_measurement"], 1, statuses=("ok",))
  assert roofs["bandwidth_bytes_s"] > 0 and roofs["bandwidth_array_bytes"] == 2**20
  assert roofs["compute_flop_s"] == max(r["tflop_s"] for r in results["matmul"] if r["kernel"] == "f32 dot") * 1e12
  for m in results["accumulators"].values():
    benchmark_checks.check_measurement(m, 1, statuses=("ok",))
  assert set(results["targets"]) == {"a", "b", "c", "d_int8", "d_4bit", "e"}
  assert set(results["targets"]["e"]["values"]) == set(kernels.WEIGHT_FORMATS)
  assert all(t["status"] in ("PASS", "FAIL") for t in results["targets"].values())
  casts = {r["cast"]: r for r in results["casts"]}
  assert set(casts) == set(kernels.cast_candidates())
  for r in casts.values():
    benchmark_checks.check_measurement(r["measurement"]["xla"], 1, statuses=("ok",))
    assert r["measurement"]["pallas"] is None  # the CPU: no accelerator to time the kernel on
    b = r["bytes_per_element"]
    assert b["xla"] > b["ideal"] > 0 and b["pallas"] >= b["ideal"]
  # bfloat16 in, then MXFP4's 4-bit codes and one E8M0 byte per 32 elements: 2 + 0.5 + 1/32.
  assert casts["mxfp4_e2m1"]["bytes_per_element"]["ideal"] == 2 + 0.5 + 1 / 32
  assert casts["mxfp8_e4m3 x and x.T"]["bytes_per_element"]["pallas"] < 1.05 * casts["mxfp8_e4m3 x and x.T"][
      "bytes_per_element"]["ideal"]
  image = matplotlib.image.imread(tmp_path / "kernels.png")
  assert image.shape[:2] == (400, 1000)  # the roofline and one TFLOP/s-vs-M panel (K = N = 256), 5 x 4 in each
  assert image.std() > 0
  with (tmp_path / "kernels_matmul.csv").open() as f:  # the same rows as CSV
    rows = list(csv.DictReader(f))
  assert [(r["kernel"], float(r["intensity"])) for r in rows] == [(r["kernel"], r["intensity"])
                                                                  for r in results["matmul"]]
  out = capsys.readouterr().out
  assert "ideal B/el" in out
  assert "weight GB/s" in out and "FLOP/B" in out and "Roofs of this run" in out and "kernels_matmul.csv" in out
  grouped = results["grouped"]
  kinds = {"ragged_dot f32", "ragged_dot bf16", "f32 expert loop"} | {f"grouped {n}" for n in kernels.GROUPED_FORMATS}
  for m in (16, 128):  # below 128 rows the CPU's XLA path is timed beside the default
    at = [r for r in grouped if r["shape"] == [4, m, 256, 256]]
    assert {r["kernel"] for r in at} == kinds | ({f"grouped {n} (XLA path)" for n in kernels.GROUPED_FORMATS}
                                                 if m < 128 else set())
    assert all(sum(r["group_sizes"]) == m and 0 in r["group_sizes"] for r in at)
  for r in grouped:
    benchmark_checks.check_measurement(r["measurement"], 1, statuses=("ok",))
  weight_bytes = {r["kernel"]: r["weight_bytes"] for r in grouped if r["shape"][1] == 16}
  assert weight_bytes["ragged_dot f32"] == 4 * 256 * 256 * 4 == 2 * weight_bytes["ragged_dot bf16"]
  # int4 in groups of 128: K padded to one tile of 8 groups (1024 rows), half a byte per code, 8 uint32 scale rows.
  assert weight_bytes["grouped int4 g128"] == 4 * (1024 * 256 // 2 + 8 * 256 * 4)
  assert "Grouped matmul, E=4 experts, M=16 tokens" in out and "vs ragged_dot f32" in out
  assert (tmp_path / "kernels_grouped.csv").exists()
