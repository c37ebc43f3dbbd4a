"""Tile sizes of the top-k kernels."""

from __future__ import annotations

import dataclasses

LANES = 128  # The row is laid out as [rows, 128] so that every tile is lane-dense on TPU.


@dataclasses.dataclass(frozen=True)
class BlockSizes:
    """Tile sizes of the radix-select top-k kernel.

    Attributes:
      block_rows: rows of 128 elements scanned per loop step (a ``[block_rows, 128]`` tile); a
        multiple of 8 (the TPU sublane count).
      radix_bits: bits decided per radix pass; 32 / radix_bits passes find the k-th key, each one
        counting ``2**radix_bits`` candidate thresholds (a cumulative per-digit histogram).
    """

    block_rows: int = 64
    radix_bits: int = 4

    def __post_init__(self) -> None:
        if self.block_rows <= 0 or self.block_rows % 8:
            raise ValueError(f"block_rows must be a positive multiple of 8, got {self.block_rows=}")
        if self.radix_bits not in (1, 2, 4, 8):
            raise ValueError(f"radix_bits must be one of 1, 2, 4, 8, got {self.radix_bits=}")

    @classmethod
    def get_default(cls, n: int, k: int) -> BlockSizes:
        """Defaults for a row of ``n`` elements: the whole row in one tile when it is small."""
        del k
        rows = -(-n // LANES)
        return cls(block_rows=min(64, max(8, -(-rows // 8) * 8)), radix_bits=4)

    def padded_length(self, n: int) -> int:
        """``n`` rounded up to a whole number of ``[block_rows, 128]`` tiles."""
        tile = self.block_rows * LANES
        return -(-n // tile) * tile
