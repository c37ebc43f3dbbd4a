"""Exact row-wise top-k: radix select over order-preserving keys (Pallas) beside ``lax.top_k``."""

from pallas_kernels.topk.api import topk, topk_set
from pallas_kernels.topk.config import BlockSizes
from pallas_kernels.topk.reference import sortable_keys, topk_reference

__all__ = ["BlockSizes", "sortable_keys", "topk", "topk_reference", "topk_set"]
