"""GGUFs of each architecture the torch backend runs, with random weights (llama, mistral, qwen2)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from localspec.gguf_export import (
    LlamaConfig,
    TokenizerSpec,
    byte_level_tokenizer,
    random_llama_weights,
    write_llama_gguf,
)
from tests.conftest import WORDS


def random_weights(arch: str, config: LlamaConfig, seed: int, tied: bool) -> dict[str, np.ndarray]:
    weights = random_llama_weights(config, seed=seed)
    rng = np.random.default_rng(seed + 100)
    for name in list(weights):  # norms away from 1 so a wrong norm shows
        if name.endswith("norm.weight"):
            weights[name] = (1 + 0.3 * rng.standard_normal(weights[name].shape)).astype(np.float32)
    if tied:
        del weights["output.weight"]
    if arch == "qwen2":
        kv = config.head_dim * config.n_head_kv
        for i in range(config.n_layer):
            for part, size in (("q", config.n_embd), ("k", kv), ("v", kv)):
                weights[f"blk.{i}.attn_{part}.bias"] = (0.5 * rng.standard_normal(size)).astype(np.float32)
    return weights


def build_arch_model(path: Path, arch: str, seed: int = 0, tied: bool = False, weight_type: str = "f32",
                     tokenizer: TokenizerSpec | None = None, **config) -> Path:
    tokenizer = tokenizer or byte_level_tokenizer(WORDS)
    cfg = LlamaConfig(vocab_size=len(tokenizer.tokens), **config)
    weights = random_weights(arch, cfg, seed, tied)
    return write_llama_gguf(path, cfg, weights, tokenizer, weight_type, name=arch, arch=arch)
