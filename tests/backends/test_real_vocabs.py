"""Random-weight models on real tokenizer vocabularies (Llama-2/3, Qwen2, Phi-3, GPT-2, StarCoder,
DeepSeek-Coder): tokenizer round trips, chat templates, and speculative == plain decoding."""

from __future__ import annotations

from pathlib import Path

import pytest

from localspec.backends.llamacpp import LlamaCppBackend
from localspec.chat import Message, encode_chat
from localspec.engine import Engine
from localspec.generate import generate
from localspec.gguf_export import LlamaConfig, TokenizerSpec, random_llama_weights, write_llama_gguf
from localspec.settings import BackendSettings, GenerationSettings
from tests.conftest import VOCAB_DIR

VOCABS = sorted(VOCAB_DIR.glob("ggml-vocab-*.gguf")) if VOCAB_DIR.is_dir() else []
pytestmark = pytest.mark.skipif(not VOCABS, reason=f"no real vocabularies in {VOCAB_DIR}")

TEXTS = [
    "def fibonacci(n):\n    if n < 2:\n        return n\n    return fibonacci(n - 1) + fibonacci(n - 2)\n",
    "Héllo wörld — 世界 🎉 tabs\tand  double  spaces",
    "x = [i ** 2 for i in range(10)]  # squares",
]


@pytest.fixture(scope="module", params=VOCABS, ids=lambda p: p.stem.removeprefix("ggml-vocab-"))
def vocab_backend(request, tmp_path_factory):
    vocab: Path = request.param
    tokenizer = TokenizerSpec.from_gguf(vocab)
    config = LlamaConfig(vocab_size=len(tokenizer.tokens), n_embd=32, n_ff=64, n_head=4, n_head_kv=2)
    path = write_llama_gguf(tmp_path_factory.mktemp("vocab") / vocab.name, config,
                            random_llama_weights(config, seed=1, scale=0.05), tokenizer,
                            weight_type="f16")
    backend = LlamaCppBackend(path, BackendSettings(n_ctx=512, n_threads=1))
    yield backend
    backend.close()


def detokenize(backend, tokens: list[int]) -> str:
    return b"".join(backend.token_bytes(t) for t in tokens).decode("utf-8", "replace")


@pytest.mark.parametrize("text", TEXTS)
def test_tokenizer_round_trip(vocab_backend, text):
    tokens = vocab_backend.tokenize(text, add_special=False)
    assert 0 < len(tokens) <= len(text.encode())
    decoded = detokenize(vocab_backend, tokens)
    # SentencePiece vocabularies add a leading space to the first word
    assert decoded in (text, " " + text)


def test_chat_template_when_present(vocab_backend):
    messages = [Message("system", "You are terse."), Message("user", "Say hi")]
    tokens = encode_chat(vocab_backend, messages)
    text = detokenize(vocab_backend, tokens)
    assert "Say hi" in text
    if vocab_backend.chat_template and "im_start" in vocab_backend.chat_template:
        start = vocab_backend.tokenize("<|im_start|>", add_special=False, parse_special=True)
        assert len(start) == 1 and start[0] in tokens  # parsed as one control token
    if vocab_backend.chat_template is None:  # ChatML fallback
        assert "assistant" in vocab_backend.special_token_text(tokens[-2]) + text


def test_speculative_equals_plain(vocab_backend):
    engine = Engine(vocab_backend)
    prompt = vocab_backend.tokenize(TEXTS[0] * 3)
    plain = generate(engine, prompt, GenerationSettings(max_tokens=40, drafter="none"))
    spec = generate(engine, prompt, GenerationSettings(max_tokens=40, drafter="lookup"))
    assert spec.tokens == plain.tokens and spec.text == plain.text
