"""GGUF loader: tiny llama GGUF files written with gguf-py's writer, checked against the HF layout
(our safetensors conversion), against transformers' own GGUF load, against plain-NumPy block
dequantizers, and for clear errors on bad input."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

gguf = pytest.importorskip("gguf")

from jaxsel.models import DecoderConfig, load_gguf  # noqa: E402
from jaxsel.models.gguf import config_from_gguf, open_gguf, unpermute_qk  # noqa: E402
from jaxsel.models.hf import convert_hf_state, hf_tensor_names  # noqa: E402

Q = gguf.GGMLQuantizationType

CONFIG = DecoderConfig(
    vocab_size=64,
    hidden_size=64,
    intermediate_size=96,
    num_layers=2,
    num_heads=4,
    num_kv_heads=2,
    rope_theta=100000.0,
    rms_norm_eps=float(np.float32(1e-5)),  # GGUF stores float32
    tie_word_embeddings=True,
    max_position_embeddings=256,
)

HF_TO_GGUF = {
    "model.embed_tokens.weight": "token_embd.weight",
    "model.norm.weight": "output_norm.weight",
    "lm_head.weight": "output.weight",
    "input_layernorm.weight": "attn_norm.weight",
    "post_attention_layernorm.weight": "ffn_norm.weight",
    "self_attn.q_proj.weight": "attn_q.weight",
    "self_attn.k_proj.weight": "attn_k.weight",
    "self_attn.v_proj.weight": "attn_v.weight",
    "self_attn.o_proj.weight": "attn_output.weight",
    "mlp.gate_proj.weight": "ffn_gate.weight",
    "mlp.up_proj.weight": "ffn_up.weight",
    "mlp.down_proj.weight": "ffn_down.weight",
}


def gguf_name(hf_name: str) -> str:
    if hf_name in HF_TO_GGUF:
        return HF_TO_GGUF[hf_name]
    _, _, i, rest = hf_name.split(".", 3)
    return f"blk.{i}.{HF_TO_GGUF[rest]}"


def converter_permute(w: np.ndarray, n: int) -> np.ndarray:
    """llama.cpp convert_hf_to_gguf.py LlamaModel.permute, written out independently."""
    return w.reshape(n, 2, w.shape[0] // n // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def random_hf_weights(config: DecoderConfig, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    out = {}
    for name, (path, shape) in hf_tensor_names(config).items():
        if path[-1].endswith("norm"):
            out[name] = (1.0 + 0.1 * rng.standard_normal(shape)).astype(np.float32)
        else:
            out[name] = (0.1 * rng.standard_normal(shape)).astype(np.float32)
    return out


def write_gguf(
    path,
    hf: dict[str, np.ndarray],
    config: DecoderConfig = CONFIG,
    *,
    arch: str = "llama",
    qtype=Q.F32,
    types: dict[str, object] | None = None,
    omit: tuple[str, ...] = (),
    extra: dict[str, np.ndarray] | None = None,
    kv: dict[str, tuple[str, object]] | None = None,
):
    """Writes ``hf`` (HF layout) as llama.cpp's converter would: q/k rows permuted, GGUF names.

    ``qtype`` applies to 2-D weights (norms stay F32, as llama.cpp keeps them); ``types`` overrides
    per GGUF tensor name: a ggml type, or ``("raw", array, ggml_type)`` for hand-made data.
    """
    c = config
    w = gguf.GGUFWriter(str(path), arch)
    w.add_uint32("llama.block_count", c.num_layers)
    w.add_uint32("llama.context_length", c.max_position_embeddings)
    w.add_uint32("llama.embedding_length", c.hidden_size)
    w.add_uint32("llama.feed_forward_length", c.intermediate_size)
    w.add_uint32("llama.attention.head_count", c.num_heads)
    w.add_uint32("llama.attention.head_count_kv", c.num_kv_heads)
    w.add_float32("llama.rope.freq_base", c.rope_theta)
    w.add_float32("llama.attention.layer_norm_rms_epsilon", c.rms_norm_eps)
    w.add_uint32("llama.rope.dimension_count", c.head_dim)
    w.add_uint32("llama.vocab_size", c.vocab_size)
    for key, (kind, value) in (kv or {}).items():
        getattr(w, f"add_{kind}")(key, value)
    w.add_string("tokenizer.ggml.model", "gpt2")
    w.add_array("tokenizer.ggml.tokens", [f"tok{i}" for i in range(c.vocab_size)])
    w.add_uint32("tokenizer.ggml.bos_token_id", 1)
    w.add_uint32("tokenizer.ggml.eos_token_id", 2)
    for name, a in hf.items():
        g = gguf_name(name)
        if g in omit:
            continue
        if "q_proj" in name:
            a = converter_permute(a, c.num_heads)
        elif "k_proj" in name:
            a = converter_permute(a, c.num_kv_heads)
        t = (types or {}).get(g, qtype if a.ndim == 2 else Q.F32)
        if isinstance(t, tuple):
            w.add_tensor(g, t[1], raw_dtype=t[2])
        elif t in (Q.F32, Q.F16):
            w.add_tensor(g, a.astype(np.float32 if t == Q.F32 else np.float16))
        else:
            w.add_tensor(g, gguf.quants.quantize(a, t), raw_dtype=t)
    for g, a in (extra or {}).items():
        w.add_tensor(g, a)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def leaves_by_name(params) -> dict[str, np.ndarray]:
    out = {k: np.asarray(v) for k, v in params.items() if k != "layers"}
    for i, lp in enumerate(params["layers"]):
        out.update({f"{i}.{k}": np.asarray(v) for k, v in lp.items()})
    return out


# ----------------------------------------------------------------------------- layout and values
def test_unpermute_inverts_the_converters_permutation():
    rng = np.random.default_rng(1)
    for n, rows in ((4, 64), (2, 32), (9, 576)):
        w = rng.standard_normal((rows, 7)).astype(np.float32)
        np.testing.assert_array_equal(unpermute_qk(converter_permute(w, n), n), w)
        b = rng.standard_normal(rows).astype(np.float32)
        np.testing.assert_array_equal(unpermute_qk(converter_permute(b, n), n), b)
    with pytest.raises(ValueError, match="cannot unpermute 30 rows over 4 heads"):
        unpermute_qk(np.zeros((30, 2)), 4)


@pytest.mark.parametrize("tied", [True, False])
def test_f32_gguf_equals_hf_layout(tmp_path, tied):
    import dataclasses

    config = dataclasses.replace(CONFIG, tie_word_embeddings=tied)
    hf = random_hf_weights(config)
    m = load_gguf(write_gguf(tmp_path / "m.gguf", hf, config))
    assert m.config == config
    want = leaves_by_name(convert_hf_state(hf, config))
    got = leaves_by_name(m.params_tree())
    assert sorted(got) == sorted(want)
    for k in want:
        assert got[k].dtype == np.float32
        np.testing.assert_array_equal(got[k], want[k], err_msg=k)


def test_dtype_argument(tmp_path):
    path = write_gguf(tmp_path / "m.gguf", random_hf_weights(CONFIG), qtype=Q.F16)
    m = load_gguf(path, dtype=jnp.bfloat16)
    assert all(v.dtype == jnp.bfloat16 for v in leaves_by_name(m.params_tree()).values())


def test_logits_match_transformers_gguf_load(tmp_path):
    """The whole model against transformers' own GGUF reader (its dequantizer and permutation)."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("accelerate")
    hf = random_hf_weights(CONFIG, seed=3)
    path = write_gguf(tmp_path / "tiny.gguf", hf, qtype=Q.Q8_0)
    new_api = int(transformers.__version__.split(".")[0]) >= 5
    kw = {"dtype" if new_api else "torch_dtype": torch.float32}
    ref = transformers.AutoModelForCausalLM.from_pretrained(
        str(tmp_path), gguf_file="tiny.gguf", **kw
    ).eval()
    tokens = np.random.default_rng(0).integers(0, CONFIG.vocab_size, (2, 17))
    with torch.no_grad():
        want = ref(torch.tensor(tokens)).logits.numpy()
    got = np.asarray(load_gguf(path)(jnp.asarray(tokens, jnp.int32)))
    np.testing.assert_allclose(got, want, atol=2e-5, rtol=0)


