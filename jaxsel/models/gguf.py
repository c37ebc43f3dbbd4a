"""Load a llama-architecture GGUF file (llama.cpp's format) into our decoder.

Format (ggml ``docs/gguf.md``, GGUF v2/v3, little-endian): magic ``GGUF``, version, tensor and
key/value counts, typed metadata (``general.architecture``, ``llama.block_count``, ...,
``tokenizer.ggml.*``), tensor infos (name, dims in ggml order = the reverse of the NumPy shape, ggml
type, offset) and the aligned data section. The file is memory-mapped with ``gguf.GGUFReader`` and
each tensor dequantized with ``gguf.quants.dequantize`` (gguf-py, llama.cpp's own Python package)
into the Hugging Face ``[out, in]`` layout, then mapped to our layout with the safetensors loader's
conventions (:mod:`jaxsel.models.hf`).

llama.cpp's ``convert_hf_to_gguf.py`` permutes the rows of ``attn_q``/``attn_k`` (weights and
biases) for llama so that its RoPE rotates adjacent pairs: ``w.reshape(n, 2, rows // n // 2, *rest)
.swapaxes(1, 2)`` with ``n`` = heads for q and kv heads for k. :func:`unpermute_qk` undoes it, giving
back the rotate-half layout our RoPE (and transformers') expects.

Loading streams tensor by tensor (dequantize one to float32, convert to the target dtype, place it,
drop the float32 copy), so host memory peaks near the dequantized model plus one tensor.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import jax.numpy as jnp
import numpy as np

from jaxsel.models.config import DecoderConfig, RopeScaling
from jaxsel.models.hf import _to_ours, hf_tensor_names
from jaxsel.models.module import Decoder

GGUF_MAGIC = b"GGUF"

#: ggml types we dequantize: plain floats, the legacy 4/8-bit block quants and the K-quants.
SUPPORTED_TYPES = (
    "F32",
    "F16",
    "BF16",
    "Q4_0",
    "Q4_1",
    "Q8_0",
    "Q2_K",
    "Q3_K",
    "Q4_K",
    "Q5_K",
    "Q6_K",
)

# GGUF tensor name suffix (per block) -> Hugging Face name suffix (per layer).
_LAYER_NAMES = {
    "attn_norm.weight": "input_layernorm.weight",
    "ffn_norm.weight": "post_attention_layernorm.weight",
    "attn_q.weight": "self_attn.q_proj.weight",
    "attn_k.weight": "self_attn.k_proj.weight",
    "attn_v.weight": "self_attn.v_proj.weight",
    "attn_output.weight": "self_attn.o_proj.weight",
    "attn_q.bias": "self_attn.q_proj.bias",
    "attn_k.bias": "self_attn.k_proj.bias",
    "attn_v.bias": "self_attn.v_proj.bias",
    "attn_output.bias": "self_attn.o_proj.bias",
    "ffn_gate.weight": "mlp.gate_proj.weight",
    "ffn_up.weight": "mlp.up_proj.weight",
    "ffn_down.weight": "mlp.down_proj.weight",
    "ffn_gate.bias": "mlp.gate_proj.bias",
    "ffn_up.bias": "mlp.up_proj.bias",
    "ffn_down.bias": "mlp.down_proj.bias",
}
_GLOBAL_NAMES = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}


def _import_gguf() -> Any:
    try:
        import gguf
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError(
            "reading GGUF files needs the `gguf` package: pip install 'jaxsel[llm]'"
        ) from e
    return gguf


def open_gguf(path: str | os.PathLike) -> Any:
    """Memory-maps a GGUF file with ``gguf.GGUFReader`` after checking it exists and is GGUF.

    Raises:
      FileNotFoundError: no such file.
      ValueError: wrong magic (not GGUF), big-endian, or a header/tensor table that does not fit
        the file (truncated or corrupt), each naming the file.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no GGUF file at {path}")
    with open(path, "rb") as f:
        magic = f.read(4)
    if magic != GGUF_MAGIC:
        raise ValueError(f"{path} is not a GGUF file: magic is {magic!r}, expected {GGUF_MAGIC!r}")
    gguf = _import_gguf()
    try:
        reader = gguf.GGUFReader(str(path))
    except (ValueError, IndexError, KeyError, TypeError, OverflowError) as e:
        raise ValueError(
            f"{path} ({path.stat().st_size} bytes) could not be read as GGUF, truncated or "
            f"corrupt: {e}"
        ) from e
    if getattr(reader, "byte_order", "=") == "S":
        raise ValueError(f"{path} is a big-endian GGUF file; only little-endian is supported")
    return reader


