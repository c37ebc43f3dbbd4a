"""Mosaic GPU helpers shared by the ``mosaic_gpu`` backends (Hopper, ``plgpu.kernel``).

What differs between jax 0.10.2 and 0.12 here, and between the device and the GPU interpreter:

- ``plgpu.kernel`` takes ``out_shape=`` / ``scratch_shapes=`` in 0.10.2 and ``out_type=`` /
  ``scratch_types=`` in 0.12 (the old names are gone): :func:`kernel` passes whichever exists.
- ``plgpu.load`` takes an index tuple in 0.10.2 and none in 0.12.
- Register layouts (``plgpu.layout_cast``, ``plgpu.load(..., layout=)``) are required by the device
  lowering (its layout inference cannot always guess them) but are not implemented by the CPU
  interpreter, which ignores layouts anyway. :func:`layout` and :func:`load_vector` apply them only
  when compiling for the device; the values are identical either way.
- The interpreter cannot run ``wgmma`` on a transposed ref (``plgpu.transpose_ref`` /
  ``ref.transpose``): :func:`matmul` multiplies those with ``lax.dot_general`` when interpreted.
  Where the layout allows, kernels give wgmma ``A [M, K]`` and ``B [K, N]`` directly (B
  "MN-major", which Hopper reads natively for 16-bit types), so the interpreter runs the wgmma.
"""

from __future__ import annotations

import functools
import inspect
from typing import Any

import jax
import jax.numpy as jnp

#: wgmma's M: a warpgroup multiplies 64-row tiles of A. Query groups are padded to this.
WGMMA_M = 64


@functools.cache
def _kernel_param_names() -> frozenset[str]:
    from jax.experimental.pallas import mosaic_gpu as plgpu

    return frozenset(inspect.signature(plgpu.kernel).parameters)


def kernel(
    body: Any,
    out_shape: Any,
    *,
    scratch: Any,
    grid: tuple[int, ...],
    grid_names: tuple[str, ...],
    interpret: Any,
) -> Any:
    """``plgpu.kernel`` across jax versions; ``interpret`` a params object or ``False``."""
    from jax.experimental.pallas import mosaic_gpu as plgpu

    names = _kernel_param_names()
    kw: dict[str, Any] = {
        ("out_type" if "out_type" in names else "out_shape"): out_shape,
        ("scratch_types" if "scratch_types" in names else "scratch_shapes"): scratch,
    }
    if interpret:
        kw["interpret"] = interpret
    return plgpu.kernel(body, grid=grid, grid_names=grid_names, **kw)


def interpret_params(interpret: Any) -> Any:
    """Our ``interpret`` argument -> ``False`` or Mosaic GPU interpret params.

    ``True`` and ``"gpu"`` both mean the Mosaic GPU interpreter (the generic HLO interpreter cannot
    run ``plgpu.kernel`` bodies: barriers, TMA copies and wgmma need the simulated memory spaces).
    """
    from pallas_kernels import _compat

    if interpret is False or interpret is None:
        return False
    if interpret is True or interpret == "gpu":
        return _compat.gpu_interpret_params()
    if interpret == "tpu":
        raise ValueError("interpret='tpu' cannot run a mosaic_gpu kernel; use True or 'gpu'")
    return interpret


