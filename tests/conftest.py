"""Shared test configuration.

Tests mirror the source: ``tests/<package>/test_<module>.py``. The independent oracles they compare lpnum with (the
exact Fraction reference, the MX/NVFP4 NumPy reference, plain NumPy scaled quantization) live in ``tests/support``,
which the pytest configuration puts on the import path. The oracles' own validation against third parties
(``tests/oracles``) is part of the slow set: ``pytest -m slow``, run by ``.ci/run``.
"""

from __future__ import annotations

import pathlib

import pytest

_ORACLES = pathlib.Path(__file__).parent / "oracles"


@pytest.hookimpl(tryfirst=True)  # before -m selects by marker
def pytest_collection_modifyitems(config, items):
  """The oracles' self-validation is slow and checks the references, not lpnum: it joins the slow set."""
  for item in items:
    if _ORACLES in pathlib.Path(str(item.fspath)).parents:
      item.add_marker(pytest.mark.slow)

