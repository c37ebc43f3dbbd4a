"""Tile sizes of the TokenSelect scoring / voting kernels."""

from __future__ import annotations

import dataclasses

from pallas_kernels.topk.config import BlockSizes as TopkBlockSizes


@dataclasses.dataclass(frozen=True)
class BlockSizes:
    """Tile sizes of :func:`pallas_kernels.token_select`.

    Attributes:
      block_kv: cached tokens per K tile of the scoring pass (a multiple of 128). One tile
        ``[block_kv, d]`` of one KV head is read once and scored against all G query heads of its
        group.
      block_vote: tokens per tile of the voting pass (a multiple of 128).
      topk: tile sizes of the top-k over the votes (``None``: its shape-based default).
    """

    block_kv: int = 512
    block_vote: int = 2048
    topk: TopkBlockSizes | None = None

    def __post_init__(self) -> None:
        for name in ("block_kv", "block_vote"):
            val = getattr(self, name)
            if val <= 0 or val % 128:
                raise ValueError(f"{name} must be a positive multiple of 128, got {name}={val}")

    @classmethod
    def get_default(cls, *, n: int, hq: int, hkv: int, d: int) -> BlockSizes:
        """Tiles no longer than the cache; K tiles of ~128-256 KiB of bf16 keys."""
        del hq, hkv
        cap = -(-n // 128) * 128
        block_kv = min(cap, 512 if d <= 128 else 256)
        return cls(block_kv=block_kv, block_vote=min(cap, 2048), topk=None)
