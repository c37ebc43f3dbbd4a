"""Trace-time argument checks: :mod:`pallas_kernels._checks`, the one implementation (the kernels
share it), under the name the attention modules import."""

from pallas_kernels._checks import (
    GQA_MAPPINGS,
    check_budget,
    check_gqa_mapping,
    check_indices,
    check_kv,
    check_kv_len,
    check_positive_int,
    check_qk,
    check_rank,
    check_select,
    resolve_scale,
)

__all__ = [
    "GQA_MAPPINGS",
    "check_budget",
    "check_gqa_mapping",
    "check_indices",
    "check_kv",
    "check_kv_len",
    "check_positive_int",
    "check_qk",
    "check_rank",
    "check_select",
    "resolve_scale",
]
