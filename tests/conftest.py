"""Tiny random-weight GGUF models, built once per test session with the gguf package."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from localspec.backends.llamacpp import LlamaCppBackend
from localspec.gguf_export import (
    LlamaConfig,
    byte_level_tokenizer,
    random_llama_weights,
    write_llama_gguf,
)
from localspec.settings import BackendSettings

WORDS = ["def", " the", "return", "    ", "self", " = ", "():", "import", " in", "for", "print"]
VOCAB_DIR = Path(__file__).resolve().parents[2] / "shared" / "vocab"


def build_model(path: Path, seed: int = 0, layer_scale: float = 1.0, weight_type: str = "f32",
                **config) -> Path:
    tokenizer = byte_level_tokenizer(WORDS)
    cfg = LlamaConfig(vocab_size=len(tokenizer.tokens), **config)
    weights = random_llama_weights(cfg, seed=seed)
    for name in weights:
        if name.startswith("blk.") and "norm" not in name:
            weights[name] *= layer_scale
    return write_llama_gguf(path, cfg, weights, tokenizer, weight_type=weight_type)


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("models")


@pytest.fixture(scope="session")
def tiny_model(model_dir) -> Path:
    """Attention and MLP matter: outputs depend on the whole context."""
    return build_model(model_dir / "tiny.gguf", seed=0)


@pytest.fixture(scope="session")
def loopy_model(model_dir) -> Path:
    """Weak layers: nearly a bigram model, so greedy text soon repeats (lookup then pays off)."""
    return build_model(model_dir / "loopy.gguf", seed=3, layer_scale=0.3)


@pytest.fixture(scope="session")
def tiny_backend(tiny_model):
    backend = LlamaCppBackend(tiny_model, BackendSettings(n_ctx=512, n_threads=1))
    yield backend
    backend.close()


@pytest.fixture(scope="session")
def loopy_backend(loopy_model):
    backend = LlamaCppBackend(loopy_model, BackendSettings(n_ctx=512, n_threads=1))
    yield backend
    backend.close()


@pytest.fixture()
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)


@pytest.fixture(autouse=True, scope="session")
def isolated_user_dirs(tmp_path_factory):
    """Cost curves, profiles and histories go to temporary folders, never the user's."""
    patcher = pytest.MonkeyPatch()
    for kind in ("cache", "config", "data"):
        patcher.setenv(f"LOCALSPEC_{kind.upper()}_DIR", str(tmp_path_factory.mktemp(kind)))
    yield
    patcher.undo()
