"""The minimum-versions job installs exactly the lower bounds the pyproject states."""

import pathlib
import tomllib

from packaging.requirements import Requirement
from packaging.version import Version

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _lower_bounds() -> dict[str, Version]:
  project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
  reqs = [Requirement(r) for r in project["dependencies"]]
  reqs += [Requirement(r) for extra in project["optional-dependencies"].values() for r in extra]
  bounds = {}
  for r in reqs:
    if r.name == "lpnum":  # an extra made of other extras
      continue
    lows = [Version(s.version) for s in r.specifier if s.operator == ">="]
    assert len(lows) == 1, f"{r}: every requirement states one lower bound (>=)"
    bounds[r.name.lower().replace("_", "-")] = lows[0]
  return bounds


def _pins() -> dict[str, Version]:
  pins = {}
  for line in (ROOT / ".ci" / "minimum-versions.txt").read_text().splitlines():
    line = line.split("#")[0].strip()
    if line:
      r = Requirement(line)
      (spec,) = r.specifier
      assert spec.operator == "==", line
      pins[r.name.lower().replace("_", "-")] = Version(spec.version)
  return pins


def test_minimum_versions_file_pins_every_lower_bound():
  assert _pins() == _lower_bounds()
