"""Parity of our decoder with PyTorch transformers on tiny random checkpoints, and loader errors."""

from __future__ import annotations

import json
import shutil

import jax.numpy as jnp
import numpy as np
import pytest

from jaxsel.models import DecoderConfig, load_hf_checkpoint
from jaxsel.models.hf import hf_tensor_names

TINY = dict(
    vocab_size=97,
    hidden_size=32,
    intermediate_size=48,
    num_hidden_layers=2,
    num_attention_heads=4,
    max_position_embeddings=256,
)

CASES = {
    "llama-mha": ("LlamaConfig", "LlamaForCausalLM", dict(num_key_value_heads=4)),
    "llama3-gqa-ropescaling": (
        "LlamaConfig",
        "LlamaForCausalLM",
        dict(
            num_key_value_heads=2,
            rope_theta=500000.0,
            rope_scaling={
                "rope_type": "llama3",
                "factor": 8.0,
                "low_freq_factor": 1.0,
                "high_freq_factor": 4.0,
                "original_max_position_embeddings": 16,
            },
            tie_word_embeddings=True,
        ),
    ),
    "qwen2-gqa-bias": ("Qwen2Config", "Qwen2ForCausalLM", dict(num_key_value_heads=2)),
    "mistral-gqa": (
        "MistralConfig",
        "MistralForCausalLM",
        dict(num_key_value_heads=1, head_dim=16, sliding_window=None),
    ),
}


def _save_tiny(torch, tmp_path, case, **extra):
    transformers = pytest.importorskip("transformers")
    cfg_cls, model_cls, kw = CASES[case]
    torch.manual_seed(0)
    cfg = getattr(transformers, cfg_cls)(**TINY, **kw, **extra)
    model = getattr(transformers, model_cls)(cfg).eval()
    # Random init draws norms at 1 and biases at 0; perturb them so the test sees their layout.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name or name.endswith("bias"):
                p.add_(0.1 * torch.randn_like(p))
    path = tmp_path / case
    model.save_pretrained(path)
    return model, path


@pytest.mark.parametrize("case", list(CASES))
def test_logits_and_greedy_tokens_match_transformers(torch, tmp_path, case):
    model, path = _save_tiny(torch, tmp_path, case)
    ours = load_hf_checkpoint(path, dtype=jnp.float32)
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, TINY["vocab_size"], size=(2, 24)).astype(np.int32)
    with torch.no_grad():
        ref = model(torch.from_numpy(tokens).long()).logits.numpy()
    got = np.asarray(ours(jnp.asarray(tokens)))
    assert got.shape == ref.shape
    np.testing.assert_allclose(got, ref, atol=1e-4, rtol=0)

    prompt = tokens[:1, :8]
    with torch.no_grad():
        ref_gen = model.generate(
            torch.from_numpy(prompt).long(),
            max_new_tokens=32,
            do_sample=False,
            min_new_tokens=32,
            pad_token_id=0,
        ).numpy()[:, 8:]
    got_gen = ours.generate(prompt, max_new_tokens=32, cache_len=64)
    np.testing.assert_array_equal(got_gen, ref_gen)


def test_sharded_checkpoint_and_missing_shard(torch, tmp_path):
    model, path = _save_tiny(torch, tmp_path, "qwen2-gqa-bias")
    sharded = tmp_path / "sharded"
    model.save_pretrained(sharded, max_shard_size="20KB")
    index = json.loads((sharded / "model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) > 1
    a = load_hf_checkpoint(path)
    b = load_hf_checkpoint(sharded)
    tokens = jnp.arange(10, dtype=jnp.int32)[None]
    np.testing.assert_array_equal(np.asarray(a(tokens)), np.asarray(b(tokens)))
    (sharded / shards[-1]).unlink()
    with pytest.raises(FileNotFoundError, match=shards[-1]):
        load_hf_checkpoint(sharded)


def _write_numpy_checkpoint(path, config_dict, tensors):
    from safetensors.numpy import save_file

    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text(json.dumps(config_dict))
    save_file(tensors, str(path / "model.safetensors"))


def _tiny_numpy_checkpoint(path):
    cfg = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", **TINY}
    cfg["num_key_value_heads"] = 2
    config = DecoderConfig.from_hf_dict(cfg)
    rng = np.random.default_rng(0)
    tensors = {
        n: rng.standard_normal(shape).astype(np.float32)
        for n, (_, shape) in hf_tensor_names(config).items()
    }
    _write_numpy_checkpoint(path, cfg, tensors)
    return cfg, tensors


def test_loader_without_torch_and_bf16(tmp_path):
    _tiny_numpy_checkpoint(tmp_path / "ok")
    m = load_hf_checkpoint(tmp_path / "ok", dtype=jnp.bfloat16)
    assert m.params_tree()["embed"].dtype == jnp.bfloat16
    logits = m(jnp.zeros((1, 5), jnp.int32))
    assert logits.shape == (1, 5, TINY["vocab_size"])
    assert np.isfinite(np.asarray(logits)).all()


def test_loader_errors_name_the_problem(tmp_path):
    cfg, tensors = _tiny_numpy_checkpoint(tmp_path / "base")
    missing = dict(tensors)
    del missing["model.layers.1.mlp.up_proj.weight"]
    _write_numpy_checkpoint(tmp_path / "missing", cfg, missing)
    with pytest.raises(ValueError, match=r"model\.layers\.1\.mlp\.up_proj\.weight"):
        load_hf_checkpoint(tmp_path / "missing")

    bad = dict(tensors)
    bad["model.layers.0.self_attn.k_proj.weight"] = np.zeros((3, 32), np.float32)
    _write_numpy_checkpoint(tmp_path / "bad", cfg, bad)
    with pytest.raises(ValueError, match=r"k_proj\.weight.*\(3, 32\)"):
        load_hf_checkpoint(tmp_path / "bad")

    gpt = dict(cfg, architectures=["GPT2LMHeadModel"], model_type="gpt2")
    _write_numpy_checkpoint(tmp_path / "gpt", gpt, tensors)
    with pytest.raises(ValueError, match="unsupported architecture 'GPT2LMHeadModel'"):
        load_hf_checkpoint(tmp_path / "gpt")

    shutil.copytree(tmp_path / "base", tmp_path / "nofile")
    (tmp_path / "nofile" / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="safetensors"):
        load_hf_checkpoint(tmp_path / "nofile")


def test_config_reads_hf_rope_formats():
    base = {"architectures": ["LlamaForCausalLM"], **TINY, "num_key_value_heads": 2}
    v4 = dict(base, rope_theta=5e5, rope_scaling={"type": "linear", "factor": 2.0})
    v5 = dict(base, rope_parameters={"rope_theta": 5e5, "rope_type": "linear", "factor": 2.0})
    c4, c5 = DecoderConfig.from_hf_dict(v4), DecoderConfig.from_hf_dict(v5)
    assert c4 == c5
    assert c4.rope_theta == 5e5 and c4.rope_scaling_dict() == {"rope_type": "linear", "factor": 2.0}
    with pytest.raises(ValueError, match="unsupported rope type 'yarn'"):
        DecoderConfig.from_hf_dict(dict(base, rope_scaling={"rope_type": "yarn", "factor": 4.0}))
    with pytest.raises(ValueError, match="multiple of num_kv_heads=3"):
        DecoderConfig.from_hf_dict(dict(base, num_key_value_heads=3))
