"""Orbax checkpoints of the whole SAC :class:`~jaxsel.rl.sac.train.TrainState`.

The state holds everything the loop reads (networks, optimiser moments, replay buffer, environment
states, PRNG key, counters, hyperparameters), so ``restore`` then ``trainer.run`` continues exactly
where the saved run stopped.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import orbax.checkpoint as ocp


def save_state(path: str | os.PathLike[str], state: Any) -> None:
    """Writes ``state`` (any pytree of arrays) to the directory ``path`` (absolute or relative)."""
    with ocp.StandardCheckpointer() as ckpt:
        ckpt.save(os.path.abspath(path), state, force=True)


def restore_state(path: str | os.PathLike[str], like: Any) -> Any:
    """Reads a state saved by :func:`save_state`; ``like`` gives the structure, shapes and dtypes
    (e.g. ``jax.eval_shape(trainer.init, key)`` or any state of the same run)."""
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, like)
    with ocp.StandardCheckpointer() as ckpt:
        return ckpt.restore(os.path.abspath(path), abstract)
