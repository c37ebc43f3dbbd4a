"""Load a local Hugging Face Llama/Qwen2/Mistral folder (config.json + safetensors) into our decoder.

No network and no torch: tensors are read with ``safetensors``' NumPy API, one file at a time,
from ``model.safetensors`` or the shards listed in ``model.safetensors.index.json``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jax.numpy as jnp
import numpy as np

from jaxsel.models.config import DecoderConfig
from jaxsel.models.decoder import Params
from jaxsel.models.module import Decoder

_DTYPES = {
    "float32": jnp.float32,
    "float16": jnp.float16,
    "bfloat16": jnp.bfloat16,
    "fp32": jnp.float32,
    "fp16": jnp.float16,
    "bf16": jnp.bfloat16,
}


def _weight_files(folder: Path) -> dict[str, Path]:
    """Maps every tensor name to the file holding it; checks that every listed shard exists."""
    index = folder / "model.safetensors.index.json"
    single = folder / "model.safetensors"
    if index.exists():
        weight_map = json.loads(index.read_text())["weight_map"]
        files = {name: folder / f for name, f in weight_map.items()}
        missing = sorted({str(p.name) for p in files.values() if not p.exists()})
        if missing:
            raise FileNotFoundError(
                f"checkpoint {folder} is missing shard file(s) {missing} listed in {index.name}"
            )
        return files
    if single.exists():
        from safetensors import safe_open

        with safe_open(str(single), framework="np") as f:
            return {name: single for name in f.keys()}
    raise FileNotFoundError(
        f"no model.safetensors or model.safetensors.index.json in {folder} "
        "(only safetensors checkpoints are supported)"
    )


def _read_tensors(files: dict[str, Path], names: list[str]) -> dict[str, np.ndarray]:
    from safetensors import safe_open

    by_file: dict[Path, list[str]] = {}
    for n in names:
        by_file.setdefault(files[n], []).append(n)
    out = {}
    for path, ns in by_file.items():
        with safe_open(str(path), framework="np") as f:
            for n in ns:
                out[n] = f.get_tensor(n)
    return out


def hf_tensor_names(config: DecoderConfig) -> dict[str, tuple[tuple[str | int, ...], tuple]]:
    """HF tensor name -> (path in our parameter tree, HF shape)."""
    c = config
    D, F, V, d = c.hidden_size, c.intermediate_size, c.vocab_size, c.head_dim
    q_out, kv_out = c.num_heads * d, c.num_kv_heads * d
    names: dict[str, tuple[tuple[str | int, ...], tuple]] = {
        "model.embed_tokens.weight": (("embed",), (V, D)),
        "model.norm.weight": (("final_norm",), (D,)),
    }
    if not c.tie_word_embeddings:
        names["lm_head.weight"] = (("lm_head",), (V, D))
    for i in range(c.num_layers):
        p = f"model.layers.{i}."
        layer = {
            "input_layernorm.weight": ("attn_norm", (D,)),
            "post_attention_layernorm.weight": ("mlp_norm", (D,)),
            "self_attn.q_proj.weight": ("wq", (q_out, D)),
            "self_attn.k_proj.weight": ("wk", (kv_out, D)),
            "self_attn.v_proj.weight": ("wv", (kv_out, D)),
            "self_attn.o_proj.weight": ("wo", (D, q_out)),
            "mlp.gate_proj.weight": ("w_gate", (F, D)),
            "mlp.up_proj.weight": ("w_up", (F, D)),
            "mlp.down_proj.weight": ("w_down", (D, F)),
        }
        if c.qkv_bias:
            layer.update(
                {
                    "self_attn.q_proj.bias": ("bq", (q_out,)),
                    "self_attn.k_proj.bias": ("bk", (kv_out,)),
                    "self_attn.v_proj.bias": ("bv", (kv_out,)),
                }
            )
        if c.o_bias:
            layer["self_attn.o_proj.bias"] = ("bo", (D,))
        if c.mlp_bias:
            layer.update(
                {
                    "mlp.gate_proj.bias": ("b_gate", (F,)),
                    "mlp.up_proj.bias": ("b_up", (F,)),
                    "mlp.down_proj.bias": ("b_down", (D,)),
                }
            )
        for suffix, (ours, shape) in layer.items():
            names[p + suffix] = (("layers", i, ours), shape)
    return names


def _to_ours(key: str, a: np.ndarray, config: DecoderConfig) -> np.ndarray:
    """Converts one HF tensor (PyTorch [out, in] layout) to our layout."""
    c = config
    D, d = c.hidden_size, c.head_dim
    if key in ("wq", "wk", "wv"):
        heads = c.num_heads if key == "wq" else c.num_kv_heads
        return a.T.reshape(D, heads, d)
    if key == "wo":
        return a.T.reshape(c.num_heads, d, D)
    if key in ("bq", "bk", "bv"):
        return a.reshape(-1, d)
    if key in ("w_gate", "w_up", "w_down", "lm_head"):
        return a.T
    return a


def convert_hf_state(
    tensors: dict[str, np.ndarray], config: DecoderConfig, *, dtype: Any = jnp.float32
) -> Params:
    """HF state dict (NumPy) -> our parameter pytree in ``dtype``.

    Raises:
      ValueError: naming every missing tensor, or the first tensor with an unexpected shape.
    """
    expected = hf_tensor_names(config)
    missing = [n for n in expected if n not in tensors]
    if missing:
        more = f" (and {len(missing) - 5} more)" if len(missing) > 5 else ""
        raise ValueError(f"checkpoint is missing tensor(s) {missing[:5]}{more}")
    params: dict[str, Any] = {"layers": [{} for _ in range(config.num_layers)]}
    for name, (path, shape) in expected.items():
        a = tensors[name]
        if tuple(a.shape) != shape:
            raise ValueError(
                f"tensor {name!r} has shape {tuple(a.shape)}, expected {shape} from config.json"
            )
        arr = jnp.asarray(_to_ours(path[-1], np.asarray(a), config), dtype=dtype)
        if path[0] == "layers":
            params["layers"][path[1]][path[2]] = arr
        else:
            params[path[0]] = arr
    return params


def load_hf_checkpoint(path: str | Path, *, dtype: Any = None) -> Decoder:
    """Loads a local Hugging Face model folder into a :class:`~jaxsel.models.module.Decoder`.

    Args:
      path: folder with ``config.json`` and ``model.safetensors`` (or a sharded
        ``model.safetensors.index.json`` with its shards).
      dtype: parameter dtype (e.g. ``jnp.bfloat16``); ``None`` keeps the checkpoint's ``dtype`` /
        ``torch_dtype`` from config.json (float32 when absent).

    Returns:
      ``m`` with ``m(tokens [B, T] int32) -> logits [B, T, vocab]`` (dense attention) and
      ``m.generate(...)`` for the cached, policy-switchable decode loop.

    Raises:
      FileNotFoundError: no config.json, no safetensors file, or a shard listed in the index missing.
      ValueError: unsupported architecture, missing tensors, or a tensor with the wrong shape.
    """
    folder = Path(path)
    cfg_file = folder / "config.json"
    if not cfg_file.exists():
        raise FileNotFoundError(f"no config.json in {folder}")
    raw = json.loads(cfg_file.read_text())
    config = DecoderConfig.from_hf_dict(raw)
    if dtype is None:
        name = str(raw.get("dtype") or raw.get("torch_dtype") or "float32")
        dtype = _DTYPES.get(name, jnp.float32)
    files = _weight_files(folder)
    wanted = list(hf_tensor_names(config))
    missing = [n for n in wanted if n not in files]
    if missing:
        more = f" (and {len(missing) - 5} more)" if len(missing) > 5 else ""
        raise ValueError(f"checkpoint {folder} is missing tensor(s) {missing[:5]}{more}")
    tensors = _read_tensors(files, wanted)
    return Decoder(config, params=convert_hf_state(tensors, config, dtype=dtype))
