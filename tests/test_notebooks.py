"""The notebooks in ``notebooks/``: each stored ``.ipynb`` matches its percent-format ``.py``, and
each runs top to bottom (``QUICK = True``) without an error; every notebook asserts the fact it
shows, so a silent regression fails here too.

Executing them takes minutes: the execution tests carry the ``notebook`` marker (select with
``-m notebook``, deselect with ``-m 'not notebook'``). ``scripts/run_notebooks.py`` executes them
the same way and stores the outputs.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

jupytext = pytest.importorskip("jupytext")
nbformat = pytest.importorskip("nbformat")
pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

ROOT = Path(__file__).resolve().parent.parent


def _runner():
    spec = importlib.util.spec_from_file_location(
        "run_notebooks", ROOT / "scripts" / "run_notebooks.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


run_notebooks = _runner()
SCRIPTS = run_notebooks.notebook_scripts()
IDS = [p.stem for p in SCRIPTS]


def _cells(nb) -> list[tuple[str, str]]:
    return [(c.cell_type, c.source.strip()) for c in nb.cells]


def test_every_notebook_has_a_pair():
    assert SCRIPTS, "no notebooks/NN_*.py found"
    stored = sorted(p.stem for p in (ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
    assert stored == IDS, f"unpaired: .ipynb {stored} vs .py {IDS}"


@pytest.mark.parametrize("script", SCRIPTS, ids=IDS)
def test_ipynb_matches_its_script(script: Path):
    """The stored notebook holds the script's cells (run ``scripts/run_notebooks.py NAME`` or
    ``jupytext --sync`` after editing either), with outputs from an executed run."""
    nb = nbformat.read(script.with_suffix(".ipynb"), as_version=4)
    assert _cells(nb) == _cells(jupytext.read(script)), (
        f"{script.name} and its .ipynb differ: run scripts/run_notebooks.py {script.stem}"
    )
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code and all(c.execution_count for c in code), "stored without (complete) outputs"
    assert any(c.source.strip().startswith("QUICK = True") for c in code[:3]), (
        "a QUICK = True cell near the top"
    )


@pytest.mark.notebook
@pytest.mark.parametrize("script", SCRIPTS, ids=IDS)
def test_notebook_executes(script: Path, tmp_path: Path):
    """Runs the notebook as CI's reader would (outputs go to a copy, never to the stored file)."""
    nb = run_notebooks.read_script(script)
    seconds = run_notebooks.execute(nb, script.parent, timeout=600)
    nbformat.write(nb, tmp_path / script.with_suffix(".ipynb").name)
    print(f"{script.stem}: {seconds:.0f} s")
