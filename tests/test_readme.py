"""README.md as a new user meets it: its Python blocks run as written, top to bottom, and its commands are CI's.

Every ```python block runs in order in one namespace, statement by statement. A statement whose last line ends in
a ``# -> TEXT`` comment must be a ``print(...)`` and must print exactly TEXT (one line). The expected values are
the README's claims; where they are facts of a format, the README says why beside them, and the format tests check
them against ml_dtypes and exact references.
"""

import ast
import contextlib
import io
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
MARKER = re.compile(r"#\s*->\s?(.*)$")


def _blocks(language: str) -> list[str]:
  return re.findall(rf"^```{language}\n(.*?)^```", README, re.S | re.M)


def _is_print(stmt: ast.stmt) -> bool:
  return (isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Call)
          and isinstance(stmt.value.func, ast.Name) and stmt.value.func.id == "print")


def test_python_blocks_run_in_order_and_print_what_they_say():
  blocks = _blocks("python")
  assert len(blocks) >= 6
  namespace = {"__name__": "__readme__"}
  checked = 0
  for number, block in enumerate(blocks, 1):
    lines = block.splitlines()
    for stmt in ast.parse(block).body:
      where = f"README.md python block {number}, line {stmt.lineno}: {lines[stmt.lineno - 1].strip()}"
      out = io.StringIO()
      with contextlib.redirect_stdout(out):
        exec(compile(ast.Module([stmt], type_ignores=[]), where, "exec"), namespace)  # noqa: S102
      marker = MARKER.search(lines[stmt.end_lineno - 1])
      if marker:
        assert _is_print(stmt), f"{where}: a '# ->' output belongs to a print(...) statement"
        assert out.getvalue().rstrip("\n") == marker.group(1).rstrip(), where
        checked += 1
  assert checked >= 8


def test_readme_commands_are_the_ones_ci_runs():
  commands = [line.split("#")[0].strip() for line in _blocks("bash")[0].splitlines()]
  assert commands[0] == "python3 -m venv .venv && . .venv/bin/activate"
  assert commands[1] == 'pip install -e ".[dev]" && lpnum study formats --quick'
  assert commands[2] == "pytest"
  ci = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]
  for command in ('pip install -e ".[dev]"', "lpnum study formats --quick", "pytest"):
    assert command in ci, f".ci/run does not run {command!r} as the README says"
