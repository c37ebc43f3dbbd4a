"""The flax NNX wrapper of the decoder: owns the parameters, calls the pure functions of
:mod:`jaxsel.models.decoder` and :mod:`jaxsel.models.generate`."""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxsel.models.config import DecoderConfig
from jaxsel.models.decoder import Params, forward, init_params
from jaxsel.models.generate import generate


class Decoder(nnx.Module):
    """Thin flax NNX wrapper: parameters as ``nnx.Param`` leaves, math in the pure functions.

    ``m(tokens [B, T] int32) -> logits [B, T, V]`` (dense, float32). ``m.params_tree()`` returns the
    plain pytree for the jitted paths (:func:`jaxsel.models.generate.generate`).
    """

    def __init__(
        self,
        config: DecoderConfig,
        *,
        rngs: nnx.Rngs | None = None,
        params: Params | None = None,
        dtype: Any = jnp.float32,
    ):
        self.config = config
        if params is None:
            key = rngs.params() if rngs is not None else jax.random.key(0)
            params = jax.jit(init_params, static_argnums=1, static_argnames="dtype")(
                key, config, dtype=dtype
            )
        self.params = nnx.data(jax.tree.map(nnx.Param, params))

    def params_tree(self) -> Params:
        return jax.tree.map(
            lambda v: v[...], self.params, is_leaf=lambda v: isinstance(v, nnx.Param)
        )

    def __call__(self, tokens: jax.Array) -> jax.Array:
        tokens = jnp.asarray(tokens)
        if tokens.ndim != 2 or not jnp.issubdtype(tokens.dtype, jnp.integer):
            raise ValueError(f"tokens must be int [B, T], got {tokens.dtype}{list(tokens.shape)}")
        return _batched_forward(self.params_tree(), tokens.astype(jnp.int32), self.config)

    def generate(self, prompts: Any, **kwargs: Any) -> np.ndarray:
        """See :func:`jaxsel.models.generate.generate`."""
        return generate(self.params_tree(), self.config, prompts, **kwargs)


@functools.partial(jax.jit, static_argnums=2)
def _batched_forward(params: Params, tokens: jax.Array, config: DecoderConfig) -> jax.Array:
    return jax.vmap(lambda t: forward(params, t, config=config))(tokens)