def field_value(reader: Any, key: str, default: Any = None) -> Any:
    """The decoded value of metadata ``key`` (str, int, float, bool or list), or ``default``.

    Decodes from the reader's raw parts (strings are UTF-8; arrays list their elements), the same
    rule as ``ReaderField.contents()`` of newer gguf-py releases.
    """
    field = reader.fields.get(key)
    if field is None:
        return default
    gguf = _import_gguf()
    types = field.types
    if not types:
        return default
    if types[0] == gguf.GGUFValueType.ARRAY:
        if types[-1] == gguf.GGUFValueType.STRING:
            return [bytes(field.parts[i]).decode("utf-8") for i in field.data]
        return [v for i in field.data for v in field.parts[i].tolist()]
    if types[0] == gguf.GGUFValueType.STRING:
        return bytes(field.parts[-1]).decode("utf-8")
    return field.parts[-1].tolist()[0]


def _require(reader: Any, key: str, path: Path) -> Any:
    value = field_value(reader, key)
    if value is None:
        raise ValueError(f"{path} has no metadata key {key!r}")
    return value


def config_from_gguf(reader: Any, path: str | os.PathLike = "<gguf>") -> DecoderConfig:
    """Builds a :class:`DecoderConfig` from the metadata of a ``llama`` GGUF file.

    Keys: ``{arch}.block_count``, ``.embedding_length``, ``.feed_forward_length``,
    ``.attention.head_count``, ``.attention.head_count_kv``, ``.attention.key_length`` (head dim,
    optional), ``.rope.freq_base``, ``.rope.scaling.type``/``.factor`` (or the older
    ``.rope.scale_linear``), ``.attention.layer_norm_rms_epsilon``, ``.context_length``; the vocabulary
    size is the length of ``tokenizer.ggml.tokens``; embeddings are tied when ``output.weight`` is
    absent; q/k/v/o and MLP biases when the block-0 bias tensors are present.

    Raises:
      ValueError: an architecture other than ``llama``, a missing key, partial rotary embeddings,
        or a RoPE scaling type other than none/linear (e.g. yarn, or Llama 3.1's per-frequency
        ``rope_freqs.weight`` factors), naming the file and the value.
    """
    path = Path(path)
    arch = field_value(reader, "general.architecture")
    if arch != "llama":
        raise ValueError(
            f"{path}: unsupported GGUF architecture general.architecture={arch!r}; supported: "
            "'llama' (Llama/Mistral/SmolLM-style decoders)"
        )
    names = {t.name for t in reader.tensors}
    if "rope_freqs.weight" in names:
        raise ValueError(
            f"{path}: tensor 'rope_freqs.weight' holds per-frequency RoPE factors (Llama 3.1-style "
            "rope scaling), which this loader does not support"
        )

    def key(name: str) -> Any:
        return _require(reader, f"{arch}.{name}", path)

    hidden = int(key("embedding_length"))
    heads = int(key("attention.head_count"))
    kv_heads = int(field_value(reader, f"{arch}.attention.head_count_kv", heads))
    head_dim = int(field_value(reader, f"{arch}.attention.key_length", hidden // heads))
    rope_dim = field_value(reader, f"{arch}.rope.dimension_count")
    if rope_dim is not None and int(rope_dim) != head_dim:
        raise ValueError(
            f"{path}: {arch}.rope.dimension_count={rope_dim} differs from the head dim {head_dim} "
            "(partial rotary embeddings are not supported)"
        )
    kind = field_value(reader, f"{arch}.rope.scaling.type", "none")
    factor = field_value(reader, f"{arch}.rope.scaling.factor")
    linear = field_value(reader, f"{arch}.rope.scale_linear")
    scaling = None
    if kind == "linear":
        scaling = RopeScaling(kind="linear", factor=float(factor if factor is not None else 1.0))
    elif kind == "none" and linear is not None and float(linear) != 1.0:
        scaling = RopeScaling(kind="linear", factor=float(linear))
    elif kind != "none":
        raise ValueError(
            f"{path}: unsupported {arch}.rope.scaling.type={kind!r} (supported: none, linear)"
        )
    tokens = field_value(reader, "tokenizer.ggml.tokens")
    if tokens is not None:
        vocab = len(tokens)
    else:
        vocab = int(key("vocab_size"))
    return DecoderConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=int(key("feed_forward_length")),
        num_layers=int(key("block_count")),
        num_heads=heads,
        num_kv_heads=kv_heads,
        head_dim=head_dim,
        rope_theta=float(field_value(reader, f"{arch}.rope.freq_base", 10000.0)),
        rope_scaling=scaling,
        rms_norm_eps=float(key("attention.layer_norm_rms_epsilon")),
        tie_word_embeddings="output.weight" not in names,
        qkv_bias="blk.0.attn_q.bias" in names,
        o_bias="blk.0.attn_output.bias" in names,
        mlp_bias="blk.0.ffn_up.bias" in names,
        max_position_embeddings=int(field_value(reader, f"{arch}.context_length", 4096)),
        architecture="LlamaForCausalLM",
    )


def gguf_tensor_names(config: DecoderConfig) -> dict[str, str]:
    """GGUF tensor name -> Hugging Face tensor name for every parameter ``config`` needs."""
    by_hf = {}
    for g, h in _GLOBAL_NAMES.items():
        by_hf[h] = g
    for i in range(config.num_layers):
        for g, h in _LAYER_NAMES.items():
            by_hf[f"model.layers.{i}.{h}"] = f"blk.{i}.{g}"
    return {by_hf[h]: h for h in hf_tensor_names(config)}


def unpermute_qk(w: np.ndarray, n_heads: int) -> np.ndarray:
    """Undoes llama.cpp's q/k row permutation (transformers' ``reverse_permute_weights``).

    The converter wrote ``w.reshape(n, 2, rows // n // 2, *rest).swapaxes(1, 2)``; this returns
    ``w.reshape(n, rows // n // 2, 2, *rest).swapaxes(2, 1)`` reshaped back to ``w.shape``.
    """
    rows = w.shape[0]
    if rows % (2 * n_heads):
        raise ValueError(
            f"cannot unpermute {rows} rows over {n_heads} heads (need 2 * heads | rows)"
        )
    return w.reshape(n_heads, rows // n_heads // 2, 2, *w.shape[1:]).swapaxes(2, 1).reshape(w.shape)


def dequantize_tensor(tensor: Any, path: str | os.PathLike = "<gguf>") -> np.ndarray:
    """One GGUF tensor as float32 in NumPy order (``[rows, cols]`` = HF ``[out, in]`` for linears).

    Raises:
      ValueError: a ggml type outside :data:`SUPPORTED_TYPES`, naming the tensor and type.
    """
    gguf = _import_gguf()
    qtype = gguf.GGMLQuantizationType(tensor.tensor_type)
    if qtype.name not in SUPPORTED_TYPES:
        raise ValueError(
            f"{path}: tensor {tensor.name!r} has ggml type {qtype.name} ({int(qtype)}), which is "
            f"not supported (supported: {', '.join(SUPPORTED_TYPES)})"
        )
    out = gguf.quants.dequantize(tensor.data, qtype)
    return np.asarray(out, dtype=np.float32)


def load_gguf(path: str | os.PathLike, *, dtype: Any = None) -> Decoder:
    """Loads a ``llama`` GGUF file into a :class:`~jaxsel.models.module.Decoder`.

    Args:
      path: the ``.gguf`` file (e.g. from :func:`jaxsel.models.fetch.model_path`).
      dtype: parameter dtype; ``None`` means float32 (quantized weights are dequantized).

    Returns:
      ``m`` with ``m(tokens [B, T]) -> logits [B, T, vocab]`` and ``m.generate(...)``.

    Raises:
      FileNotFoundError: no such file.
      ValueError: not GGUF (magic), truncated or corrupt, an architecture other than ``llama``, an
        unsupported tensor type, a missing or unexpected tensor, or a tensor whose shape disagrees
        with the metadata, each naming the file and the tensor.

    Example:
      >>> m = load_gguf(model_path("smollm2"))  # doctest: +SKIP
      >>> logits = m(jnp.asarray([[1, 4093, 15876]]))  # doctest: +SKIP
    """
    path = Path(path)
    reader = open_gguf(path)
    config = config_from_gguf(reader, path)
    # The parsed metadata (one small array per token and merge string) is not needed any more;
    # dropping it before the weights arrive lowers the peak. The reader is ours alone.
    reader.fields.clear()
    dtype = jnp.float32 if dtype is None else dtype
    tensors = {t.name: t for t in reader.tensors}
    names = gguf_tensor_names(config)
    missing = [g for g in names if g not in tensors]
    if missing:
        more = f" (and {len(missing) - 5} more)" if len(missing) > 5 else ""
        raise ValueError(f"{path} is missing tensor(s) {missing[:5]}{more}")
    unexpected = sorted(set(tensors) - set(names))
    if unexpected:
        raise ValueError(f"{path} has tensor(s) a llama decoder does not use: {unexpected[:5]}")
    shapes = hf_tensor_names(config)
    params: dict[str, Any] = {"layers": [{} for _ in range(config.num_layers)]}
    for gname, hname in names.items():
        ours, shape = shapes[hname]
        a = dequantize_tensor(tensors[gname], path)
        if tuple(a.shape) != shape:
            raise ValueError(
                f"{path}: tensor {gname!r} has shape {tuple(a.shape)} (NumPy order), expected "
                f"{shape} from the metadata"
            )
        if ours[-1] in ("wq", "bq"):
            a = unpermute_qk(a, config.num_heads)
        elif ours[-1] in ("wk", "bk"):
            a = unpermute_qk(a, config.num_kv_heads)
        arr = jnp.asarray(_to_ours(ours[-1], a, config), dtype=dtype)
        del a  # the float32 copy goes before the next tensor is dequantized
        if ours[0] == "layers":
            params["layers"][ours[1]][ours[2]] = arr
        else:
            params[ours[0]] = arr
    return Decoder(config, params=params)
