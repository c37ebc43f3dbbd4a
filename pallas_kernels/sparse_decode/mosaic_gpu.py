"""Flash-decoding over a selected token set as a Mosaic GPU kernel (Hopper, ``plgpu.kernel``).

Same algorithm as :mod:`pallas_kernels.sparse_decode.mosaic_tpu`: the selected rows are gathered
once in XLA, then grid ``(Hkv, B / block_b)`` (named axes ``"h"``, ``"s"``), one warpgroup per
block. Each block scores one split of the set against the G query heads of one KV head and writes
a partial ``(max m_s, sum l_s, unnormalised output o_s)``; :func:`combine_splits` merges them.

Per block: four TMA copies into swizzled SMEM on one barrier (query group ``[64, d]`` with the G
heads zero-padded to wgmma's M = 64, gathered keys transposed ``[d, block_b]``, values
``[block_b, d]``, validity ``[block_b]``), then ``S = Q K^T`` on wgmma (f32 accumulator), masked
softmax statistics on registers, ``P`` (cast to v's dtype) stored to SMEM, ``O = P V`` on wgmma,
and TMA copies of ``o, m, l`` back to HBM. The gather writes keys already transposed, so no
transposed ref is needed (the CPU interpreter cannot run wgmma on one).

Checked in the Mosaic GPU interpreter (``interpret=True`` / ``"gpu"``), by lowering for CUDA
(``lowering_platforms=("cuda",)``, which runs Mosaic GPU layout inference) on a CPU-only machine,
and compiled on a Hopper GPU against a float64 NumPy attention (``P`` is rounded to bf16 before
``P V``, so it differs from ``xla`` by about bf16's precision). It measured slower than ``xla``
there, so ``implementation=None`` keeps ``xla`` (``results/gpu/README.md``). On the device, f32
caches are refused (``NotImplementedError``: wgmma would multiply them as tf32); the interpreter
runs f32 exactly.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl

from pallas_kernels import _mgpu, _xla_math
from pallas_kernels.sparse_decode.config import BlockSizes
from pallas_kernels.sparse_decode.mosaic_tpu import combine_splits

M = _mgpu.WGMMA_M


def _split_kernel(
    q_ref: Any, kt_ref: Any, v_ref: Any, ok_ref: Any,  # inputs (HBM)
    o_ref: Any, m_ref: Any, l_ref: Any,  # outputs (HBM)
    q_smem: Any, kt_smem: Any, v_smem: Any, ok_smem: Any, p_smem: Any,
    o_smem: Any, m_smem: Any, l_smem: Any, bar: Any,
    *, scale: float, block_b: int, interp: Any,
) -> None:  # fmt: skip
    from jax.experimental.pallas import mosaic_gpu as plgpu

    h = lax.axis_index("h")
    s = lax.axis_index("s")
    d = q_smem.shape[1]
    cols = pl.ds(s * block_b, block_b)
    plgpu.copy_gmem_to_smem(q_ref.at[h], q_smem, bar)
    plgpu.copy_gmem_to_smem(kt_ref.at[h, pl.ds(0, d), cols], kt_smem, bar)
    plgpu.copy_gmem_to_smem(v_ref.at[h, cols], v_smem, bar)
    plgpu.copy_gmem_to_smem(ok_ref.at[cols], ok_smem, bar)
    plgpu.barrier_wait(bar)

    def qk(acc: Any) -> jax.Array:
        plgpu.wgmma(acc, q_smem, kt_smem)
        return acc[...]

    sc = pl.run_scoped(qk, plgpu.ACC((M, block_b), jnp.float32))  # [64, block_b]
    ok = _mgpu.load_vector(ok_smem, "col", interp)  # [block_b] 1.0 / 0.0
    ok = lax.broadcast_in_dim(ok, sc.shape, [1])
    sc = jnp.where(ok > 0, sc * jnp.float32(scale), -jnp.inf)
    m = jnp.max(sc, axis=1)
    m_safe = jnp.where(m == -jnp.inf, 0.0, m)  # an all-invalid split keeps l = 0, o = 0
    e = jnp.exp(sc - lax.broadcast_in_dim(m_safe, sc.shape, [0]))
    m_smem[...] = m
    l_smem[...] = jnp.sum(e, axis=1)
    p_smem[...] = e.astype(p_smem.dtype)
    plgpu.commit_smem()  # P must be visible to the async proxy before wgmma reads it

    def pv(acc: Any) -> jax.Array:
        plgpu.wgmma(acc, p_smem, v_smem)
        return acc[...]

    o_smem[...] = pl.run_scoped(pv, plgpu.ACC((M, d), jnp.float32))
    plgpu.commit_smem()
    plgpu.copy_smem_to_gmem(o_smem, o_ref.at[h, s])
    plgpu.copy_smem_to_gmem(m_smem, m_ref.at[h, s])
    plgpu.copy_smem_to_gmem(l_smem, l_ref.at[h, s])
    plgpu.wait_smem_to_gmem(0)


def default_block_sizes(b: int, d: int = 128) -> BlockSizes:
    """Splits of 64..256 tokens (wgmma's N and the swizzled K tile need multiples of 64); 128 for
    d > 128 so that K, V, P and O tiles stay within Hopper's 227 KiB of SMEM per block."""
    cap = 256 if d <= 128 else 128
    return BlockSizes(block_b=min(cap, max(64, -(-b // 64) * 64)))


@functools.partial(jax.jit, static_argnames=("scale", "gqa_mapping", "block_sizes", "interpret"))
def sparse_decode_mosaic_gpu(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    indices: jax.Array,
    valid: jax.Array,
    *,
    scale: float,
    gqa_mapping: str,
    block_sizes: BlockSizes,
    interpret: Any = False,
) -> jax.Array:
    """``[Hq, d]`` attention over the valid gathered tokens (see module docstring)."""
    hq, d = q.shape
    _, hkv, _ = k.shape
    g = hq // hkv
    interp = _mgpu.interpret_params(interpret)
    _mgpu.check_16bit_on_device(k.dtype, interp, "sparse_decode_attention")
    if g > M:
        raise NotImplementedError(f"mosaic_gpu: {g=} query heads per KV head exceeds {M}")
    if k.dtype != v.dtype:
        raise NotImplementedError(f"mosaic_gpu: wgmma needs {k.dtype=} == {v.dtype=}")
    bb = block_sizes.block_b
    if bb % 64:
        raise ValueError(f"mosaic_gpu needs block_b a multiple of 64, got {bb=}")
    b = indices.shape[0]
    b_pad = pl.cdiv(b, bb) * bb
    n_split = b_pad // bb
    pad = (0, b_pad - b)
    idx = jnp.pad(indices.astype(jnp.int32), pad)
    ok = jnp.pad(valid.astype(bool), pad)
    kt = jnp.transpose(k[idx], (1, 2, 0))  # [Hkv, d, b_pad]: one gather, written transposed
    # Zero invalid values: they may be padding slots holding anything, and 0 * NaN = NaN.
    vg = jnp.where(ok[:, None, None], v[idx], jnp.zeros((), v.dtype)).transpose(1, 0, 2)
    qg = _xla_math.group_queries(q.astype(k.dtype), hkv, gqa_mapping)  # [Hkv, G, d]
    qg = jnp.pad(qg, ((0, 0), (0, M - g), (0, 0)))  # wgmma's M = 64 rows; extra rows are zeros
    f32 = jnp.float32
    o, m, l = _mgpu.kernel(
        functools.partial(_split_kernel, scale=scale, block_b=bb, interp=interp),
        (
            jax.ShapeDtypeStruct((hkv, n_split, M, d), f32),
            jax.ShapeDtypeStruct((hkv, n_split, M), f32),
            jax.ShapeDtypeStruct((hkv, n_split, M), f32),
        ),
        scratch=[
            _mgpu.operand_smem((M, d), k.dtype),
            _mgpu.operand_smem((d, bb), k.dtype),
            _mgpu.operand_smem((bb, d), v.dtype),
            _smem((bb,), f32),
            _mgpu.operand_smem((M, bb), v.dtype),
            _smem((M, d), f32),
            _smem((M,), f32),
            _smem((M,), f32),
            _barrier(4),
        ],
        grid=(hkv, n_split),
        grid_names=("h", "s"),
        interpret=interp,
    )(qg, kt, vg, ok.astype(f32))
    out = combine_splits(m[:, :, :g, None], l[:, :, :g, None], o[:, :, :g])  # [Hkv, G, d]
    return _xla_math.ungroup_heads(out, gqa_mapping).astype(jnp.result_type(q.dtype, v.dtype))


def _smem(shape: tuple[int, ...], dtype: Any) -> Any:
    from jax.experimental.pallas import mosaic_gpu as plgpu

    return plgpu.SMEM(shape, dtype)


def _barrier(num_arrivals: int) -> Any:
    from jax.experimental.pallas import mosaic_gpu as plgpu

    return plgpu.Barrier(num_arrivals=num_arrivals)
