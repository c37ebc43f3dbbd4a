"""The real SmolLM2-135M-Instruct (GGUF Q4_1, SPEC §9) in our decoder, against transformers' GGUF
load of the same file: logits on real English prompts, greedy tokens, and the chat answer.

Skipped when the file is not in the cache (``jaxsel fetch smollm2``); the transformers parts skip
without torch/transformers. The models load once per module.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest

pytest.importorskip("gguf")
pytest.importorskip("tokenizers")

from jaxsel.models import Tokenizer, generate, load_gguf, model_path

NOT_FETCHED = "model not fetched: run `jaxsel fetch smollm2`"
QUESTION = [{"role": "user", "content": "What is the capital of France?"}]
ANSWER = "The capital of France is Paris."

# Three paragraphs of ordinary English, written for this test (about 650 tokens together).
PARAGRAPHS = [
    "The printing press changed the way people shared ideas. Before Johannes Gutenberg built "
    "his press in Mainz around 1440, books were copied by hand, usually by monks working in "
    "quiet rooms for months at a time. A single Bible could take a scribe more than a year, and "
    "only wealthy churches, universities and nobles could afford to own one. Gutenberg combined "
    "several older inventions: a screw press of the kind used to make wine and olive oil, an ink "
    "based on oil rather than water, and, most importantly, small pieces of metal type that could "
    "be cast in large numbers and arranged into any page. Within fifty years, presses were "
    "working in more than two hundred European towns, and millions of books had been printed. "
    "Pamphlets, calendars and news sheets followed, and reading slowly became a habit of "
    "merchants, artisans and farmers as well as scholars.",
    "A river is never the same from one season to the next. In spring, melting snow from the "
    "mountains fills the channel until the water runs brown and fast, carrying sand, branches "
    "and sometimes whole trees toward the sea. Fish that spent the winter in deep pools move "
    "upstream to lay their eggs in gravel beds, and birds follow them, waiting on the banks for "
    "an easy meal. By late summer the flow has dropped, the water is clear and warm, and long "
    "green weeds wave in the current. Children wade across places that were dangerous a few "
    "months earlier. In autumn the leaves of the willows and alders fall into the stream, where "
    "they feed insects, snails and the small creatures that larger animals depend on. When "
    "winter returns, ice forms first along the edges, then bridges the slower stretches, and "
    "the river seems to sleep, although water still moves quietly underneath the frozen surface.",
    "Learning to cook well is mostly a matter of paying attention. A good cook tastes the food "
    "while it is being made, not only at the end, and adjusts the salt, the acid and the heat "
    "as the dish develops. Onions that are cooked slowly over a low flame become sweet and soft, "
    "while the same onions fried quickly over a high flame turn sharp and crisp. Bread dough "
    "tells the baker when it is ready by the way it springs back under a finger. Recipes are "
    "useful, but they cannot know how ripe your tomatoes are, how strong your stove is, or how "
    "dry the flour in your kitchen has become. For that reason, experienced cooks often read a "
    "recipe once, put it aside, and then rely on their eyes, their nose and their memory of "
    "earlier meals. Mistakes are part of the process, and a burnt pan teaches more than a "
    "perfect one.",
]


@pytest.fixture(scope="module")
def gguf_path():
    try:
        return model_path("smollm2")
    except FileNotFoundError:
        pytest.skip(NOT_FETCHED)


@pytest.fixture(scope="module")
def model(gguf_path):
    return load_gguf(gguf_path)


@pytest.fixture(scope="module")
def tok(gguf_path):
    return Tokenizer.from_gguf(gguf_path)


@pytest.fixture(scope="module")
def prompts(tok):
    """Real English prompts of 64 (first paragraph), 200 (second and third) and 512 (all)."""
    first = tok.encode(PARAGRAPHS[0])
    second = tok.encode("\n\n".join(PARAGRAPHS[1:]))
    joined = tok.encode("\n\n".join(PARAGRAPHS))
    assert len(first) >= 64 and len(second) >= 200 and len(joined) >= 512
    return [first[:64], second[:200], joined[:512]]


@pytest.fixture(scope="module")
def torch():
    return pytest.importorskip("torch")


@pytest.fixture(scope="module")
def reference(gguf_path, torch):
    """transformers' own GGUF load of the same file, float32, and its GGUF tokenizer."""
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("accelerate")
    new_api = int(transformers.__version__.split(".")[0]) >= 5
    kw = {"dtype" if new_api else "torch_dtype": torch.float32}
    folder, name = str(gguf_path.parent), gguf_path.name
    hf = transformers.AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, **kw).eval()
    hf_tok = transformers.AutoTokenizer.from_pretrained(folder, gguf_file=name)
    return hf, hf_tok


def test_config_from_metadata(model):
    c = model.config
    assert (c.num_layers, c.hidden_size, c.intermediate_size, c.vocab_size) == (
        30,
        576,
        1536,
        49152,
    )
    assert (c.num_heads, c.num_kv_heads, c.head_dim) == (9, 3, 64)
    assert (c.rope_theta, c.max_position_embeddings, c.tie_word_embeddings) == (1e5, 8192, True)
    assert c.rms_norm_eps == pytest.approx(1e-5) and c.rope_scaling is None
    assert "lm_head" not in model.params_tree()


