"""The `jaxsel` command: argument parsing, info, and the demo's quick path."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from jaxsel import cli


def test_parser_requires_a_command():
    with pytest.raises(SystemExit):
        cli.build_parser().parse_args([])


def test_info_prints_json_with_jax_version(capsys):
    import jax

    assert cli.main(["info"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["jax"] == jax.__version__
    assert info["backend"] == jax.default_backend()


def test_demo_quick_runs_and_writes_json(tmp_path, capsys):
    assert cli.main(["demo", "--quick", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "jaxsel demo" in out
    assert list(tmp_path.glob("*.json")), "demo wrote no JSON"


def test_console_entry_point_runs_as_module():
    proc = subprocess.run(
        [sys.executable, "-m", "jaxsel", "--help"], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0
    assert "demo" in proc.stdout
