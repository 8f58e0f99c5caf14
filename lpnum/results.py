"""How studies and benchmarks report: progress bars, JSON documents with their record lists as CSV, PNG plots.

Files: ``lpnum study NAME`` and ``lpnum bench NAME`` write into ``--out DIR``, by default
``lpnum-results/study/NAME`` and ``lpnum-results/bench/NAME`` under the working directory (:func:`default_out`):
``NAME.json``, each list of records in it as ``NAME_<key>.csv`` (``NAME.csv`` when the key is ``NAME``), and
their plots.
"""

from __future__ import annotations

import datetime
import json
import platform
import sys
import time
from collections.abc import Iterable, Iterator, Sized
from pathlib import Path
from typing import Any, TypeVar

import jax
import numpy as np

__all__ = ["RESULTS_ROOT", "default_out", "flatten", "progress", "write_csv", "write_json", "save_figure"]

T = TypeVar("T")

#: The one folder (relative to the working directory) every study and benchmark writes under without ``--out``.
RESULTS_ROOT = Path("lpnum-results")


def default_out(kind: str, name: str) -> Path:
  """Where ``lpnum <kind> <name>`` writes without ``--out``: ``lpnum-results/<kind>/<name>``.

  Args:
    kind: ``"study"`` or ``"bench"``.
    name: the study's or benchmark's name.

  Raises:
    ValueError: another ``kind``.

  Example:
    >>> default_out("bench", "kernels").as_posix()
    'lpnum-results/bench/kernels'
  """
  if kind not in ("study", "bench"):
    raise ValueError(f"kind={kind!r}; expected 'study' or 'bench'")
  return RESULTS_ROOT / kind / name


def progress(items: Iterable[T], description: str, total: int | None = None) -> Iterable[T]:
  """``items``, reporting progress as the loop runs: a rich bar on a terminal, else timestamped lines.

  Without a terminal (a log file, CI, a notebook or a subprocess) a loop prints a line to standard output
  (flushed) when it starts, then at most one every 10 seconds, and one when it ends, e.g. ``[12:03:04] formats:
  3/20 (15%) 0:00:41 elapsed, ~0:03:52 left``. A loop inside another one adds its bar to the outer one's display,
  or prints lines only once it has run 10 seconds.

  Args:
    items: what the loop runs over.
    description: what the loop does, as the bar or line names it.
    total: how many items there are (default ``len(items)`` where it has one).

  Example:
    >>> for _ in progress(range(2), "demo"):  # doctest: +ELLIPSIS
    ...   pass
    [...] demo: 0/2 (0%) 0:00:00 elapsed
    [...] demo: 2/2 (100%) 0:00:00 elapsed
  """
  if total is None and isinstance(items, Sized):
    total = len(items)
  return _bars(items, description, total) if sys.stdout.isatty() else _lines(items, description, total)


#: Seconds between two progress lines of a loop (without a terminal).
_LINE_EVERY_S = 10.0

#: The loops running now, outermost first: the rich display their bars share, or None for loops printing lines.
_running: list[Any] = []


def _bars(items: Iterable[T], description: str, total: int | None) -> Iterator[T]:
  from rich.progress import Progress

  display = _running[0] if _running else Progress(transient=True)
  if not _running:
    display.start()
  _running.append(display)
  task = display.add_task(description, total=total)
  try:
    for item in items:
      yield item
      display.advance(task)
  finally:
    display.remove_task(task)
    _running.pop()
    if not _running:
      display.stop()


def _clock(seconds: float) -> str:
  return str(datetime.timedelta(seconds=round(seconds)))


def _line(description: str, done: int, total: int | None, elapsed: float) -> None:
  now = datetime.datetime.now().strftime("%H:%M:%S")
  if total is None:
    text = f"{done} done, {_clock(elapsed)} elapsed"
  else:
    text = f"{done}/{total} ({100 * done // total if total else 100}%) {_clock(elapsed)} elapsed"
    if 0 < done < total:
      text += f", ~{_clock(elapsed / done * (total - done))} left"
  print(f"[{now}] {description}: {text}", flush=True)