def smem_transforms(shape: tuple[int, ...], dtype: Any) -> tuple[Any, ...]:
    """Tiling + swizzle for an SMEM wgmma operand whose minor dim is ``shape[-1]``.

    The widest swizzle (128, 64 or 32 bytes) that divides a row; tiles are ``(8, swizzle / itemsize)``.
    """
    from jax.experimental.pallas import mosaic_gpu as plgpu

    itemsize = jnp.dtype(dtype).itemsize
    row = shape[-1] * itemsize
    for swizzle in (128, 64, 32):
        if row % swizzle == 0:
            return (
                plgpu.TilingTransform((8, swizzle // itemsize)),
                plgpu.SwizzleTransform(swizzle),
            )
    raise ValueError(f"minor dim {shape[-1]} x {itemsize} bytes is not a multiple of 32 bytes")


def operand_smem(shape: tuple[int, ...], dtype: Any) -> Any:
    """An SMEM scratch ref laid out for wgmma."""
    from jax.experimental.pallas import mosaic_gpu as plgpu

    return plgpu.SMEM(shape, dtype, transforms=smem_transforms(shape, dtype))


def layout(x: jax.Array, which: str, interpret: Any) -> jax.Array:
    """``plgpu.layout_cast(x, ...)`` on the device; identity in the interpreter.

    ``which``: ``"wgmma"`` (an ``[m, n]`` accumulator-shaped array), ``"row"`` (a ``[m]`` vector
    indexed like the rows of one, i.e. a reduction over axis 1) or ``"col"`` (over axis 0).
    """
    if interpret:
        return x
    from jax.experimental.pallas import mosaic_gpu as plgpu

    return plgpu.layout_cast(x, _layout(which))


def load_vector(ref: Any, which: str, interpret: Any) -> jax.Array:
    """Reads a 1-D SMEM ref as a ``"row"`` / ``"col"`` vector (see :func:`layout`)."""
    if interpret:
        return ref[...]
    from jax.experimental.pallas import mosaic_gpu as plgpu

    if len(inspect.signature(plgpu.load).parameters) > 3:  # 0.10.2: load(src, idx, *, layout, ...)
        return plgpu.load(ref, (), layout=_layout(which))
    return plgpu.load(ref, layout=_layout(which))  # 0.12: load(src, *, layout, optimized)


def _layout(which: str) -> Any:
    from jax.experimental.pallas import mosaic_gpu as plgpu

    wg = plgpu.Layout.WGMMA
    return {"wgmma": wg, "row": wg.reduce(1), "col": wg.reduce(0)}[which]


def check_16bit_on_device(dtype: Any, interpret: Any, op: str) -> None:
    """Hopper's wgmma multiplies f32 operands as tf32 (10-bit mantissa): not the reference's f32.

    On the device the kernels therefore take f16 / bf16 only (``NotImplementedError``, so
    ``implementation=None`` falls back to XLA); the interpreter multiplies exactly and runs f32 too.
    """
    if not interpret and jnp.dtype(dtype) not in (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16)):
        raise NotImplementedError(
            f"{op}: mosaic_gpu multiplies on wgmma, which takes f32 as tf32; got {jnp.dtype(dtype)} "
            "(use bf16/f16 caches, or implementation='xla')"
        )


def matmul(a_smem: Any, b_smem: Any, *, transpose_b: bool, interpret: Any) -> jax.Array:
    """``a @ b`` (or ``a @ b.T``) of two SMEM operands on wgmma, as an f32 ``[M, N]`` array.

    On the device: ``plgpu.wgmma`` into a scoped accumulator; ``transpose_b`` reads ``b`` through a
    transposed ref view (K-major B, wgmma's native layout). The CPU interpreter cannot run
    wgmma on a transposed ref, so there (and only there) the same SMEM contents are multiplied with
    ``lax.dot_general`` (exact f32 accumulation, as the reference).
    """
    from jax import lax
    from jax.experimental import pallas as pl
    from jax.experimental.pallas import mosaic_gpu as plgpu

    m = a_smem.shape[0]
    n = b_smem.shape[0] if transpose_b else b_smem.shape[1]
    if interpret and transpose_b:
        dims = (((1,), (1,)), ((), ()))
        return lax.dot_general(a_smem[...], b_smem[...], dims, preferred_element_type=jnp.float32)

    def body(acc: Any) -> jax.Array:
        # ``ref.transpose`` is what ``plgpu.transpose_ref`` does in 0.10.2 (deprecated in 0.12).
        b = b_smem.transpose((1, 0)) if transpose_b else b_smem
        plgpu.wgmma(acc, a_smem, b)
        return acc[...]

    return pl.run_scoped(body, plgpu.ACC((m, n), jnp.float32))


def load_tile(ref: Any, interpret: Any) -> jax.Array:
    """Reads a ``[m, n]`` SMEM ref (``m % 64 == 0``) into registers in the wgmma layout."""
    if interpret:
        return ref[...]
    from jax.experimental.pallas import mosaic_gpu as plgpu

    if len(inspect.signature(plgpu.load).parameters) > 3:
        return plgpu.load(ref, (), layout=_layout("wgmma"))
    return plgpu.load(ref, layout=_layout("wgmma"))


def require_gpu(interpret: Any, op: str) -> None:
    """Compiling a Mosaic GPU kernel needs a GPU: elsewhere ``NotImplementedError`` (so dispatch
    falls back to XLA) unless the kernel is interpreted."""
    if not interpret and jax.default_backend() != "gpu":
        raise NotImplementedError(
            f"{op}: mosaic_gpu compiles for a GPU, the default backend is "
            f"{jax.default_backend()!r} (pass interpret=True to run it interpreted)"
        )
