"""GGUF tokenizer: a tiny byte-level vocabulary written with gguf-py (always runs), and the real
SmolLM2 file against transformers' GGUF tokenizer (ids, decoding, chat template)."""

from __future__ import annotations

import random
import re

import pytest

gguf = pytest.importorskip("gguf")
pytest.importorskip("tokenizers")
pytest.importorskip("jinja2")

from jaxsel.models import Tokenizer  # noqa: E402
from jaxsel.models.fetch import model_path  # noqa: E402

NOT_FETCHED = "model not fetched: run `jaxsel fetch smollm2`"

SMOL_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant<|im_end|>\n' }}{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte -> printable character table (openai/gpt-2 encoder.py)."""
    bs = list(range(ord("!"), ord("~") + 1))
    bs += list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def write_tokenizer_gguf(path, *, model="gpt2", pre="smollm", template=SMOL_TEMPLATE, bos=True):
    """Control tokens first (ids 0-2), the 256 byte symbols, then a few merges."""
    byte = bytes_to_unicode()
    control = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    merges = ["Ġ t", "h e", "Ġt he", "i n", "1 2"]
    tokens = [*control, *byte.values(), *(m.replace(" ", "") for m in merges), "<think>"]
    types = [3] * 3 + [1] * (256 + len(merges)) + [4]
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_string("tokenizer.ggml.model", model)
    w.add_string("tokenizer.ggml.pre", pre)
    w.add_array("tokenizer.ggml.tokens", tokens)
    w.add_array("tokenizer.ggml.token_type", types)
    w.add_array("tokenizer.ggml.merges", merges)
    w.add_uint32("tokenizer.ggml.bos_token_id", 1)
    w.add_uint32("tokenizer.ggml.eos_token_id", 2)
    w.add_uint32("tokenizer.ggml.padding_token_id", 2)
    w.add_bool("tokenizer.ggml.add_bos_token", bos)
    if template is not None:
        w.add_string("tokenizer.chat_template", template)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


# ----------------------------------------------------------------------------- tiny vocabulary
@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return Tokenizer.from_gguf(write_tokenizer_gguf(tmp_path_factory.mktemp("tok") / "t.gguf"))


def test_tiny_merges_specials_and_round_trip(tiny):
    vocab = tiny.backend.get_vocab()
    assert tiny.encode(" the", add_special_tokens=False) == [vocab["Ġthe"]]
    assert tiny.vocab_size == 3 + 256 + 5 + 1
    assert (tiny.bos_id, tiny.eos_id, tiny.pad_id) == (1, 2, 2)
    # add_bos_token=True in this file: BOS only with add_special_tokens
    assert tiny.encode("in")[0] == 1 and tiny.encode("in", add_special_tokens=False)[0] != 1
    # control and user-defined tokens match whole, inside words too
    ids = tiny.encode("a<|im_end|>b<think>c", add_special_tokens=False)
    assert ids[1] == 2 and ids[3] == vocab["<think>"]
    assert tiny.decode(ids) == "a<|im_end|>b<think>c"
    assert tiny.decode(ids, skip_special_tokens=True) == "ab<think>c"
    for s in ["héllo wörld 日本 😀\n\t  x", "", "\r\n\x00\x7f", "ÿ Ā ĉ Ġ"]:
        assert tiny.decode(tiny.encode(s, add_special_tokens=False)) == s


def test_tiny_digits_split_one_by_one(tiny):
    vocab = tiny.backend.get_vocab()
    # the merge "1 2" exists, but SmolLM's pre-tokenizer splits digits before BPE sees them
    assert tiny.encode("12", add_special_tokens=False) == [vocab["1"], vocab["2"]]
    assert tiny.encode(" 12", add_special_tokens=False) == [vocab["Ġ"], vocab["1"], vocab["2"]]


def test_plain_gpt2_pre_tokenizer_keeps_digit_merges(tmp_path):
    tok = Tokenizer.from_gguf(write_tokenizer_gguf(tmp_path / "g.gguf", pre="gpt2"))
    assert tok.encode("12", add_special_tokens=False) == [tok.backend.get_vocab()["12"]]


