"""The Pallas TPU kernels lower to Mosaic on a CPU-only machine (cross-platform ``lower``).

This runs the Pallas -> Mosaic MLIR lowering (block-shape rules, supported primitives) at the
paper's shapes without a TPU; Mosaic's own compilation (layouts, VMEM limits) still needs a TPU.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import pytest

pytest.importorskip("jax.experimental.pallas.tpu")

from pallas_kernels.sparse_decode import BlockSizes as SdBlocks
from pallas_kernels.sparse_decode.mosaic_tpu import sparse_decode_pallas
from pallas_kernels.token_select import BlockSizes as TsBlocks
from pallas_kernels.token_select.mosaic_tpu import ranked_votes_pallas
from pallas_kernels.topk import BlockSizes as TkBlocks
from pallas_kernels.topk.mosaic_tpu import topk_set_pallas

S = jax.ShapeDtypeStruct


def lowers_for_tpu(fn, *args) -> str:
    return jax.jit(fn).trace(*args).lower(lowering_platforms=("tpu",)).as_text()


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_tpu_lowering(dtype):
    n, hq, hkv, d = 4096 + 77, 32, 8, 128
    q, k = S((hq, d), dtype), S((n, hkv, d), dtype)
    txt = lowers_for_tpu(
        lambda q, k, kl: ranked_votes_pallas(
            q, k, kl, n_sink=128, n_local=512, scale=1.0, gqa_mapping="group",
            block_sizes=TsBlocks(block_kv=512, block_vote=2048),
        ),
        q, k, S((), jnp.int32),
    )  # fmt: skip
    assert "tpu_custom_call" in txt
    txt = lowers_for_tpu(
        lambda x: topk_set_pallas(x, 2048, block_sizes=TkBlocks(block_rows=64)), S((1, n), dtype)
    )
    assert "tpu_custom_call" in txt
    txt = lowers_for_tpu(
        lambda q, k, v, i, o: sparse_decode_pallas(
            q, k, v, i, o, scale=0.1, gqa_mapping="group", block_sizes=SdBlocks(256)
        ),
        q, k, k, S((2688,), jnp.int32), S((2688,), jnp.bool_),
    )  # fmt: skip
    assert "tpu_custom_call" in txt
