"""Write llama-architecture GGUF files: the demo model's export and the tests' tiny models.

Weights are numpy arrays in PyTorch's [out_features, in_features] layout; Q and K must already
use llama.cpp's rotary layout (pairs of adjacent dimensions rotate together).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import gguf
import numpy as np

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

WEIGHT_TYPES = {
    "f32": gguf.GGMLQuantizationType.F32,
    "f16": gguf.GGMLQuantizationType.F16,
    "q8_0": gguf.GGMLQuantizationType.Q8_0,
}
FILE_TYPES = {"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16,
              "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0}


@dataclass(frozen=True)
class LlamaConfig:
    vocab_size: int
    n_embd: int = 64
    n_layer: int = 2
    n_head: int = 4
    n_head_kv: int = 2
    n_ff: int = 128
    n_ctx: int = 2048
    rope_theta: float = 10000.0
    rms_eps: float = 1e-5

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head


@dataclass(frozen=True)
class TokenizerSpec:
    """A byte-level BPE vocabulary in llama.cpp's `gpt2` tokenizer format."""

    tokens: list[str]
    token_types: list[int]
    merges: list[str]
    bos_id: int
    eos_id: int
    pre: str = "gpt-2"
    add_bos: bool = False
    chat_template: str | None = CHATML_TEMPLATE
    extra_eog_ids: tuple[int, ...] = field(default=())
    model: str = "gpt2"  # "llama" for SentencePiece vocabularies (these need scores)
    scores: list[float] | None = None
    unknown_id: int | None = None

    @classmethod
    def from_gguf(cls, path: str | Path) -> TokenizerSpec:
        """The tokenizer of an existing GGUF (for example a vocab-only file from llama.cpp)."""
        reader = gguf.GGUFReader(str(path))

        def value(key: str, default=None):
            f = reader.get_field(key)
            return f.contents() if f is not None else default

        return cls(tokens=value("tokenizer.ggml.tokens"), token_types=value("tokenizer.ggml.token_type"),
                   merges=value("tokenizer.ggml.merges", []), bos_id=value("tokenizer.ggml.bos_token_id", 0),
                   eos_id=value("tokenizer.ggml.eos_token_id", 0),
                   pre=value("tokenizer.ggml.pre", "default"),
                   add_bos=bool(value("tokenizer.ggml.add_bos_token", False)),
                   chat_template=value("tokenizer.chat_template"),
                   model=value("tokenizer.ggml.model", "gpt2"), scores=value("tokenizer.ggml.scores"),
                   unknown_id=value("tokenizer.ggml.unknown_token_id"))


@lru_cache(maxsize=1)
def byte_to_unicode() -> dict[int, str]:
    """GPT-2's reversible map from bytes to printable characters."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(
        range(ord("®"), ord("ÿ") + 1))
    chars = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return {b: chr(c) for b, c in zip(printable, chars, strict=False)}


def byte_level_tokenizer(words: Iterable[str], specials: Iterable[str] = ("<|endoftext|>",
                         "<|im_start|>", "<|im_end|>"), chat_template: str | None = CHATML_TEMPLATE
                         ) -> TokenizerSpec:
    """256 byte tokens, one merged token per prefix of each word, then the special tokens.

    A word "abc" yields merges "a b" -> "ab" and "ab c" -> "abc", which is valid BPE, so the
    vocabulary stays tiny while common strings still become single tokens.
    """
    b2u = byte_to_unicode()
    tokens = [b2u[b] for b in range(256)]
    known = set(tokens)
    merges: list[str] = []
    for word in words:
        pieces = [b2u[b] for b in word.encode("utf-8")]
        current = pieces[0]
        for piece in pieces[1:]:
            merged = current + piece
            if merged not in known:
                merges.append(f"{current} {piece}")
                tokens.append(merged)
                known.add(merged)
            current = merged
    types = [gguf.TokenType.NORMAL] * len(tokens)
    specials = list(specials)
    tokens += specials
    types += [gguf.TokenType.CONTROL] * len(specials)
    eos = tokens.index("<|endoftext|>")
    eog = tuple(tokens.index(s) for s in specials if s == "<|im_end|>")
    return TokenizerSpec(tokens, [int(t) for t in types], merges, bos_id=eos, eos_id=eos,
                         chat_template=chat_template, extra_eog_ids=eog)


def random_llama_weights(config: LlamaConfig, seed: int = 0, scale: float = 0.08
                         ) -> dict[str, np.ndarray]:
    """Random weights for a model that still produces varied, peaked logits."""
    rng = np.random.default_rng(seed)
    e, kv = config.n_embd, config.head_dim * config.n_head_kv

    def w(*shape: int, s: float = scale) -> np.ndarray:
        return (rng.standard_normal(shape) * s).astype(np.float32)

    weights = {
        "token_embd.weight": w(config.vocab_size, e, s=1.0),
        "output_norm.weight": np.ones(e, np.float32),
        "output.weight": w(config.vocab_size, e, s=0.3),
    }
    for i in range(config.n_layer):
        weights |= {
            f"blk.{i}.attn_norm.weight": np.ones(e, np.float32),
            f"blk.{i}.attn_q.weight": w(e, e, s=0.3),
            f"blk.{i}.attn_k.weight": w(kv, e, s=0.3),
            f"blk.{i}.attn_v.weight": w(kv, e),
            f"blk.{i}.attn_output.weight": w(e, e),
            f"blk.{i}.ffn_norm.weight": np.ones(e, np.float32),
            f"blk.{i}.ffn_gate.weight": w(config.n_ff, e),
            f"blk.{i}.ffn_up.weight": w(config.n_ff, e),
            f"blk.{i}.ffn_down.weight": w(e, config.n_ff),
        }
    return weights


def write_llama_gguf(path: str | Path, config: LlamaConfig, weights: Mapping[str, np.ndarray],
                     tokenizer: TokenizerSpec, weight_type: str = "f32", name: str = "model",
                     arch: str = "llama") -> Path:
    """Write a llama-family GGUF (`arch` names the key prefix: llama, qwen2, ...). 1-D tensors
    (norms, biases) are always stored as f32."""
    path = Path(path)
    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_name(name)
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
    if tokenizer.extra_eog_ids:
        writer.add_eot_token_id(tokenizer.extra_eog_ids[0])
    if tokenizer.chat_template:
        writer.add_chat_template(tokenizer.chat_template)

    qtype = WEIGHT_TYPES[weight_type]
    for tensor_name, array in weights.items():
        array = np.ascontiguousarray(array, dtype=np.float32)
        if array.ndim == 1 or qtype == gguf.GGMLQuantizationType.F32:
            writer.add_tensor(tensor_name, array)
        elif qtype == gguf.GGMLQuantizationType.F16:
            writer.add_tensor(tensor_name, array.astype(np.float16))
        else:
            # quantize() returns [rows, row_bytes] uint8; the writer derives the element shape
            writer.add_tensor(tensor_name, gguf.quants.quantize(array, qtype), raw_dtype=qtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path
