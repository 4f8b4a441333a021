"""The exported GGUF computes what the torch model computes: llama.cpp's logits equal torch's.

This pins the rope layout (adjacent pairs), GQA head grouping, RMSNorm and the tied output.
"""

from __future__ import annotations

import numpy as np
import pytest

from localspec.backends.llamacpp import LlamaCppBackend
from localspec.gguf_export import LlamaConfig, byte_level_tokenizer, write_llama_gguf
from localspec.settings import BackendSettings
from localspec.tree import DraftTree

torch = pytest.importorskip("torch")
from localspec.demo.torch_llama import Llama  # noqa: E402


def random_model(config: LlamaConfig, seed: int = 0) -> Llama:
    torch.manual_seed(seed)
    model = Llama(config)
    with torch.no_grad():  # larger than the training init, so every part moves the logits
        for name, p in model.named_parameters():
            if "norm" in name:
                p.copy_(1 + 0.3 * torch.randn_like(p))
            else:
                p.normal_(0, 0.5 if "embed" in name else 0.15)
    return model.eval()


def test_llama_cpp_logits_match_torch(tmp_path):
    tokenizer = byte_level_tokenizer(["def ", "return"])
    config = LlamaConfig(vocab_size=len(tokenizer.tokens), n_embd=64, n_layer=2, n_head=4,
                         n_head_kv=2, n_ff=96, n_ctx=128, rope_theta=10000.0)
    model = random_model(config)
    path = write_llama_gguf(tmp_path / "parity.gguf", config, model.gguf_weights(), tokenizer)

    rng = np.random.default_rng(0)
    tokens = rng.integers(0, config.vocab_size, size=40).tolist()
    with torch.no_grad():
        expected = model(torch.tensor([tokens]))[0].numpy()

    settings = BackendSettings(n_ctx=128, n_threads=1, kv_type="f32", flash_attn=False)
    with LlamaCppBackend(path, settings) as backend:
        got = np.array(backend.verify(tokens[0], DraftTree.chain(tokens[1:])))

    assert got.shape == expected.shape
    assert np.abs(expected).max() > 1.0  # the comparison is not between near-zero logits
    np.testing.assert_allclose(got, expected, atol=1e-3, rtol=1e-3)
    assert (got.argmax(-1) == expected.argmax(-1)).all()
