"""Orbax checkpoints of pytrees of arrays: one way to save, restore and resume in every area.

- :func:`save_tree` writes a pytree to a directory (overwriting it, waiting until it is on disk);
- :func:`restore_tree` reads it back, either as saved (``like=None``) or with the structure, shapes
  and dtypes of ``like`` (a pytree of arrays or ``jax.ShapeDtypeStruct``; needed for PRNG keys,
  NamedTuples and dataclasses, which a plain restore returns as dicts);
- :func:`restore_or_make` restores ``path`` if it exists, else calls ``make()`` and saves the result
  (phases of a pipeline that resume after a kill).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import jax
import jax.numpy as jnp

T = TypeVar("T")

PathLike = str | os.PathLike[str]


def _abs(path: PathLike) -> Path:
    return Path(path).absolute()


def save_tree(path: PathLike, tree: Any) -> Path:
    """Writes ``tree`` (any pytree of arrays) to the directory ``path``; returns its absolute path.

    An existing checkpoint at ``path`` is replaced, and so is the temporary folder a run killed
    mid-save leaves beside it (it would otherwise block the save).
    """
    import orbax.checkpoint as ocp

    path = _abs(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(path.with_name(path.name + ".orbax-checkpoint-tmp"), ignore_errors=True)
    with ocp.StandardCheckpointer() as ckpt:
        ckpt.save(path, tree, force=True)
    return path


def restore_tree(path: PathLike, like: Any = None) -> Any:
    """Reads a pytree saved by :func:`save_tree` (or any orbax PyTree checkpoint) as jax arrays.

    Args:
      path: the checkpoint directory.
      like: ``None`` to restore the tree as saved (containers come back as dicts and lists), or a
        pytree of arrays / ``jax.ShapeDtypeStruct`` giving the structure, shapes and dtypes, e.g.
        ``jax.eval_shape(init, key)`` or any state of the same run.
    """
    import orbax.checkpoint as ocp

    path = _abs(path)
    if not path.exists():
        raise FileNotFoundError(f"no checkpoint at {path}")
    with ocp.StandardCheckpointer() as ckpt:
        if like is None:
            # device arrays, so traced indices (embedding lookups) work on the restored tree
            return jax.tree.map(jnp.asarray, ckpt.restore(path))
        return ckpt.restore(path, jax.tree.map(ocp.utils.to_shape_dtype_struct, like))


def restore_or_make(path: PathLike, make: Callable[[], T], like: Any = None) -> T:
    """``restore_tree(path, like)`` if ``path`` holds a checkpoint, else ``save_tree(path, make())``.

    With ``like=None`` a restored tree comes back as saved (dicts and lists, see
    :func:`restore_tree`); the freshly made one is returned unchanged.
    """
    if _abs(path).exists():
        return restore_tree(path, like)
    tree = make()
    save_tree(path, tree)
    return tree
