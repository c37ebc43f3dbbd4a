"""Tile sizes of the sparse decode attention kernel."""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class BlockSizes:
    """Tile sizes of :func:`pallas_kernels.sparse_decode_attention`.

    Attributes:
      block_b: selected tokens per split (a multiple of 8). Each split produces a partial max, sum
        and unnormalised output per head; a combine step merges them (flash-decoding), so a decode
        step runs ``Hkv * ceil(B / block_b)`` programs in parallel.
    """

    block_b: int = 256

    def __post_init__(self) -> None:
        if self.block_b <= 0 or self.block_b % 8:
            raise ValueError(f"block_b must be a positive multiple of 8, got {self.block_b=}")

    @classmethod
    def get_default(cls, *, b: int, hkv: int) -> BlockSizes:
        """About 128+ programs for a 2688-token budget and 8 KV heads; never longer than needed."""
        del hkv
        return cls(block_b=min(256, max(8, -(-b // 8) * 8)))
