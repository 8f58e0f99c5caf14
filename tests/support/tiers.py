"""Which cases of a parametrized test the default run takes; the rest join the slow set (``pytest -m slow``).

The default run must stay short on a 2-core machine, so a test over many formats, distributions or shapes runs a
representative share of them by default (the cases a change is most likely to break first: the common format, the
narrowest, the edge shape), and every case under ``-m slow``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import pytest


def default_share(values: Iterable[Any], keep: Callable[[Any], bool] | Iterable[Any], *,
                  unpack: bool = False) -> list[Any]:
  """``values`` as parametrize arguments, those for which ``keep`` is false (or that are not in ``keep``) marked
  slow. Values that are already ``pytest.param`` keep their id and marks; with ``unpack``, each value is the tuple
  of several argnames' values."""
  test = keep if callable(keep) else (lambda v, kept=list(keep): any(v == k for k in kept))
  out = []
  for v in values:
    param = v if isinstance(v, type(pytest.param(None))) else pytest.param(*v) if unpack else pytest.param(v)
    inner = param.values[0] if len(param.values) == 1 else param.values
    marks = tuple(param.marks) + (() if test(inner) else (pytest.mark.slow,))
    out.append(pytest.param(*param.values, marks=marks, id=param.id))
  return out
