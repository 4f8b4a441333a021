"""GGUFs of each architecture the torch backend runs, with random weights (llama, mistral, qwen2)."""

from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np

from localspec.gguf_export import (
    FILE_TYPES,
    WEIGHT_TYPES,
    LlamaConfig,
    TokenizerSpec,
    byte_level_tokenizer,
    random_llama_weights,
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


def write_gguf(path: Path, arch: str, config: LlamaConfig, weights: dict[str, np.ndarray],
               tokenizer: TokenizerSpec, weight_type: str = "f32") -> Path:
    """Like gguf_export.write_llama_gguf, for any architecture name (keys follow the arch)."""
    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_name(arch)
    writer.add_file_type(FILE_TYPES[weight_type])
    writer.add_vocab_size(config.vocab_size)
    writer.add_context_length(config.n_ctx)
    writer.add_embedding_length(config.n_embd)
    writer.add_block_count(config.n_layer)
    writer.add_feed_forward_length(config.n_ff)
    writer.add_head_count(config.n_head)
    writer.add_head_count_kv(config.n_head_kv)
    writer.add_rope_dimension_count(config.head_dim)
    writer.add_rope_freq_base(config.rope_theta)
    writer.add_layer_norm_rms_eps(config.rms_eps)
    writer.add_tokenizer_model(tokenizer.model)
    writer.add_tokenizer_pre(tokenizer.pre)
    writer.add_token_list(tokenizer.tokens)
    writer.add_token_types(tokenizer.token_types)
    if tokenizer.merges:
        writer.add_token_merges(tokenizer.merges)
    if tokenizer.scores is not None:
        writer.add_token_scores(tokenizer.scores)
    if tokenizer.unknown_id is not None:
        writer.add_unk_token_id(tokenizer.unknown_id)
    writer.add_bos_token_id(tokenizer.bos_id)
    writer.add_eos_token_id(tokenizer.eos_id)
    writer.add_add_bos_token(tokenizer.add_bos)
    if tokenizer.chat_template:
        writer.add_chat_template(tokenizer.chat_template)
    qtype = WEIGHT_TYPES[weight_type]
    for name, array in weights.items():
        array = np.ascontiguousarray(array, dtype=np.float32)
        if array.ndim == 1 or qtype == gguf.GGMLQuantizationType.F32:
            writer.add_tensor(name, array)
        elif qtype == gguf.GGMLQuantizationType.F16:
            writer.add_tensor(name, array.astype(np.float16))
        else:
            writer.add_tensor(name, gguf.quants.quantize(array, qtype), raw_dtype=qtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def build_arch_model(path: Path, arch: str, seed: int = 0, tied: bool = False, weight_type: str = "f32",
                     tokenizer: TokenizerSpec | None = None, **config) -> Path:
    tokenizer = tokenizer or byte_level_tokenizer(WORDS)
    cfg = LlamaConfig(vocab_size=len(tokenizer.tokens), **config)
    return write_gguf(path, arch, cfg, random_weights(arch, cfg, seed, tied), tokenizer, weight_type)
