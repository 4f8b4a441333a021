"""The demo model's tokenizer: byte-level BPE trained with the `tokenizers` library, converted to
llama.cpp's `gpt2` tokenizer format.

The trainer pre-splits text with GPT-2's byte-level regex (`ByteLevel(use_regex=True)`), which is
the regex llama.cpp applies for the pre-tokenizer name "gpt-2", so both tokenize identically.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

import gguf

from localspec.gguf_export import CHATML_TEMPLATE, TokenizerSpec

SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
LLAMA_CPP_PRE = "gpt-2"


def train_bpe(texts: Iterable[str], vocab_size: int = 8192, path: Path | None = None):
    """Train a byte-level BPE whose first ids are the ChatML control tokens; save it to `path`."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=2, show_progress=False,
                                  special_tokens=list(SPECIAL_TOKENS),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator(texts, trainer)
    if path is not None:
        tokenizer.save(str(path))
    return tokenizer


def load_bpe(path: Path):
    from tokenizers import Tokenizer

    return Tokenizer.from_file(str(path))


def tokenizer_spec(tokenizer) -> TokenizerSpec:
    """The trained tokenizer as llama.cpp `gpt2` vocabulary, merges and control tokens.

    Training documents are separated by <|endoftext|>, so it doubles as BOS: a prompt that
    starts with it looks like the start of a training document.
    """
    model = json.loads(tokenizer.to_str())["model"]
    vocab: dict[str, int] = model["vocab"]
    tokens = [""] * len(vocab)
    for text, index in vocab.items():
        tokens[index] = text
    merges = [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]
    types = [int(gguf.TokenType.CONTROL if t in SPECIAL_TOKENS else gguf.TokenType.NORMAL)
             for t in tokens]
    eot = vocab["<|endoftext|>"]
    return TokenizerSpec(tokens, types, merges, bos_id=eot, eos_id=eot, pre=LLAMA_CPP_PRE,
                         add_bos=True, chat_template=CHATML_TEMPLATE,
                         extra_eog_ids=(vocab["<|im_end|>"],))