def _lines(items: Iterable[T], description: str, total: int | None) -> Iterator[T]:
  nested = bool(_running)
  _running.append(None)
  start = last = time.monotonic()
  if not nested:
    _line(description, 0, total, 0.0)
  done = shown = 0
  try:
    for item in items:
      yield item
      done += 1
      now = time.monotonic()
      if now - last >= _LINE_EVERY_S and done != total:
        _line(description, done, total, now - start)
        last, shown = now, done
  finally:
    _running.pop()
  if shown != done and (shown or not nested):
    _line(description, done, total, time.monotonic() - start)


def _jsonable(value: Any) -> Any:
  if isinstance(value, dict):
    return {str(k): _jsonable(v) for k, v in value.items()}
  if isinstance(value, list | tuple):
    return [_jsonable(v) for v in value]
  if isinstance(value, np.generic | jax.Array):
    return np.asarray(value).item() if np.ndim(value) == 0 else np.asarray(value).tolist()
  if isinstance(value, float) and not np.isfinite(value):
    return None
  return value


def flatten(record: dict[str, Any]) -> dict[str, Any]:
  """One value per key: nested mappings and lists become dotted keys (``sqnr_db.gaussian``, ``shape.0``).

  Example:
    >>> flatten({"format": "int8", "sqnr_db": {"gaussian": 40.1, "laplace": 38.2}, "shape": [2, 3]})
    {'format': 'int8', 'sqnr_db.gaussian': 40.1, 'sqnr_db.laplace': 38.2, 'shape.0': 2, 'shape.1': 3}
  """
  flat = {}
  for key, value in record.items():
    if isinstance(value, list | tuple):
      value = dict(enumerate(value))
    if isinstance(value, dict):
      flat.update({f"{key}.{sub}": v for sub, v in flatten({str(k): v for k, v in value.items()}).items()})
    else:
      flat[str(key)] = value
  return flat


def _rows(record: dict[str, Any]) -> list[dict[str, Any]]:
  """A record's CSV rows: one, or, for a record holding exactly one list of records, one per inner record (its
  fields after the outer record's others; all flattened by :func:`flatten`)."""
  nested = [k for k, v in record.items() if isinstance(v, list) and v and all(isinstance(i, dict) for i in v)]
  if len(nested) != 1:
    return [flatten(record)]
  outer = flatten({k: v for k, v in record.items() if k != nested[0]})
  return [{**outer, **flatten(inner)} for inner in record[nested[0]]]


def write_csv(name: str, payload: dict[str, Any], out: Path) -> list[Path]:
  """Writes every top-level list of records in ``payload`` as ``out/<name>_<key>.csv`` (``out/<name>.csv`` when
  ``key == name``): one row a record, one value a column (nested values flattened to dotted columns by
  :func:`flatten`, a blank where a record lacks one; a record holding one list of records gives a row per inner
  record); returns the paths."""
  import csv

  paths = []
  for key, records in payload.items():
    if not isinstance(records, list) or not records or not all(isinstance(r, dict) for r in records):
      continue
    rows = [row for r in records for row in _rows(_jsonable(r))]
    columns = list(dict.fromkeys(c for r in rows for c in r))
    path = Path(out) / (f"{name}.csv" if key == name else f"{name}_{key}.csv")
    with path.open("w", newline="") as f:
      writer = csv.writer(f)
      writer.writerow(columns)
      for r in rows:
        writer.writerow(["" if r.get(c) is None else r[c] for c in columns])
    paths.append(path)
  return paths


def write_json(name: str, payload: dict[str, Any], out: Path) -> Path:
  """Writes ``{"study", "created", "machine", "jax", "results": payload}`` to ``out/<name>.json``, and the
  payload's record lists as CSV (:func:`write_csv`); prints where they went."""
  out = Path(out)
  out.mkdir(parents=True, exist_ok=True)
  doc = {"study": name, "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
         "machine": {"platform": platform.platform(), "backend": jax.default_backend(),
                     "devices": len(jax.devices())},
         "jax": jax.__version__, "results": _jsonable(payload)}
  path = out / f"{name}.json"
  path.write_text(json.dumps(doc, indent=1))
  csvs = write_csv(name, payload, out)
  print(f"wrote {path}" + "".join(f", {p.name}" for p in csvs), flush=True)
  return path


def save_figure(fig, path: Path) -> Path:
  """Saves a matplotlib figure as PNG (100 dpi), closes it and prints where it went."""
  import matplotlib.pyplot as plt

  path = Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  fig.savefig(path, dpi=100)
  plt.close(fig)
  print(f"wrote {path}", flush=True)
  return path
