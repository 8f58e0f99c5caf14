"""The lpnum command and the format study's quick mode."""

import csv
import json
import subprocess
import sys
import time

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import ml_dtypes
import numpy as np
import pytest

import lpnum
from lpnum import cli
from lpnum.studies import formats as study


def test_formats_table_lists_every_named_format(capsys):
  assert cli.main(["formats"]) == 0
  out = capsys.readouterr().out
  for fmt in lpnum.ALL_FORMATS:
    assert f"\n{fmt.name} " in out
  assert "448" in out and "57344" in out


@pytest.mark.slow  # the whole study in quick mode (.ci/run also runs it from the shell)
def test_study_formats_quick_writes_json(tmp_path, capsys):
  assert cli.main(["study", "formats", "--quick", "--out", str(tmp_path)]) == 0
  doc = json.loads((tmp_path / "formats.json").read_text())
  assert doc["study"] == "formats" and doc["results"]["notes"] == study.NOTES
  rows = doc["results"]["rows"]
  with (tmp_path / "formats_rows.csv").open() as f:  # the same records as CSV
    csv_rows = list(csv.DictReader(f))
  assert len(csv_rows) == len(rows) and csv_rows[0]["format"] == rows[0]["format"]
  assert {r["distribution"] for r in rows} == set(study.TENSORS)
  assert {r["granularity"] for r in rows} == {"tensor", "channel", "block32", "preset"}
  by = {(r["format"], r["distribution"]): r["sqnr_db"] for r in rows if r["granularity"] == "tensor"}
  # Independent check: E4M3 on the same Gaussian sample, scaled the same way, with ml_dtypes' cast.
  x = study.sample("gaussian", 1 << 14, 0)
  s = np.float32(np.abs(x).max()) / np.float32(448.0)
  q = (x / s).astype(ml_dtypes.float8_e4m3fn).astype(np.float32) * s
  assert abs(by[("float8_e4m3fn", "gaussian")] - study.sqnr_db(x, q)) < 0.1
  assert by[("int8", "gaussian")] > by[("int4", "gaussian")] > 0
  ranking = doc["results"]["ranking"]
  per_bit = [e["sqnr_per_bit"] for e in ranking]
  assert per_bit == sorted(per_bit, reverse=True)
  assert all(0 <= r["rel_error"] < 1.5 for r in rows)
  # Block scales rescue a heavy tail: per-block-32 int4 beats per-tensor int4 on Student-t.
  block = {(r["format"], r["granularity"], r["distribution"]): r["sqnr_db"] for r in rows}
  assert block[("int4", "block32", "student_t3")] > block[("int4", "tensor", "student_t3")] + 6
  # Per-channel scales pay off on convolution kernels with BatchNorm folded in (Krishnamoorthi).
  assert block[("int8", "channel", "cnn_weights")] > block[("int8", "tensor", "cnn_weights")] + 2
  image = plt.imread(tmp_path / "formats_sqnr_vs_bits.png")
  assert image.shape[:2] == (750, 1240) and np.ptp(image) > 0  # 8 x 7.5 inches and a 4.4-inch key at 100 dpi
  assert "dB/bit" in capsys.readouterr().out


def test_study_formats_rejects_bad_options(capsys):
  with pytest.raises(SystemExit):
    study.main(["--seed", "one"])
  assert "usage" in capsys.readouterr().err


def test_sample_rejects_unknown_distribution():
  with pytest.raises(ValueError, match="distribution="):
    study.sample("cauchy", 4)


def test_console_script_is_installed():
  out = subprocess.run([sys.executable, "-m", "lpnum.cli", "formats"], capture_output=True, text=True, check=True)
  assert "posit16" in out.stdout


def test_unknown_study_is_an_argparse_error(capsys):
  try:
    cli.main(["study", "nothing"])
  except SystemExit as e:
    assert e.code == 2
  assert "invalid choice" in capsys.readouterr().err


def test_help_is_fast_and_loads_no_jax():
  """``lpnum --help`` answers without importing JAX or lpnum's modules (issue 21: it took 3.2 s)."""
  code = ("import sys, time; t = time.perf_counter(); from lpnum.cli import main\n"
          "try:\n  main(['--help'])\nexcept SystemExit:\n  pass\n"
          "print(time.perf_counter() - t, sorted(m for m in sys.modules if m == 'jax' or m.startswith('lpnum.')))")
  done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
  assert "usage: lpnum" in done.stdout
  seconds, modules = done.stdout.strip().splitlines()[-1].split(" ", 1)
  assert modules == "['lpnum.cli']"
  assert float(seconds) < 1.5
  start = time.perf_counter()
  subprocess.run([sys.executable, "-m", "lpnum.cli", "--help"], capture_output=True, check=True)
  assert time.perf_counter() - start < 1.5  # the whole command, interpreter start included


@pytest.mark.parametrize("command, names", [("study", cli.STUDIES), ("bench", cli.BENCHMARKS)])
def test_each_study_and_benchmark_help_names_the_lpnum_command(command, names, capsys):
  for name in names:
    with pytest.raises(SystemExit) as done:
      cli.main([command, name, "--help"])
    assert done.value.code == 0
    assert capsys.readouterr().out.startswith(f"usage: lpnum {command} {name} ")
