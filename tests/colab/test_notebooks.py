"""The Colab notebooks: stored without outputs, start with the same install cell (colab/install_cell.py writes it
from pyproject.toml), run top to bottom in quick mode.

Every ``colab/*.ipynb`` is found at collection time. The static checks run for all of them in the default suite.
Executing a notebook (nbclient, a python3 kernel, ``LPNUM_QUICK=1``, a temporary working directory; a failing cell
fails the test) is marked ``slow`` for every notebook: ``.ci/run`` runs them after the default suite.
"""

import importlib.util
import re
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

# jupyter_client and jupyter_core raise DeprecationWarnings of their own (platformdirs migration, datetime.utcnow)
# while a kernel starts; they are not lpnum's to fix, and the repository turns warnings into errors.
pytestmark = [pytest.mark.filterwarnings("ignore::DeprecationWarning:jupyter_client.*"),
              pytest.mark.filterwarnings("ignore::DeprecationWarning:jupyter_core.*"),
              pytest.mark.filterwarnings("ignore::DeprecationWarning:zmq.*")]

COLAB = Path(__file__).resolve().parents[2] / "colab"
NOTEBOOKS = sorted(COLAB.glob("*.ipynb"))


def _install_cell() -> str:
  """The cell colab/install_cell.py writes from pyproject.toml (colab/ is not a package: loaded by path)."""
  spec = importlib.util.spec_from_file_location("install_cell", COLAB / "install_cell.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.cell()


INSTALL_CELL = _install_cell()


def _param(path: Path, *, execute: bool):
  marks = [pytest.mark.slow] if execute else []  # executing a notebook is an end-to-end run: the slow set
  return pytest.param(path, id=path.stem, marks=marks)


def test_there_are_notebooks():
  assert {p.stem for p in NOTEBOOKS} >= {"formats", "scale_rules", "tour_of_formats", "quantize_flax_model",
                                         "kernels"}


@pytest.mark.parametrize("path", [_param(p, execute=False) for p in NOTEBOOKS])
def test_stored_without_outputs_and_starts_with_install_cell(path):
  nb = nbformat.read(path, as_version=4)
  nbformat.validate(nb)
  assert nb.cells[0].cell_type == "markdown" and nb.cells[0].source.startswith("# "), "a markdown title first"
  code = [c for c in nb.cells if c.cell_type == "code"]
  assert code[0].source == INSTALL_CELL, f"{path.name}: run python colab/install_cell.py"
  for cell in code:
    assert cell.outputs == [] and cell.execution_count is None, f"outputs stored in {path.name}: {cell.source[:60]}"


def _run_install_cell_without_lpnum(monkeypatch, versions):
  """Runs the install cell as on a runtime without lpnum whose packages have ``versions``; returns pip's argv."""
  import importlib.metadata
  import subprocess

  calls = []
  find_spec = importlib.util.find_spec
  monkeypatch.setattr(importlib.util, "find_spec",
                      lambda name, *a: None if name == "lpnum" or name not in versions and name in ("jax", "jaxlib")
                      else find_spec(name, *a))
  monkeypatch.setattr(importlib.metadata, "version", versions.__getitem__)
  monkeypatch.setattr(subprocess, "run", lambda argv, **kwargs: calls.append(argv))
  monkeypatch.delenv("LPNUM_SOURCE", raising=False)
  exec(INSTALL_CELL, {})  # noqa: S102
  (argv,) = calls
  return argv[1:]


def test_install_cell_installs_the_colab_extra_and_keeps_the_runtimes_jax(monkeypatch):
  import tomllib

  repository = tomllib.loads((COLAB.parent / "pyproject.toml").read_text())["project"]["urls"]["Repository"]
  argv = _run_install_cell_without_lpnum(monkeypatch, {"jax": "0.10.2", "jaxlib": "0.10.2"})
  assert argv == ["-m", "pip", "install", "-q", f"lpnum[colab] @ git+{repository}", "jax==0.10.2", "jaxlib==0.10.2"]
  assert _run_install_cell_without_lpnum(monkeypatch, {})[-1] == f"lpnum[colab] @ git+{repository}"  # no JAX yet


def test_install_cell_stops_on_a_jax_older_than_lpnum_needs(monkeypatch):
  import tomllib

  (bound,) = [r for r in tomllib.loads((COLAB.parent / "pyproject.toml").read_text())["project"]["dependencies"]
              if r.startswith("jax>=")]
  with pytest.raises(RuntimeError, match=re.escape(f"lpnum needs {bound}; this runtime has jax 0.9.3")):
    _run_install_cell_without_lpnum(monkeypatch, {"jax": "0.9.3", "jaxlib": "0.9.3"})


@pytest.mark.parametrize("path", [_param(p, execute=True) for p in NOTEBOOKS])
def test_notebook_runs_in_quick_mode(path, tmp_path, monkeypatch):
  monkeypatch.setenv("LPNUM_QUICK", "1")  # the kernel inherits the environment when it starts
  monkeypatch.setenv("MPLBACKEND", "Agg")
  nb = nbformat.read(path, as_version=4)
  client = nbclient.NotebookClient(nb, timeout=900, kernel_name="python3",
                                   resources={"metadata": {"path": str(tmp_path)}})
  client.execute()  # raises CellExecutionError on the first failing cell
  errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
  assert not errors


def test_readme_lists_every_notebook():
  readme = (COLAB / "README.md").read_text()
  listed = set(re.findall(r"\b([a-z_]+)\.ipynb\b", readme))
  assert {p.stem for p in NOTEBOOKS} <= listed
  for name in ("training", "accumulators"):
    assert f"{name}.ipynb" in readme