def test_tiny_chat_template(tiny):
    msgs = [{"role": "user", "content": "hi"}]
    want = (
        "<|im_start|>system\nYou are a helpful AI assistant<|im_end|>\n"
        "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    )
    assert tiny.apply_chat_template(msgs) == want
    assert (
        tiny.apply_chat_template(msgs, add_generation_prompt=False)
        == want[: -len("<|im_start|>assistant\n")]
    )
    assert tiny.apply_chat_template(msgs, tokenize=True) == tiny.encode(
        want, add_special_tokens=False
    )


def test_chat_template_is_sandboxed(tmp_path):
    import jinja2

    evil = "{{ messages.__class__.__mro__[1].__subclasses__() }}"
    tok = Tokenizer.from_gguf(write_tokenizer_gguf(tmp_path / "e.gguf", template=evil))
    with pytest.raises(jinja2.exceptions.SecurityError):
        tok.apply_chat_template([{"role": "user", "content": "x"}])
    raising = "{{ raise_exception('no system role') }}"
    tok = Tokenizer.from_gguf(write_tokenizer_gguf(tmp_path / "r.gguf", template=raising))
    with pytest.raises(jinja2.exceptions.TemplateError, match="no system role"):
        tok.apply_chat_template([])


def test_tokenizer_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"none\.gguf"):
        Tokenizer.from_gguf(tmp_path / "none.gguf")
    with pytest.raises(ValueError, match=r"l\.gguf: tokenizer\.ggml\.model='llama'"):
        Tokenizer.from_gguf(write_tokenizer_gguf(tmp_path / "l.gguf", model="llama"))
    with pytest.raises(ValueError, match=r"tokenizer\.ggml\.pre='qwen2' is not supported"):
        Tokenizer.from_gguf(write_tokenizer_gguf(tmp_path / "q.gguf", pre="qwen2"))
    tok = Tokenizer.from_gguf(write_tokenizer_gguf(tmp_path / "n.gguf", template=None))
    with pytest.raises(ValueError, match=r"n\.gguf has no tokenizer\.chat_template"):
        tok.apply_chat_template([{"role": "user", "content": "x"}])


# ----------------------------------------------------------------------------- the real SmolLM2
@pytest.fixture(scope="module")
def smol_path():
    try:
        return model_path("smollm2")
    except FileNotFoundError:
        pytest.skip(NOT_FETCHED)


@pytest.fixture(scope="module")
def ours(smol_path):
    return Tokenizer.from_gguf(smol_path)


@pytest.fixture(scope="module")
def reference(smol_path):
    transformers = pytest.importorskip("transformers")
    return transformers.AutoTokenizer.from_pretrained(
        str(smol_path.parent), gguf_file=smol_path.name
    )


def test_smollm2_digits_one_by_one(ours):
    """SPEC §9: this vocabulary has no multi-digit or space+digit tokens; keep it so."""
    ids = ours.encode(" 71432")
    assert [ours.token(i) for i in ids] == ["Ġ", "7", "1", "4", "3", "2"]
    assert ours.decode(ids) == " 71432"
    assert (ours.bos_id, ours.eos_id, ours.vocab_size, ours.add_bos) == (1, 2, 49152, False)
    assert ours.token(ours.eos_id) == "<|im_end|>"


FRAGMENTS = [
    "Hello, world!",
    " The quick brown fox jumps over the lazy dog.",
    "naïve café résumé coöperate",
    "日本語のテキストと中文字符",
    "한국어 텍스트",
    "Ελληνικά και русский текст",
    "😀🎉👩‍💻🇫🇷",
    "def f(x):\n    return x ** 2  # square\n",
    "for (int i = 0; i < n; ++i) { a[i] += b[i]; }",
    "<|im_start|>",
    "<|im_end|>",
    "<|endoftext|>",
    "<file_sep>",
    "<jupyter_code>",
    "1234567890",
    " 3.14159",
    "-42",
    "2024-01-31T12:00:00Z",
    "   ",
    "\n\n",
    "\t\t",
    "\r\n",
    "  \n  \n",
    "don't can't we'll I'm they've",
    "https://example.com/path?q=1&r=%20",
    "$x^2 + y^2 = z^2$",
    "UPPER lower MiXeD",
    "ﬁ ligature, ℃, ™, § and ¶",
    "\u200b zero width \u00a0 nbsp",
    "'''\"\"\"```",
]


