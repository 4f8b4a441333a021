"""llama.cpp must split text exactly as the BPE trainer did, or the model sees foreign tokens."""

from __future__ import annotations

from pathlib import Path

import gguf
import pytest

from localspec.backends.llamacpp import LlamaCppBackend
from localspec.demo import demo_model_path
from localspec.demo.bpe import SPECIAL_TOKENS, tokenizer_spec
from localspec.gguf_export import LlamaConfig, TokenizerSpec, random_llama_weights, write_llama_gguf
from localspec.settings import BackendSettings

tokenizers = pytest.importorskip("tokenizers")
from localspec.demo.bpe import train_bpe  # noqa: E402

SAMPLES = [
    "def fibonacci(n):\n    if n < 2:\n        return n\n    return fibonacci(n - 1) + fibonacci(n - 2)\n",
    "class Foo(Bar):\n\n    def __init__(self, *args, **kw) -> None:\n\t\tself.x = {'a': 1_000}\n",
    "    \n  x = [i**2 for i in range(10)]  # squares   \n\n\n",
    "s = 'naïve café — 日本語 🙂'; t = \"it's\" + 'they\\'re'\r\n",
    "<|im_start|>user\nwrite a function<|im_end|>\n<|im_start|>assistant\n```python\n",
    "x=1;y=2.5e-3\nif x>=y:print(x)\n" * 3,
]


def hf_from_gguf(path: Path):
    """The trainer's tokenizer rebuilt from a GGUF vocabulary (ByteLevel, GPT-2 regex)."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

    reader = gguf.GGUFReader(str(path))
    assert reader.get_field("tokenizer.ggml.pre").contents() == "gpt-2"
    tokens = reader.get_field("tokenizer.ggml.tokens").contents()
    vocab = {t: i for i, t in enumerate(tokens)}
    merges = [tuple(m.split(" ", 1)) for m in reader.get_field("tokenizer.ggml.merges").contents()]
    tok = Tokenizer(models.BPE(vocab, merges))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([AddedToken(s, special=True) for s in SPECIAL_TOKENS])
    return tok


def llama_cpp_for(spec: TokenizerSpec, path: Path) -> LlamaCppBackend:
    config = LlamaConfig(vocab_size=len(spec.tokens), n_embd=32, n_layer=1, n_head=2,
                         n_head_kv=1, n_ff=64, n_ctx=64)
    write_llama_gguf(path, config, random_llama_weights(config), spec)
    return LlamaCppBackend(path, BackendSettings(n_ctx=64, n_threads=1))


def assert_same_tokens(hf, backend: LlamaCppBackend) -> None:
    for text in SAMPLES:
        assert backend.tokenize(text, add_special=False, parse_special=True) == hf.encode(text).ids
        ids = hf.encode(text).ids
        assert b"".join(backend.token_bytes(t, special=True) for t in ids).decode() == text


def test_freshly_trained_bpe_tokenizes_identically_in_llama_cpp(tmp_path):
    corpus = [s * 3 for s in SAMPLES[:4]] + [Path(__file__).read_text()]
    hf = train_bpe(corpus, vocab_size=500)
    spec = tokenizer_spec(hf)
    assert spec.tokens[:3] == list(SPECIAL_TOKENS) and spec.pre == "gpt-2"
    assert spec.extra_eog_ids == (SPECIAL_TOKENS.index("<|im_end|>"),)
    with llama_cpp_for(spec, tmp_path / "vocab.gguf") as backend:
        assert_same_tokens(hf, backend)


def test_shipped_vocabulary_tokenizes_as_its_trainer(tmp_path):
    path = demo_model_path()
    if path is None:
        pytest.skip("no demo model packaged")
    with LlamaCppBackend(path, BackendSettings(n_ctx=64, n_threads=1)) as backend:
        assert_same_tokens(hf_from_gguf(path), backend)