# Plain-NumPy block dequantizers (ggml-common.h / ggml-quants.c layouts), independent of gguf-py.
def ref_q8_0(raw: np.ndarray) -> np.ndarray:
    b = raw.reshape(-1, 34)
    d = b[:, :2].copy().view(np.float16).astype(np.float32)
    return (d * b[:, 2:].copy().view(np.int8).astype(np.float32)).reshape(raw.shape[0], -1)


def ref_q4_0(raw: np.ndarray) -> np.ndarray:
    b = raw.reshape(-1, 18)
    d = b[:, :2].copy().view(np.float16).astype(np.float32)
    q = np.concatenate([b[:, 2:] & 0xF, b[:, 2:] >> 4], axis=1).astype(np.float32)
    return (d * (q - 8)).reshape(raw.shape[0], -1)


def ref_q4_1(raw: np.ndarray) -> np.ndarray:
    b = raw.reshape(-1, 20)
    d = b[:, :2].copy().view(np.float16).astype(np.float32)
    m = b[:, 2:4].copy().view(np.float16).astype(np.float32)
    q = np.concatenate([b[:, 4:] & 0xF, b[:, 4:] >> 4], axis=1).astype(np.float32)
    return (d * q + m).reshape(raw.shape[0], -1)


def ref_bf16(raw: np.ndarray) -> np.ndarray:
    u = raw.copy().view(np.uint16).astype(np.uint32) << 16
    return u.view(np.float32).reshape(raw.shape[0], -1)


