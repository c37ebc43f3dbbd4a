"""Decode attention over a selected token set, split over the set (flash-decoding)."""

from pallas_kernels.sparse_decode.api import sparse_decode_attention
from pallas_kernels.sparse_decode.config import BlockSizes
from pallas_kernels.sparse_decode.reference import sparse_decode_attention_reference

__all__ = ["BlockSizes", "sparse_decode_attention", "sparse_decode_attention_reference"]
