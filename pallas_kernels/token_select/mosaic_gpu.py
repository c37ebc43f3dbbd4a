"""TokenSelect scoring as a Mosaic GPU kernel (Hopper, ``plgpu.kernel``), votes and top-k in XLA.

The pass that bounds a decode step is scoring: every cached key is read once. Grid
``(Hkv, N // block_kv)`` (named axes ``"h"``, ``"t"``), one warpgroup per block:

1. TMA copies, on one barrier, of the K tile ``[block_kv, d]`` of KV head ``h`` (a strided
   window of the ``[N, Hkv, d]`` cache: never copied, padded or transposed; TMA tiles its
   ``(N, d)`` dims by ``(8, swizzle)``, so the device path needs N a multiple of 8, else
   ``NotImplementedError``), the query group ``[64, d]`` (its G heads zero-padded to wgmma's
   M = 64) and the tile's candidate flags ``[block_kv]``.
2. ``S = Q K^T`` on wgmma (f32 accumulator; K read K-major through a transposed ref view), masked
   to ``-inf`` outside the middle candidates, scaled.
3. The tile's per-head max ``m_t`` and rescaled sum ``l_t = sum exp(S - m_t)``; the G real rows of
   ``S`` (f32) and ``m_t, l_t`` go back to HBM by TMA.

Blocks are independent (a GPU grid has no sequential axis), so the online log-sum-exp is finished
in XLA over the ``N / block_kv`` partials per head (``M = max m_t``, ``L = sum l_t exp(m_t - M)``).
The ragged tail (``N mod block_kv`` tokens) is scored in XLA rather than read out of bounds. The
vote ``vote[j] = sum_h exp(s_h[j] - M_h) / L_h`` is one fused XLA pass over the f32 scores
(``4 Hq N`` bytes, 1/16 of the bf16 K bytes at Hq=32, Hkv=8, d=128), and the exact top-k over the
votes is the plain-JAX radix select (:func:`pallas_kernels.topk_set`, ``"xla"``).

Checked in the Mosaic GPU interpreter (there step 2's ``Q K^T`` is a ``lax.dot_general`` on the
same SMEM contents, because the interpreter cannot run wgmma on a transposed ref), by its CUDA
lowering on a CPU-only machine, and compiled on a Hopper GPU by ``scripts/device_check.sh``; it
measured slower than ``xla`` there, so ``implementation=None`` keeps ``xla``
(``results/gpu/README.md``). f32 caches are refused on the device (``NotImplementedError``: wgmma
would multiply them as tf32).
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl

from pallas_kernels import _mgpu, _xla_math

M = _mgpu.WGMMA_M


def _score_kernel(
    q_ref: Any, k_ref: Any, ok_ref: Any,  # inputs (HBM)
    s_ref: Any, m_ref: Any, l_ref: Any,  # outputs (HBM)
    q_smem: Any, k_smem: Any, ok_smem: Any, s_smem: Any, m_smem: Any, l_smem: Any, bar: Any,
    *, scale: float, block_kv: int, g: int, interp: Any,
) -> None:  # fmt: skip
    from jax.experimental.pallas import mosaic_gpu as plgpu

    h = lax.axis_index("h")
    t = lax.axis_index("t")
    rows = pl.ds(t * block_kv, block_kv)
    plgpu.copy_gmem_to_smem(q_ref.at[h], q_smem, bar)
    plgpu.copy_gmem_to_smem(k_ref.at[rows, h], k_smem, bar)
    plgpu.copy_gmem_to_smem(ok_ref.at[rows], ok_smem, bar)
    plgpu.barrier_wait(bar)

    s = _mgpu.matmul(q_smem, k_smem, transpose_b=True, interpret=interp)  # [64, block_kv] f32
    ok = lax.broadcast_in_dim(_mgpu.load_vector(ok_smem, "col", interp), s.shape, [1])
    s = jnp.where(ok > 0, s * jnp.float32(scale), -jnp.inf)
    m = jnp.max(s, axis=1)
    m_safe = jnp.where(m == -jnp.inf, 0.0, m)  # a tile without candidates keeps l = 0
    s_smem[...] = s
    m_smem[...] = m
    l_smem[...] = jnp.sum(jnp.exp(s - lax.broadcast_in_dim(m_safe, s.shape, [0])), axis=1)
    plgpu.commit_smem()
    # Only the G real heads of the padded group go back (rows 0..G-1 are one contiguous window).
    plgpu.copy_smem_to_gmem(s_smem.at[pl.ds(0, g)], s_ref.at[h, pl.ds(0, g), rows])
    plgpu.copy_smem_to_gmem(m_smem, m_ref.at[h, t])
    plgpu.copy_smem_to_gmem(l_smem, l_ref.at[h, t])
    plgpu.wait_smem_to_gmem(0)


def default_block_kv(n: int, d: int) -> int:
    """K tiles of 64 tokens.

    The fastest of 64 / 128 / 256 (``results/gpu/README.md``): a block's SMEM (the 64-row query
    group, the K tile and the f32 ``[64, block_kv]`` scores) is ~49 KiB at 64, so 4 blocks share an
    SM and their TMA loads overlap each other's compute; at 256 (~145 KiB) one block per SM loads,
    then computes.
    """
    del n, d
    return 64


@functools.partial(
    jax.jit,
    static_argnames=("n_sink", "n_local", "scale", "gqa_mapping", "block_kv", "interpret"),
)
def soft_votes_mosaic_gpu(
    q: jax.Array,
    k: jax.Array,
    kv_len: jax.Array,
    *,
    n_sink: int,
    n_local: int,
    scale: float,
    gqa_mapping: str,
    block_kv: int,
    interpret: Any = False,
) -> jax.Array:
    """``[N]`` f32 soft votes (as :func:`soft_votes_reference`), scoring on the Mosaic GPU kernel."""
    hq, d = q.shape
    n, hkv, _ = k.shape
    g = hq // hkv
    interp = _mgpu.interpret_params(interpret)
    _mgpu.check_16bit_on_device(k.dtype, interp, "token_select")
    if g > M:
        raise NotImplementedError(f"mosaic_gpu: {g=} query heads per KV head exceeds {M}")
    if block_kv % 64:
        raise ValueError(f"mosaic_gpu needs block_kv a multiple of 64, got {block_kv=}")
    if n % 8 and not interp:
        # TMA tiles K's (N, d) dims by (8, swizzle) once the head index is squeezed out.
        raise NotImplementedError(f"mosaic_gpu: the cache length {n=} must be a multiple of 8")
    cand = _xla_math.middle_candidates(n, kv_len, n_sink=n_sink, n_local=n_local)
    qg = _xla_math.group_queries(q.astype(k.dtype), hkv, gqa_mapping)  # [Hkv, G, d]
    n_tiles = n // block_kv
    n_full = n_tiles * block_kv
    f32 = jnp.float32
    parts_s, parts_m, parts_l = [], [], []
    if n_tiles:
        s, m, l = _mgpu.kernel(
            functools.partial(_score_kernel, scale=scale, block_kv=block_kv, g=g, interp=interp),
            (
                jax.ShapeDtypeStruct((hkv, g, n_full), f32),
                jax.ShapeDtypeStruct((hkv, n_tiles, M), f32),
                jax.ShapeDtypeStruct((hkv, n_tiles, M), f32),
            ),
            scratch=[
                _mgpu.operand_smem((M, d), k.dtype),
                _mgpu.operand_smem((block_kv, d), k.dtype),
                _smem((block_kv,), f32),
                _smem((M, block_kv), f32),
                _smem((M,), f32),
                _smem((M,), f32),
                _barrier(3),
            ],
            grid=(hkv, n_tiles),
            grid_names=("h", "t"),
            interpret=interp,
        )(
            jnp.pad(qg, ((0, 0), (0, M - g), (0, 0))),
            k,  # [N, Hkv, d] as stored: TMA reads the strided [block_kv, d] window of head h
            cand[:n_full].astype(f32),
        )
        parts_s.append(s)
        parts_m.append(jnp.swapaxes(m[:, :, :g], 1, 2))  # [Hkv, G, n_tiles]
        parts_l.append(jnp.swapaxes(l[:, :, :g], 1, 2))
    if n_full < n:  # ragged tail (< block_kv tokens): scored in XLA, not read out of bounds
        kt = k[n_full:]
        st = jnp.einsum("kgd,nkd->kgn", qg, kt, preferred_element_type=f32) * f32(scale)
        st = jnp.where(cand[None, None, n_full:], st, -jnp.inf)
        mt = jnp.max(st, axis=-1, keepdims=True)
        mt_safe = jnp.where(mt == -jnp.inf, 0.0, mt)
        parts_s.append(st)
        parts_m.append(mt)
        parts_l.append(jnp.sum(jnp.exp(st - mt_safe), axis=-1, keepdims=True))
    s = _xla_math.ungroup_heads(jnp.concatenate(parts_s, -1), gqa_mapping)  # [Hq, N]
    m_t = _xla_math.ungroup_heads(jnp.concatenate(parts_m, -1), gqa_mapping)  # [Hq, tiles]
    l_t = _xla_math.ungroup_heads(jnp.concatenate(parts_l, -1), gqa_mapping)
    big_m = jnp.max(m_t, axis=1, keepdims=True)
    big_m = jnp.where(big_m == -jnp.inf, 0.0, big_m)
    big_l = jnp.sum(l_t * jnp.exp(m_t - big_m), axis=1, keepdims=True)
    return jnp.sum(jnp.exp(s - big_m) / jnp.where(big_l > 0, big_l, 1.0), axis=0)


def _smem(shape: tuple[int, ...], dtype: Any) -> Any:
    from jax.experimental.pallas import mosaic_gpu as plgpu

    return plgpu.SMEM(shape, dtype)


def _barrier(num_arrivals: int) -> Any:
    from jax.experimental.pallas import mosaic_gpu as plgpu

    return plgpu.Barrier(num_arrivals=num_arrivals)