@pytest.mark.parametrize(
    "qtype, ref",
    [(Q.Q8_0, ref_q8_0), (Q.Q4_0, ref_q4_0), (Q.Q4_1, ref_q4_1), (Q.BF16, ref_bf16)],
    ids=["Q8_0", "Q4_0", "Q4_1", "BF16"],
)
def test_block_quants_match_numpy_reference(tmp_path, qtype, ref):
    hf = random_hf_weights(CONFIG, seed=4)
    m = load_gguf(write_gguf(tmp_path / "q.gguf", hf, qtype=qtype))
    reader = open_gguf(tmp_path / "q.gguf")
    raw = {t.name: np.asarray(t.data) for t in reader.tensors}
    lp = m.params_tree()["layers"][1]
    D = CONFIG.hidden_size
    # ffn_up is stored [F, D] (HF [out, in]); ours is its transpose. q is also unpermuted.
    np.testing.assert_array_equal(np.asarray(lp["w_up"]), ref(raw["blk.1.ffn_up.weight"]).T)
    q = unpermute_qk(ref(raw["blk.1.attn_q.weight"]), CONFIG.num_heads)
    np.testing.assert_array_equal(np.asarray(lp["wq"]), q.T.reshape(D, CONFIG.num_heads, -1))
    # and the quantization is close to the weights it came from
    tol = {Q.Q8_0: 0.01, Q.Q4_0: 0.1, Q.Q4_1: 0.1, Q.BF16: 0.002}[qtype]
    np.testing.assert_allclose(
        np.asarray(lp["w_up"]), hf["model.layers.1.mlp.up_proj.weight"].T, atol=tol
    )


def test_config_from_metadata(tmp_path):
    path = write_gguf(
        tmp_path / "s.gguf",
        random_hf_weights(CONFIG),
        kv={
            "llama.rope.scaling.type": ("string", "linear"),
            "llama.rope.scaling.factor": ("float32", 4.0),
        },
    )
    c = config_from_gguf(open_gguf(path), path)
    assert (c.rope_scaling.kind, c.rope_scaling.factor) == ("linear", 4.0)
    assert (c.rope_theta, c.max_position_embeddings, c.head_dim) == (100000.0, 256, 16)
    assert c.rms_norm_eps == pytest.approx(1e-5) and c.tie_word_embeddings


