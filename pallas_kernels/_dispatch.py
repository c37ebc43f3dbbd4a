"""Dispatch over named implementations: ``xla`` always, Pallas backends where they can run.

Rules (shared by every op's ``api.py``):

- ``implementation=None`` picks the best available backend for the default device and falls back to
  ``"xla"`` with a one-time warning when that backend is missing or raises ``NotImplementedError``.
- An explicitly requested backend that cannot run raises, naming the backend and why.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable
from typing import Any

import jax

#: Preferred Pallas backend per jax platform, best first.
_PREFERENCE: dict[str, tuple[str, ...]] = {
    "gpu": ("mosaic_gpu", "triton"),
    "cuda": ("mosaic_gpu", "triton"),
    "tpu": ("mosaic_tpu",),
    "cpu": (),
}


def default_backend_kind() -> str:
    """The jax platform of the default device: ``"cpu"``, ``"gpu"`` or ``"tpu"``."""
    return jax.default_backend()


def available_implementations(registry: dict[str, Callable[..., Any]] | None = None) -> list[str]:
    """Names usable on this machine: ``xla`` plus the registered backends of the default platform."""
    names = ["xla"]
    for name in _PREFERENCE.get(default_backend_kind(), ()):
        if registry is None or name in registry:
            names.append(name)
    return names


@functools.cache
def _warn_once(op: str, wanted: str, why: str) -> None:
    warnings.warn(
        f"pallas_kernels.{op}: backend {wanted!r} unavailable ({why}); falling back to 'xla'.",
        RuntimeWarning,
        stacklevel=3,
    )


def dispatch(
    op: str,
    registry: dict[str, Callable[..., Any]],
    implementation: str | None,
    *args: Any,
    **kwargs: Any,
) -> Any:
    """Calls ``registry[name](*args, **kwargs)`` for the chosen implementation.

    ``registry`` maps implementation names to callables; it must contain ``"xla"``.
    """
    if "xla" not in registry:
        raise ValueError(f"{op}: registry must contain 'xla', has {sorted(registry)}")
    if implementation is not None:
        if implementation not in registry:
            raise ValueError(
                f"{op}: unknown implementation={implementation!r}; known: {sorted(registry)}"
            )
        if implementation != "xla" and implementation not in available_implementations(registry):
            # Interpret mode lets any backend run on CPU; the backend itself decides.
            if not kwargs.get("interpret", False):
                raise RuntimeError(
                    f"{op}: implementation={implementation!r} cannot run on platform "
                    f"{default_backend_kind()!r} (pass interpret=True to run it interpreted)"
                )
        return registry[implementation](*args, **kwargs)
    for name in _PREFERENCE.get(default_backend_kind(), ()):
        if name in registry:
            try:
                return registry[name](*args, **kwargs)
            except NotImplementedError as e:
                _warn_once(op, name, str(e))
                break
    else:
        preferred = _PREFERENCE.get(default_backend_kind(), ())
        if preferred:
            _warn_once(op, preferred[0], "not registered")
    kwargs.pop("interpret", None)
    return registry["xla"](*args, **kwargs)
