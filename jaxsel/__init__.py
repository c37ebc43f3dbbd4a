"""jaxsel: soft selection methods in JAX.

Areas (one subpackage each, imported lazily so ``import jaxsel`` stays cheap):

- :mod:`jaxsel.attention` -- TokenSelect token-level KV selection, adaptive-temperature softmax, baselines.
- :mod:`jaxsel.models` -- Llama-family decoder with switchable attention policy and HF checkpoint loading.
- :mod:`jaxsel.rl` -- soft-Bellman learners: SAC and OREO.
- :mod:`jaxsel.hebb` -- SoftHebb soft winner-take-all Hebbian learning.
- :mod:`jaxsel.pool` -- SoftPool exponentially weighted pooling.
- :mod:`jaxsel.diffusion` -- SVDD and FK steering of diffusion models.

:mod:`jaxsel.utils` (import it directly) holds the infrastructure the areas and scripts share: orbax
checkpoints, fast-compile options, config dataclasses as command-line flags, headless plots.

Pallas kernels for the attention hot path live in the sibling top-level package ``pallas_kernels``.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

AREAS = ("attention", "models", "rl", "hebb", "pool", "diffusion")

__all__ = ["AREAS", "__version__", *AREAS]


def __getattr__(name: str) -> Any:
    if name in AREAS:
        module = importlib.import_module(f"jaxsel.{name}")
        globals()[name] = module
        return module
    raise AttributeError(f"module 'jaxsel' has no attribute {name!r}")