def mixed_strings(n: int = 200) -> list[str]:
    rng = random.Random(0)
    out = list(FRAGMENTS)
    while len(out) < n:
        parts = rng.choices(FRAGMENTS, k=rng.randint(2, 6))
        seps = rng.choices(["", " ", "  ", "\n", " \n ", "\t", "    "], k=len(parts))
        out.append("".join(s + p for s, p in zip(seps, parts)))
    return out[:n]


# llama.cpp's pre-tokenizer for `tokenizer.ggml.pre == "smollm"` (llama-vocab.cpp): each regex
# splits the pieces of the one before; then byte-level BPE runs per piece.
LLAMA_CPP_SMOLLM = [
    r"\p{N}",
    r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)",
]


@pytest.fixture(scope="module")
def llama_cpp_rule(reference):
    """transformers' vocabulary and merges, split with llama.cpp's SmolLM regexes instead."""
    from tokenizers import Regex, pre_tokenizers
    from tokenizers import Tokenizer as Backend

    t = Backend.from_str(reference.backend_tokenizer.to_str())
    t.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Split(Regex(r), behavior="isolated") for r in LLAMA_CPP_SMOLLM]
        + [pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)]
    )
    return t


def digit_split_matters(s: str) -> bool:
    """Where SmolLM2's digit split can change ids: whitespace runs before a digit (the run is cut
    off before it rather than leaving its last space to the digit) and non-ASCII numerals."""
    return bool(re.search(r"\s\s[0-9]", s)) or any(c.isnumeric() and not c.isascii() for c in s)


def test_smollm2_ids_match_llama_cpp_and_transformers(ours, reference, llama_cpp_rule):
    """All 200 strings: ids equal to llama.cpp's SmolLM rule. transformers' GGUF converter drops
    SmolLM2's digit split (SPEC §9), so its ids may differ, but only where that split matters."""
    strings = mixed_strings(200)
    assert len(strings) == 200
    same_as_transformers, differs_elsewhere = 0, []
    for s in strings:
        got = ours.encode(s)
        assert got == llama_cpp_rule.encode(s, add_special_tokens=False).ids, s
        if got == reference(s)["input_ids"]:
            same_as_transformers += 1
        elif not digit_split_matters(s):
            differs_elsewhere.append(s)
    assert differs_elsewhere == []
    assert same_as_transformers >= 150  # 164 of 200 with this seed


def test_smollm2_digit_split_where_transformers_differs(ours, reference):
    for text, want in [
        ("  12", ["ĠĠ", "1", "2"]),
        ("\n\n 7", ["ĊĊĠ", "7"]),
        (" ½", ["Ġ", "Â½"]),
    ]:
        assert [ours.token(i) for i in ours.encode(text)] == want
        assert ours.decode(ours.encode(text)) == text


def test_smollm2_decoding_matches_transformers(ours, reference):
    for s in mixed_strings(200):
        for ids in (ours.encode(s), reference(s)["input_ids"]):
            assert ours.decode(ids) == reference.decode(ids) == s
            assert ours.decode(ids, skip_special_tokens=True) == reference.decode(
                ids, skip_special_tokens=True
            )


CONVERSATIONS = [
    [{"role": "user", "content": "What is the capital of France?"}],
    [
        {"role": "system", "content": "You answer in one word."},
        {"role": "user", "content": "Largest planet?"},
    ],
    [
        {"role": "user", "content": "Hi!"},
        {"role": "assistant", "content": "Hello! How can I help?"},
        {"role": "user", "content": "Write 2+2 =\n  and nothing else 😀"},
    ],
]


@pytest.mark.parametrize("conversation", CONVERSATIONS, ids=["one", "system", "multi"])
@pytest.mark.parametrize("add_generation_prompt", [True, False])
def test_smollm2_chat_template_matches_transformers(
    ours, reference, conversation, add_generation_prompt
):
    kw = dict(add_generation_prompt=add_generation_prompt)
    text = ours.apply_chat_template(conversation, **kw)
    assert text == reference.apply_chat_template(conversation, tokenize=False, **kw)
    want_ids = reference.apply_chat_template(conversation, tokenize=True, **kw)
    want_ids = want_ids["input_ids"] if hasattr(want_ids, "keys") else want_ids
    assert ours.apply_chat_template(conversation, tokenize=True, **kw) == list(want_ids)
