"""The torch model computes what llama.cpp computes on the same GGUF, per architecture."""

from __future__ import annotations

import numpy as np
import pytest

from localspec.backends.llamacpp import LlamaCppBackend
from localspec.backends.torch_backend import TorchBackend, TorchSettings
from localspec.gguf_export import TokenizerSpec
from localspec.settings import BackendSettings
from localspec.tree import DraftTree
from tests.conftest import VOCAB_DIR
from tests.torch.helpers import build_arch_model

ARCHS = {
    "llama": dict(arch="llama", tied=True),
    "mistral": dict(arch="llama", tied=False, n_embd=64, n_head=8, n_head_kv=2, rope_theta=1e6),
    "qwen2": dict(arch="qwen2", tied=True),
}


def both_backends(path, weight_dtype="float32"):
    llama = LlamaCppBackend(path, BackendSettings(n_ctx=256, n_threads=1, kv_type="f32", flash_attn=False))
    ours = TorchBackend(path, TorchSettings(device="cpu", dtype=weight_dtype, n_ctx=256, n_threads=1))
    return llama, ours


@pytest.mark.parametrize("name", ARCHS)
@pytest.mark.parametrize("weight_type", ["f32", "f16"])
def test_logits_match_llama_cpp(tmp_path, name, weight_type):
    spec = dict(ARCHS[name])
    path = build_arch_model(tmp_path / f"{name}.gguf", spec.pop("arch"), seed=2, n_ctx=256,
                            weight_type=weight_type, **spec)
    llama, ours = both_backends(path)
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, llama.n_vocab, 48).tolist()
    try:
        for backend in (llama, ours):
            backend.prefill(tokens[:20])
        expected = np.array(llama.verify(tokens[20], DraftTree.chain(tokens[21:])))
        got = ours.verify(tokens[20], DraftTree.chain(tokens[21:]))
        assert np.abs(expected).max() > 1.0
        # with f16 weights llama.cpp also rounds the activations to f16 before each matmul
        tol = 2e-3 if weight_type == "f32" else 5e-2
        np.testing.assert_allclose(got, expected, atol=tol, rtol=tol)
        assert (got.argmax(-1) == expected.argmax(-1)).mean() > 0.9
        text = "def the return  self = ():"
        assert ours.tokenize(text) == llama.tokenize(text)
    finally:
        llama.close()
        ours.close()


# one vocabulary per architecture: big vocabularies take seconds each to write and parse
VOCABS = [p for p in (VOCAB_DIR / "ggml-vocab-llama-spm.gguf", VOCAB_DIR / "ggml-vocab-qwen2.gguf")
          if p.exists()]


@pytest.mark.skipif(not VOCABS, reason=f"no real vocabularies in {VOCAB_DIR}")
@pytest.mark.parametrize("vocab", VOCABS, ids=lambda p: p.stem.removeprefix("ggml-vocab-"))
def test_real_vocabulary(tmp_path, vocab):
    """Tokenizer and greedy output equal llama.cpp's on a random model with a real vocabulary."""
    arch = "qwen2" if "qwen2" in vocab.name else "llama"
    path = build_arch_model(tmp_path / vocab.name, arch, seed=1, tokenizer=TokenizerSpec.from_gguf(vocab),
                            n_embd=32, n_ff=64, n_head=4, n_head_kv=2, n_ctx=256, weight_type="f16")
    llama, ours = both_backends(path)
    try:
        for text in ("def fib(n):\n    return n", "Héllo wörld — 世界 🎉"):
            assert ours.tokenize(text) == llama.tokenize(text)
            assert ours.tokenize(text, add_special=False) == llama.tokenize(text, add_special=False)
        prompt = llama.tokenize("def fib(n):\n    return n")
        for backend in (llama, ours):
            backend.prefill(prompt[:-1])
        expected = np.array(llama.verify(prompt[-1], DraftTree.empty()))[0]
        got = ours.verify(prompt[-1], DraftTree.empty())[0]
        np.testing.assert_allclose(got, expected, atol=5e-2, rtol=5e-2)  # f16 weights, see above
        assert ours.token_bytes(5) == llama.token_bytes(5) and ours.is_eog(ours.eos_token)
    finally:
        llama.close()
        ours.close()
