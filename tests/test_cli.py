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


def test_generate_without_the_model_names_the_fetch_command(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert cli.main(["generate", "hello", "--max-new-tokens", "2"]) == 1
    assert "jaxsel fetch smollm2" in capsys.readouterr().err


def test_generate_streams_the_chat_answer(capsys):
    from jaxsel.models import fetch

    try:
        fetch.model_path("smollm2")
    except FileNotFoundError as e:
        pytest.skip(str(e))
    argv = ["generate", "What is the capital of France?", "--chat", "--max-new-tokens", "12"]
    assert cli.main([*argv, "--policy", "tokenselect"]) == 0
    out = capsys.readouterr()
    assert out.out.strip() == "The capital of France is Paris."
    assert "prefill" in out.err and "tok/s" in out.err
