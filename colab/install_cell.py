"""The first code cell of every notebook in colab/, written from pyproject.toml.

On a runtime without lpnum (Colab) the cell installs ``lpnum[colab]`` from the repository that pyproject.toml's
``[project.urls] Repository`` names (the one place it is set), or from ``$LPNUM_SOURCE`` (a fork, a branch, a
wheel). It never upgrades or replaces a JAX the runtime already has (Colab's GPU and TPU runtimes ship JAX built
for their accelerator): it pins the installed ``jax`` and ``jaxlib`` in the same pip command, and stops with an
explanation if that JAX is older than lpnum's lower bound. Where lpnum is importable (a local checkout, CI) it
installs nothing. Then it sets ``QUICK``.

``python colab/install_cell.py`` writes the cell into every notebook; ``tests/colab/test_notebooks.py`` checks that
each notebook starts with it.
"""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path

__all__ = ["cell", "main"]

ROOT = Path(__file__).resolve().parents[1]

_TEMPLATE = '''import importlib.metadata, importlib.util, os, re, subprocess, sys
if importlib.util.find_spec("lpnum") is None:  # on Colab: install lpnum[colab], keeping the runtime's own JAX
    have = {{n: importlib.metadata.version(n) for n in ("jax", "jaxlib") if importlib.util.find_spec(n)}}
    if "jax" in have and tuple(map(int, re.findall(r"\\d+", have["jax"])[:3])) < {jax_min}:
        raise RuntimeError(f"lpnum needs jax>={jax_min_text}; this runtime has jax {{have['jax']}}: install a newer "
                           "JAX for its accelerator, restart the runtime and run this cell again")
    source = os.environ.get("LPNUM_SOURCE", "lpnum[colab] @ git+{repository}")
    pins = [f"{{n}}=={{v}}" for n, v in have.items()]  # so that pip cannot upgrade or replace the runtime's JAX
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", source, *pins], check=True)
import jax
# Quick mode on a CPU runtime, full mode on a GPU/TPU one; LPNUM_QUICK=0 or 1 overrides.
QUICK = os.environ.get("LPNUM_QUICK", "1" if jax.default_backend() == "cpu" else "0") == "1"'''


def cell(pyproject: Path = ROOT / "pyproject.toml") -> str:
  """The install cell's source, with the repository URL and JAX's lower bound read from ``pyproject``."""
  project = tomllib.loads(pyproject.read_text())["project"]
  (jax_min,) = [m.group(1) for r in project["dependencies"] if (m := re.fullmatch(r"jax>=([\d.]+)", r))]
  return _TEMPLATE.format(repository=project["urls"]["Repository"], jax_min_text=jax_min,
                          jax_min=tuple(int(p) for p in jax_min.split(".")))


def main() -> None:
  """Writes :func:`cell` as the first code cell of every ``colab/*.ipynb`` (stored without outputs)."""
  source = cell()
  for path in sorted((ROOT / "colab").glob("*.ipynb")):
    nb = json.loads(path.read_text())
    first = next(c for c in nb["cells"] if c["cell_type"] == "code")
    first["source"] = source.splitlines(keepends=True)
    path.write_text(json.dumps(nb, indent=1, ensure_ascii=False) + "\n")
    print(f"wrote the install cell into {path.relative_to(ROOT)}")


if __name__ == "__main__":
  main()
