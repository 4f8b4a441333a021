"""The demo model ships inside the package, loads, speaks ChatML and writes code-like text."""

from __future__ import annotations

import pytest

from localspec.backends.llamacpp import LlamaCppBackend
from localspec.demo import demo_model_path
from localspec.modelfile import read_model_file
from localspec.settings import BackendSettings
from localspec.tree import DraftTree

CODE = '''import os


class Cache(dict):
    """A tiny cache."""

    def get_or_load(self, key: str, default=None) -> bytes | None:
        if key not in self:  # miss
            self[key] = os.environ.get(key, default)
        return self[key]
'''


@pytest.fixture(scope="module")
def backend():
    path = demo_model_path()
    assert path is not None, "localspec/demo/localspec-demo-*.gguf is missing"
    with LlamaCppBackend(path, BackendSettings(n_ctx=256, n_threads=2)) as b:
        yield b


def test_shipped_file_is_small_llama_gguf():
    info = read_model_file(demo_model_path())
    assert info.architecture == "llama" and info.tokenizer_model == "gpt2"
    assert info.file_size < 30 * 2**20
    assert info.chat_template and "<|im_start|>" in info.chat_template


def test_tokenizer_round_trips_code(backend):
    tokens = backend.tokenize(CODE, add_special=False)
    assert len(tokens) < len(CODE) / 2  # merges learned from code, not bytes
    assert b"".join(backend.token_bytes(t) for t in tokens).decode() == CODE


def test_chat_control_tokens(backend):
    ids = backend.tokenize("<|im_start|><|im_end|><|endoftext|>", add_special=False,
                           parse_special=True)
    assert len(ids) == 3
    assert backend.is_eog(ids[1]) and backend.is_eog(ids[2]) and not backend.is_eog(ids[0])


def test_greedy_continuation_of_a_def_is_an_indented_body(backend):
    tokens = backend.tokenize("def fibonacci(n):", add_special=True)
    backend.truncate(0)
    backend.prefill(tokens[:-1])
    root, text = tokens[-1], b""
    for _ in range(12):
        nxt = int(backend.verify(root, DraftTree.empty())[0].argmax())
        backend.commit(root, DraftTree.empty(), [])
        text += backend.token_bytes(nxt)
        root = nxt
    assert text.startswith(b"\n    ")