# ----------------------------------------------------------------------------- errors
def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"nothere\.gguf"):
        load_gguf(tmp_path / "nothere.gguf")


def test_wrong_magic(tmp_path):
    p = tmp_path / "model.safetensors"
    p.write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}" + bytes(64))
    with pytest.raises(ValueError, match=r"model\.safetensors is not a GGUF file: magic"):
        load_gguf(p)


@pytest.mark.parametrize("keep", [0.1, 0.5, 0.99])
def test_truncated_file(tmp_path, keep):
    path = write_gguf(tmp_path / "m.gguf", random_hf_weights(CONFIG))
    data = path.read_bytes()
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(ValueError, match=r"cut\.gguf .*truncated or corrupt"):
        load_gguf(cut)


def test_unsupported_architecture(tmp_path):
    path = write_gguf(tmp_path / "m.gguf", random_hf_weights(CONFIG), arch="gpt2")
    with pytest.raises(ValueError, match=r"m\.gguf: unsupported GGUF architecture .*'gpt2'"):
        load_gguf(path)


@pytest.mark.parametrize("kind", ["I32", "IQ4_NL"])
def test_unsupported_tensor_type(tmp_path, kind):
    F, D = CONFIG.intermediate_size, CONFIG.hidden_size
    if kind == "I32":
        bad = ("raw", np.zeros((F, D), np.int32), Q.I32)
    else:  # 32 weights in 18 bytes (f16 scale + 16 nibble bytes)
        bad = ("raw", np.zeros((F, D // 32 * 18), np.uint8), Q.IQ4_NL)
    path = write_gguf(
        tmp_path / "m.gguf", random_hf_weights(CONFIG), types={"blk.1.ffn_up.weight": bad}
    )
    with pytest.raises(ValueError, match=rf"tensor 'blk\.1\.ffn_up\.weight' has ggml type {kind}"):
        load_gguf(path)


def test_missing_tensor(tmp_path):
    path = write_gguf(
        tmp_path / "m.gguf", random_hf_weights(CONFIG), omit=("blk.1.ffn_down.weight",)
    )
    with pytest.raises(ValueError, match=r"m\.gguf is missing tensor\(s\) \['blk\.1\.ffn_down"):
        load_gguf(path)


def test_unexpected_and_rope_freqs_tensors(tmp_path):
    hf = random_hf_weights(CONFIG)
    p1 = write_gguf(tmp_path / "a.gguf", hf, extra={"blk.0.extra.weight": np.ones(4, np.float32)})
    with pytest.raises(ValueError, match=r"does not use: \['blk\.0\.extra\.weight'\]"):
        load_gguf(p1)
    p2 = write_gguf(tmp_path / "b.gguf", hf, extra={"rope_freqs.weight": np.ones(8, np.float32)})
    with pytest.raises(ValueError, match=r"rope_freqs\.weight"):
        load_gguf(p2)


def test_shape_disagreeing_with_metadata(tmp_path):
    hf = random_hf_weights(CONFIG)
    hf["model.layers.0.mlp.up_proj.weight"] = hf["model.layers.0.mlp.up_proj.weight"][:64]
    path = write_gguf(tmp_path / "m.gguf", hf)
    with pytest.raises(ValueError, match=r"'blk\.0\.ffn_up\.weight' has shape \(64, 64\)"):
        load_gguf(path)


def test_unsupported_rope_scaling(tmp_path):
    path = write_gguf(
        tmp_path / "m.gguf",
        random_hf_weights(CONFIG),
        kv={"llama.rope.scaling.type": ("string", "yarn")},
    )
    with pytest.raises(ValueError, match=r"llama\.rope\.scaling\.type='yarn'"):
        load_gguf(path)
