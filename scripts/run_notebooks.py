"""Executes the notebooks in ``notebooks/`` and stores their outputs.

    .venv/bin/python scripts/run_notebooks.py                 # every notebook
    .venv/bin/python scripts/run_notebooks.py 06_diffusion    # some, by name

Each notebook's percent-format script ``notebooks/<name>.py`` is the source: it is read with
jupytext, executed top to bottom by a kernel running this interpreter (so the notebooks see the
same jax and jaxsel as the caller, whatever kernels Jupyter has installed), and written to
``notebooks/<name>.ipynb`` with its outputs, paired to the script (``jupytext --sync`` keeps the two
in step after an edit in Jupyter). The notebooks run as written, ``QUICK = True`` included.
``tests/test_notebooks.py`` executes them the same way.
"""

# No ``from __future__ import annotations``: tests/test_notebooks.py loads this file without
# registering it in sys.modules, and dataclasses cannot resolve string annotations then.
import dataclasses
import os
import sys
import tempfile
import time
from pathlib import Path

import jupytext
import nbformat
from ipykernel.kernelspec import write_kernel_spec
from jupyter_client.kernelspec import KernelSpecManager
from jupyter_client.manager import KernelManager
from nbclient import NotebookClient

from jaxsel.utils import flag, parse_config

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"
KERNEL = "python3"
#: Pairing metadata: Jupyter with jupytext saves both files on every edit.
FORMATS = "ipynb,py:percent"


def notebook_scripts(names: list[str] | None = None) -> list[Path]:
    """The percent-format sources ``notebooks/NN_*.py``, all or those whose stem is in ``names``."""
    scripts = sorted(p for p in NOTEBOOKS.glob("[0-9][0-9]_*.py"))
    if names:
        unknown = set(names) - {p.stem for p in scripts}
        if unknown:
            raise ValueError(f"no notebook named {sorted(unknown)} in {NOTEBOOKS}")
        scripts = [p for p in scripts if p.stem in names]
    return scripts


def read_script(path: Path) -> nbformat.NotebookNode:
    """The notebook of a percent-format script, with stable cell ids (diffs show real changes)."""
    nb = jupytext.read(path)
    for i, cell in enumerate(nb.cells):
        cell.id = f"cell-{i:02d}"
    nb.metadata.setdefault("jupytext", {})["formats"] = FORMATS
    return nb


def kernel_env() -> dict[str, str]:
    """This process's environment without the test suite's 8 virtual CPU devices (the notebooks
    run on the machine as a reader's would)."""
    env = dict(os.environ)
    flags = [f for f in env.get("XLA_FLAGS", "").split() if "device_count" not in f]
    env["XLA_FLAGS"] = " ".join(flags)
    return env


def execute(nb: nbformat.NotebookNode, cwd: Path, *, timeout: float = 900) -> float:
    """Runs every cell of ``nb`` in place (outputs stored in it) with this interpreter's ipykernel;
    raises ``nbclient.exceptions.CellExecutionError`` on the first failing cell. Returns seconds."""
    with tempfile.TemporaryDirectory() as specs:
        # A kernelspec naming sys.executable, found before any user-level "python3" kernelspec.
        write_kernel_spec(Path(specs) / KERNEL)
        km = KernelManager(
            kernel_name=KERNEL, kernel_spec_manager=KernelSpecManager(kernel_dirs=[specs])
        )
        client = NotebookClient(
            nb,
            km=km,
            timeout=timeout,
            record_timing=False,
            resources={"metadata": {"path": str(cwd)}},
        )
        t0 = time.perf_counter()
        client.execute(env=kernel_env())
        return time.perf_counter() - t0


@dataclasses.dataclass(frozen=True)
class RunConfig:
    names: tuple[str, ...] = flag((), "notebook names (default: all)", positional=True)
    timeout: float = flag(900.0, "seconds per cell")

    def __post_init__(self) -> None:
        if self.timeout <= 0:
            raise ValueError(f"timeout must be > 0 seconds, got {self.timeout}")
        try:
            notebook_scripts(list(self.names))
        except ValueError as e:
            raise ValueError(f"names: {e}") from None


def main() -> None:
    args = parse_config(RunConfig, description=__doc__)
    for script in notebook_scripts(list(args.names)):
        nb = read_script(script)
        seconds = execute(nb, script.parent, timeout=args.timeout)
        out = script.with_suffix(".ipynb")
        jupytext.write(nb, out, fmt="ipynb")
        print(f"{out.relative_to(NOTEBOOKS.parent)}: executed in {seconds:.0f} s", file=sys.stderr)


if __name__ == "__main__":
    main()
