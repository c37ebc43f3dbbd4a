"""Dispatch over named implementations: ``xla`` always, Pallas backends where they can run.

Rules (shared by every op's ``api.py``):

- Implementation names: ``"xla"`` (plain JAX, runs everywhere), ``"xla_radix"`` where an op has a
  second plain-JAX algorithm (also portable), and Pallas backends ``"mosaic_tpu"``, ``"mosaic_gpu"``,
  ``"triton"`` which need their device, or ``interpret=`` to run on CPU.
- ``implementation=None`` picks the best registered backend for the default device and falls back to
  ``"xla"`` with a one-time warning when there is none or it raises ``NotImplementedError``.
  Backends in :data:`NOT_DEFAULT` are skipped silently (``"xla"`` is the measured best there, not a
  fallback); they run when named.
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
    "rocm": (),
    "tpu": ("mosaic_tpu",),
    "cpu": (),
}

#: Backends that ``implementation=None`` does not pick, with the reason: ``mosaic_gpu`` matches the
#: references on the device but measured slower than ``xla`` for every op (``results/gpu/README.md``).
#: Remove it from here once a faster kernel measures ahead.
NOT_DEFAULT: dict[str, str] = {
    "mosaic_gpu": "slower than 'xla' on an H200 (results/gpu/README.md); request it by name",
}

#: Implementations that are plain JAX and run on every platform.
PORTABLE: frozenset[str] = frozenset({"xla", "xla_radix"})

#: The platform each Pallas backend compiles for.
_BACKEND_PLATFORM: dict[str, str] = {"mosaic_tpu": "tpu", "mosaic_gpu": "gpu", "triton": "gpu"}


def default_backend_kind() -> str:
    """The jax platform of the default device: ``"cpu"``, ``"gpu"`` or ``"tpu"``."""
    return jax.default_backend()


def available_implementations(registry: dict[str, Callable[..., Any]] | None = None) -> list[str]:
    """Names usable on this machine without interpret mode: the portable ones plus the registered
    Pallas backends of the default platform."""
    names = [n for n in sorted(PORTABLE) if registry is None or n in registry]
    for name in _PREFERENCE.get(default_backend_kind(), ()):
        if registry is None or name in registry:
            names.append(name)
    return names


@functools.cache
def _warn_once(op: str, wanted: str, why: str) -> None:
    warnings.warn(
        f"pallas_kernels.{op}: backend {wanted!r} unavailable ({why}); falling back to 'xla'.",
        RuntimeWarning,
        stacklevel=4,
    )


def dispatch(
    op: str,
    registry: dict[str, Callable[..., Any]],
    implementation: str | None,
    *args: Any,
    **kwargs: Any,
) -> Any:
    """Calls ``registry[name](*args, **kwargs)`` for the chosen implementation.

    ``registry`` maps implementation names to callables; it must contain ``"xla"``. Every callable
    takes the keyword arguments ``block_sizes`` and ``interpret`` (portable ones ignore them).
    """
    if "xla" not in registry:
        raise ValueError(f"{op}: registry must contain 'xla', has {sorted(registry)}")
    interpret = kwargs.get("interpret", False)
    if implementation is not None:
        if implementation not in registry:
            raise ValueError(
                f"{op}: unknown or unregistered implementation={implementation!r}; "
                f"registered: {sorted(registry)}"
            )
        if implementation not in PORTABLE and not interpret:
            platform = _BACKEND_PLATFORM.get(implementation)
            here = default_backend_kind()
            if (
                platform is not None
                and here != platform
                and not (platform == "gpu" and here in ("cuda", "gpu"))
            ):
                raise RuntimeError(
                    f"{op}: implementation={implementation!r} needs a {platform!r} device but the "
                    f"default backend is {here!r} (pass interpret=True to run it interpreted)"
                )
        return registry[implementation](*args, **kwargs)
    preferred = _PREFERENCE.get(default_backend_kind(), ())
    registered = [name for name in preferred if name in registry]
    for name in registered:
        if name in NOT_DEFAULT:
            continue
        try:
            return registry[name](*args, **kwargs)
        except NotImplementedError as e:
            _warn_once(op, name, str(e))
            break
    if preferred and not registered:
        _warn_once(op, preferred[0], "not registered for this op")
    return registry["xla"](*args, **kwargs)
