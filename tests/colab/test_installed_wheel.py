"""The tour notebook from the built wheel, in a fresh virtual environment, installed as on Colab (slow set).

The wheel is built with ``python -m build``; a virtual environment outside the checkout (no system site packages)
gets JAX at lpnum's lower bound (standing for the JAX a Colab GPU/TPU runtime ships) and ipykernel (the runner's
kernel, which Colab has of its own); the notebook's own first cell then installs ``lpnum[colab]`` from the wheel
(``LPNUM_SOURCE``). The notebook must run on that installed lpnum, keep that JAX, and bring no test dependency.
"""

import json
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("build")

pytestmark = [pytest.mark.slow,
              pytest.mark.filterwarnings("ignore::DeprecationWarning:jupyter_client.*"),
              pytest.mark.filterwarnings("ignore::DeprecationWarning:jupyter_core.*"),
              pytest.mark.filterwarnings("ignore::DeprecationWarning:zmq.*")]

ROOT = Path(__file__).resolve().parents[2]


def _run(*argv, **kwargs):
  done = subprocess.run([str(a) for a in argv], capture_output=True, text=True, timeout=1800, **kwargs)
  assert done.returncode == 0, f"{' '.join(map(str, argv))}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
  return done.stdout


def test_tour_notebook_runs_on_the_wheel_in_a_fresh_environment(tmp_path, monkeypatch):
  _run(sys.executable, "-m", "build", "--wheel", "--outdir", tmp_path / "dist", ROOT)
  (wheel,) = (tmp_path / "dist").glob("lpnum-*.whl")
  venv = tmp_path / "venv"
  _run(sys.executable, "-m", "venv", venv)
  python = venv / "bin" / "python"
  (jax_min,) = [r.removeprefix("jax>=") for r in tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
                ["dependencies"] if r.startswith("jax>=")]
  env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
  _run(python, "-m", "pip", "install", "-q", f"jax=={jax_min}", f"jaxlib=={jax_min}", "ipykernel", env=env)
  _run(python, "-m", "ipykernel", "install", "--prefix", tmp_path / "jupyter", "--name", "lpnum-wheel", env=env)

  monkeypatch.delenv("PYTHONPATH", raising=False)  # the kernel inherits the environment: never the checkout
  monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter" / "share" / "jupyter"))
  monkeypatch.setenv("LPNUM_SOURCE", f"lpnum[colab] @ {wheel.as_uri()}")
  monkeypatch.setenv("LPNUM_QUICK", "1")
  monkeypatch.setenv("MPLBACKEND", "Agg")
  nb = nbformat.read(ROOT / "colab" / "tour_of_formats.ipynb", as_version=4)
  nb.cells.append(nbformat.v4.new_code_cell(
      "import importlib.metadata, json, lpnum\n"
      "print(json.dumps({'lpnum': lpnum.__file__, 'jax': importlib.metadata.version('jax'),\n"
      "                  'jaxlib': importlib.metadata.version('jaxlib')}))"))
  run_dir = tmp_path / "run"
  run_dir.mkdir()
  client = nbclient.NotebookClient(nb, timeout=900, kernel_name="lpnum-wheel",
                                   resources={"metadata": {"path": str(run_dir)}})
  client.execute()  # raises CellExecutionError on the first failing cell

  facts = json.loads(nb.cells[-1].outputs[-1]["text"])
  assert Path(facts["lpnum"]).is_relative_to(venv), facts  # the installed wheel, not the checkout
  assert facts["jax"] == facts["jaxlib"] == jax_min  # the runtime's JAX kept, neither upgraded nor replaced
  installed = {re.split(r"==| @ ", line)[0].lower()
               for line in _run(python, "-m", "pip", "list", "--format=freeze", env=env).splitlines()}
  assert {"lpnum", "matplotlib", "scikit-learn", "flax"} <= installed
  assert not installed & {"pytest", "hypothesis", "softposit", "gfloat", "torch", "sentence-transformers"}
