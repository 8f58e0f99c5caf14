"""How studies and benchmarks report: progress bars, JSON documents with their record lists as CSV, PNG plots."""

from __future__ import annotations

import datetime
import json
import platform
from collections.abc import Iterable
from pathlib import Path
from typing import Any, TypeVar

import jax
import numpy as np

__all__ = ["progress", "write_csv", "write_json", "save_figure"]

T = TypeVar("T")


def progress(items: Iterable[T], description: str, total: int | None = None) -> Iterable[T]:
  """``items`` with a progress bar on the terminal (rich; silent when output is not a terminal)."""
  from rich.progress import track

  return track(items, description=description, total=total, transient=True)


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


def write_csv(name: str, payload: dict[str, Any], out: Path) -> list[Path]:
  """Writes every top-level list of flat records in ``payload`` as ``out/<name>_<key>.csv`` (one row a record,
  nested values as JSON text); returns the paths."""
  import csv

  paths = []
  for key, records in payload.items():
    if not isinstance(records, list) or not records or not all(isinstance(r, dict) for r in records):
      continue
    columns = list(dict.fromkeys(k for r in records for k in r))
    path = Path(out) / f"{name}_{key}.csv"
    with path.open("w", newline="") as f:
      writer = csv.writer(f)
      writer.writerow(columns)
      for r in records:
        cells = [_jsonable(r.get(c)) for c in columns]
        writer.writerow([json.dumps(v) if isinstance(v, dict | list) else ("" if v is None else v) for v in cells])
    paths.append(path)
  return paths


def write_json(name: str, payload: dict[str, Any], out: Path) -> Path:
  """Writes ``{"study", "created", "machine", "jax", "results": payload}`` to ``out/<name>.json``, and the
  payload's record lists as CSV (:func:`write_csv`)."""
  out = Path(out)
  out.mkdir(parents=True, exist_ok=True)
  doc = {"study": name, "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
         "machine": {"platform": platform.platform(), "backend": jax.default_backend(),
                     "devices": len(jax.devices())},
         "jax": jax.__version__, "results": _jsonable(payload)}
  path = out / f"{name}.json"
  path.write_text(json.dumps(doc, indent=1))
  write_csv(name, payload, out)
  return path


def save_figure(fig, path: Path) -> Path:
  """Saves a matplotlib figure as PNG (100 dpi) and closes it."""
  import matplotlib.pyplot as plt

  path = Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  fig.savefig(path, dpi=100)
  plt.close(fig)
  return path