def test_peak_host_memory_of_loading(gguf_path):
    """Loading streams tensor by tensor: the peak RSS it adds stays under twice the f32 model.

    Measured in a fresh interpreter. The peak is the kernel's high-water mark of that process's own
    memory map (``VmHWM``): ``resource.getrusage``'s ``ru_maxrss`` also carries over the RSS of the
    parent (pytest, here with both models loaded) across fork + exec, so it would hide the load.
    """
    if not Path("/proc/self/status").exists():
        pytest.skip("needs Linux /proc for the peak RSS of a fresh process")
    code = (
        "import json, re, sys, time\n"
        "import jax\n"
        "from jaxsel.models import load_gguf\n"
        "def kib(key):\n"
        "    return int(re.search(key + r':\\s+(\\d+)', open('/proc/self/status').read())[1])\n"
        "base = kib('VmRSS')\n"
        "t = time.perf_counter()\n"
        "m = load_gguf(sys.argv[1])\n"
        "seconds = time.perf_counter() - t\n"
        "nbytes = sum(x.nbytes for x in jax.tree.leaves(m.params_tree()))\n"
        "print(json.dumps(dict(base_kib=base, peak_kib=kib('VmHWM'), model_bytes=nbytes, s=seconds)))\n"
    )
    run = subprocess.run(
        [sys.executable, "-c", code, str(gguf_path)], capture_output=True, text=True, check=True
    )
    r = json.loads(run.stdout.strip().splitlines()[-1])
    added = (r["peak_kib"] - r["base_kib"]) * 1024
    assert added <= 2 * r["model_bytes"], r


def test_logits_match_transformers(model, prompts, reference, torch):
    hf, _ = reference
    # One padded batch, one compile: causal attention keeps the padding out of earlier positions.
    batch = np.full((len(prompts), max(map(len, prompts))), 2, np.int32)
    for i, p in enumerate(prompts):
        batch[i, : len(p)] = p
    ours = np.asarray(model(jnp.asarray(batch)))
    for i, p in enumerate(prompts):
        with torch.no_grad():
            want = hf(torch.tensor([p])).logits[0].numpy()
        diff = np.abs(ours[i, : len(p)] - want).max()
        assert diff <= 2e-3, (len(p), diff)


def test_greedy_tokens_match_transformers(model, prompts, reference, torch):
    hf, _ = reference
    p = prompts[0]
    ours = generate(model.params_tree(), model.config, [p], max_new_tokens=64)[0]
    want = _hf_greedy(hf, torch, p, 64).numpy()
    assert len(want) == 64
    np.testing.assert_array_equal(ours, want)


def test_chat_answer_with_transformers(reference, torch):
    hf, hf_tok = reference
    ids = hf_tok.apply_chat_template(QUESTION, add_generation_prompt=True, tokenize=True)
    ids = list(ids["input_ids"] if hasattr(ids, "keys") else ids)
    assert hf_tok.decode(_hf_greedy(hf, torch, ids, 24), skip_special_tokens=True) == ANSWER


def _hf_greedy(hf, torch, ids, n):
    """transformers' greedy continuation of one prompt: the ``n`` new token ids."""
    with torch.no_grad():
        out = hf.generate(
            torch.tensor([ids]),
            attention_mask=torch.ones(1, len(ids), dtype=torch.long),
            do_sample=False,
            max_new_tokens=n,
        )
    return out[0, len(ids) :]


def test_sparse_decode_of_one_prompt_tracks_dense(model, prompts):
    # TokenSelect at original positions keeping all but 6 of the prompt's tokens must decode
    # what dense attention decodes (logits differ by ~1e-2 here): the sparse decode path on the
    # real weights, which the other tests (prompts within the budget) never leave dense for.
    from jaxsel.models import TokenSelect

    p = prompts[1]
    policy = TokenSelect(n_sink=4, top_k=len(p) - 6 - 4 - 32, n_local=32, position_mode="original")
    params = model.params_tree()
    dense = generate(params, model.config, [p], max_new_tokens=8)
    sparse = generate(params, model.config, [p], max_new_tokens=8, policy=policy)
    np.testing.assert_array_equal(sparse, dense)


def test_chat_answer_with_our_tokenizer_and_decoder(model, tok):
    """No transformers: our tokenizer, chat template, decoder and greedy loop, stopped at EOS."""
    ids = tok.apply_chat_template(QUESTION, add_generation_prompt=True, tokenize=True)
    out = [
        int(t)
        for t in generate(
            model.params_tree(), model.config, [ids], max_new_tokens=24, eos_id=tok.eos_id
        )[0]
    ]
    assert tok.token(tok.eos_id) == "<|im_end|>" and tok.eos_id in out
    assert tok.decode(out[: out.index(tok.eos_id)]) == ANSWER
