"""Pallas kernels for the TokenSelect hot path, each beside a plain-JAX reference.

One folder per op, each with ``api.py`` (one entry point dispatching over implementations),
``reference.py``, ``config.py`` (frozen ``BlockSizes``) and one module per backend:

- :func:`topk` / :func:`topk_set`: exact row-wise top-k by radix select (``topk/``);
- :func:`token_select`: TokenSelect's scoring, soft vote and top-k (``token_select/``);
- :func:`sparse_decode_attention`: flash-decoding over the selected tokens (``sparse_decode/``).

Implementations: ``"xla"`` everywhere, ``"xla_radix"`` (topk), ``"mosaic_tpu"`` (``pl.pallas_call``;
on CPU with ``interpret=True`` or ``interpret="tpu"``), ``"mosaic_gpu"`` (Hopper, ``plgpu.kernel``;
``sparse_decode_attention`` and ``token_select``'s scoring; on CPU with ``interpret=True`` or
``"gpu"``, the Mosaic GPU interpreter). This package never imports :mod:`jaxsel`.
"""

from pallas_kernels._dispatch import available_implementations, default_backend_kind
from pallas_kernels.sparse_decode import sparse_decode_attention, sparse_decode_attention_reference
from pallas_kernels.token_select import token_select, token_select_reference
from pallas_kernels.topk import topk, topk_reference, topk_set

__all__ = [
    "available_implementations",
    "default_backend_kind",
    "sparse_decode_attention",
    "sparse_decode_attention_reference",
    "token_select",
    "token_select_reference",
    "topk",
    "topk_reference",
    "topk_set",
]
