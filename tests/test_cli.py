"""The lpnum command and the format study's quick mode."""

import json
import subprocess
import sys

import numpy as np
import ml_dtypes

import lpnum
from lpnum import cli
from lpnum.studies import formats as study


def test_formats_table_lists_every_named_format(capsys):
  assert cli.main(["formats"]) == 0
  out = capsys.readouterr().out
  for fmt in lpnum.ALL_FORMATS:
    assert f"\n{fmt.name} " in out
  assert "448" in out and "57344" in out


def test_study_formats_quick_writes_json(tmp_path, capsys):
  assert cli.main(["study", "formats", "--quick", "--out", str(tmp_path)]) == 0
  rows = json.loads((tmp_path / "formats_study.json").read_text())
  assert {r["distribution"] for r in rows} == set(study.DISTRIBUTIONS)
  by = {(r["format"], r["distribution"]): r["sqnr_db"] for r in rows}
  # Independent check: E4M3 on the same Gaussian sample, scaled the same way, with ml_dtypes' cast.
  x = study.sample("gaussian", 1 << 14, 0)
  s = np.float32(np.abs(x).max()) / np.float32(448.0)
  q = (x / s).astype(ml_dtypes.float8_e4m3fn).astype(np.float32) * s
  assert abs(by[("float8_e4m3fn", "gaussian")] - study.sqnr_db(x, q)) < 0.1
  assert by[("int8", "gaussian")] > by[("int4", "gaussian")] > 0
  assert "dB/bit" in capsys.readouterr().out


def test_console_script_is_installed():
  out = subprocess.run([sys.executable, "-m", "lpnum.cli", "formats"], capture_output=True, text=True, check=True)
  assert "posit16" in out.stdout


def test_unknown_study_is_an_argparse_error(capsys):
  try:
    cli.main(["study", "nothing"])
  except SystemExit as e:
    assert e.code == 2
  assert "invalid choice" in capsys.readouterr().err
