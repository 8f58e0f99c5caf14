"""Progress reporting (``lpnum.results.progress``): timestamped lines without a terminal, rich bars on one; the
formats study reports progress within its first seconds when its output goes to a pipe."""

from __future__ import annotations

import os
import re
import selectors
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lpnum import results

def _parse(out: str) -> list[tuple[str, str, str | None]]:
  """(what, count, time left) of every line of ``out``; each line must be a progress line."""
  parsed = []
  for line in out.splitlines():
    m = re.fullmatch(r"\[\d\d:\d\d:\d\d\] (.+): (\d+/\d+ \(\d+%\)|\d+ done),? (\d+:\d\d:\d\d) elapsed"
                     r"(?:, ~(\d+:\d\d:\d\d) left)?", line)
    assert m, line
    parsed.append((m[1], m[2], m[4]))
  return parsed


def test_lines_without_a_terminal(capsys):
  assert list(results.progress(range(3), "demo")) == [0, 1, 2]
  assert _parse(capsys.readouterr().out) == [("demo", "0/3 (0%)", None), ("demo", "3/3 (100%)", None)]


def test_a_line_when_due_with_the_time_left(capsys, monkeypatch):
  monkeypatch.setattr(results, "_LINE_EVERY_S", 0.0)  # every item is due
  for _ in results.progress([10, 20, 30, 40], "steps"):
    pass
  got = _parse(capsys.readouterr().out)
  assert [count for _, count, _ in got] == ["0/4 (0%)", "1/4 (25%)", "2/4 (50%)", "3/4 (75%)", "4/4 (100%)"]
  assert [left is not None for _, _, left in got] == [False, True, True, True, False]


def test_lines_count_items_of_unknown_total(capsys):
  assert list(results.progress((i for i in range(5)), "stream")) == list(range(5))
  assert _parse(capsys.readouterr().out) == [("stream", "0 done", None), ("stream", "5 done", None)]
  for _ in results.progress(iter([1, 2]), "sized", total=2):
    pass
  assert [count for _, count, _ in _parse(capsys.readouterr().out)] == ["0/2 (0%)", "2/2 (100%)"]


def test_a_nested_loop_prints_only_once_it_lasts(capsys, monkeypatch):
  pairs = [(i, j) for i in results.progress(range(2), "outer") for j in results.progress(range(3), "inner")]
  assert pairs == [(i, j) for i in range(2) for j in range(3)]
  assert [what for what, _, _ in _parse(capsys.readouterr().out)] == ["outer", "outer"]
  monkeypatch.setattr(results, "_LINE_EVERY_S", 0.0)
  for _ in results.progress(range(1), "outer"):
    for _ in results.progress(range(2), "inner"):
      pass
  assert [(what, count) for what, count, _ in _parse(capsys.readouterr().out)] == [
      ("outer", "0/1 (0%)"), ("inner", "1/2 (50%)"), ("inner", "2/2 (100%)"), ("outer", "1/1 (100%)")]


def test_lines_are_flushed_as_they_come():
  """Through a pipe (not a terminal) the first line arrives before the loop's first item is done."""
  code = ("import time\nfrom lpnum.results import progress\n"
          "for _ in progress(range(2), 'slow'):\n  time.sleep(30)\n")
  with subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, env=_env()) as proc:
    try:
      line = _first_line(proc, timeout=20)
    finally:
      proc.kill()
  assert _parse(line) == [("slow", "0/2 (0%)", None)]


@pytest.mark.parametrize("nested", [False, True])
def test_bars_on_a_terminal(capsys, monkeypatch, nested):
  monkeypatch.setattr(sys.stdout, "isatty", lambda: True)
  if nested:
    got = [(i, j) for i in results.progress(range(2), "outer") for j in results.progress(range(2), "inner")]
    assert got == [(0, 0), (0, 1), (1, 0), (1, 1)]
  else:
    assert list(results.progress(range(3), "bar")) == [0, 1, 2]
  assert not results._running  # the display stopped with the outer loop
  assert not re.search(r"^\[\d\d:\d\d:\d\d\]", capsys.readouterr().out, re.M)  # no progress lines


def test_formats_study_reports_progress_at_once(tmp_path):
  """``lpnum study formats --quick`` with its output in a pipe: a progress line within its first seconds (an
  import of JAX and Flax, then the first loop), not after minutes."""
  start = time.monotonic()
  command = [sys.executable, "-m", "lpnum.cli", "study", "formats", "--quick", "--out", str(tmp_path)]
  with subprocess.Popen(command, stdout=subprocess.PIPE, text=True, cwd=tmp_path, env=_env()) as proc:
    try:
      line = _first_line(proc, timeout=60)
    finally:
      proc.kill()
  seconds = time.monotonic() - start
  what, count, _ = _parse(line)[0]
  assert what.startswith("tensors") and count.startswith("0/")
  assert seconds < 30, seconds  # about 3 s on a quiet machine


def _env() -> dict[str, str]:
  """This process's environment, with the checkout first on the path (the subprocess imports this lpnum)."""
  root = str(Path(__file__).resolve().parents[1])
  return {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))}


def _first_line(proc: subprocess.Popen, timeout: float) -> str:
  with selectors.DefaultSelector() as sel:
    sel.register(proc.stdout, selectors.EVENT_READ)
    assert sel.select(timeout), f"no output within {timeout} s"
  return proc.stdout.readline()
