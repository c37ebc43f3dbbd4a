"""TokenSelect KV selection: fused GQA scoring, per-head online log-sum-exp, soft vote, exact top-k."""

from pallas_kernels.token_select.api import token_select
from pallas_kernels.token_select.config import BlockSizes
from pallas_kernels.token_select.reference import soft_votes_reference, token_select_reference

__all__ = ["BlockSizes", "soft_votes_reference", "token_select", "token_select_reference"]
