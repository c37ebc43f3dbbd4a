"""Packaging: the distribution ships both top-level packages and keeps torch out of core deps."""

from __future__ import annotations

import importlib
import importlib.metadata as md
import re
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_both_top_level_packages_import():
    import jaxsel
    import pallas_kernels

    assert jaxsel.__version__ == _pyproject()["project"]["version"]
    assert "xla" in pallas_kernels.available_implementations()


@pytest.mark.parametrize("area", ["attention", "models", "rl", "hebb", "pool", "diffusion"])
def test_area_subpackages_import(area):
    import jaxsel

    assert getattr(jaxsel, area) is importlib.import_module(f"jaxsel.{area}")


def test_unknown_attribute_is_an_attribute_error():
    import jaxsel

    with pytest.raises(AttributeError, match="no attribute"):
        jaxsel.not_an_area


def _requirement_names(reqs: list[str]) -> set[str]:
    return {re.split(r"[<>=!~;\[ ]", r, maxsplit=1)[0].strip().lower() for r in reqs}


def test_core_dependencies_are_small_and_torch_free():
    core = _requirement_names(_pyproject()["project"]["dependencies"])
    assert {"jax", "flax", "optax", "chex", "orbax-checkpoint", "numpy"} <= core
    heavy = {"torch", "transformers", "scikit-learn", "matplotlib", "tensorflow", "gymnasium"}
    assert not core & heavy, f"heavy packages in core dependencies: {core & heavy}"


def test_torch_only_in_test_extra_and_pinned_to_local_wheel():
    extras = _pyproject()["project"]["optional-dependencies"]
    for name, reqs in extras.items():
        torch_reqs = [r for r in reqs if r.lower().startswith("torch")]
        if name == "test":
            assert torch_reqs and all("==2.13.0" in r for r in torch_reqs), torch_reqs
        else:
            assert not torch_reqs, f"torch in extra {name!r}"


def test_installed_metadata_matches_pyproject():
    dist = md.distribution("jaxsel")
    assert dist.version == _pyproject()["project"]["version"]
    entry = [e for e in dist.entry_points if e.group == "console_scripts" and e.name == "jaxsel"]
    assert entry and entry[0].value == "jaxsel.cli:main"


def test_readme_opens_with_the_two_commands_and_ci_runs_the_test_command():
    readme = (ROOT / "README.md").read_text().splitlines()
    blocks, inside, current = [], False, []
    for line in readme:
        if line.startswith("```"):
            if inside:
                blocks.append(current)
                current = []
            inside = not inside
        elif inside:
            current.append(line)
    first_two = [" ".join(b).strip() for b in blocks[:2]]
    assert "jaxsel demo" in first_two[0]
    assert "pytest" in first_two[1]
    ci = (ROOT / ".ci" / "run").read_text()
    assert first_two[1] in ci, "the README's test command must appear verbatim in .ci/run"
