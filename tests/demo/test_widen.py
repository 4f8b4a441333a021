"""The bench variant: widening a GGUF adds zero FFN units and changes no output."""

from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np
import pytest

from localspec.backends.llamacpp import LlamaCppBackend
from localspec.demo.widen import ORIGINAL_N_FF_KEY, widen_gguf
from localspec.errors import ModelFileError, UnsupportedModelError
from localspec.gguf_export import (
    LlamaConfig,
    byte_level_tokenizer,
    random_llama_weights,
    write_llama_gguf,
)
from localspec.settings import BackendSettings
from localspec.tree import DraftTree

TARGET = 3 * 2**20


def tiny_gguf(path: Path, weight_type: str) -> Path:
    tokenizer = byte_level_tokenizer(["def ", "return ", "self", "    "])
    config = LlamaConfig(vocab_size=len(tokenizer.tokens), n_embd=64, n_layer=2, n_head=4,
                         n_head_kv=2, n_ff=96, n_ctx=256)
    return write_llama_gguf(path, config, random_llama_weights(config, seed=3), tokenizer,
                            weight_type=weight_type)


def greedy(path: Path, prompt: str, n: int = 24) -> list[int]:
    with LlamaCppBackend(path, BackendSettings(n_ctx=128, n_threads=1)) as backend:
        tokens = backend.tokenize(prompt, add_special=False)
        backend.prefill(tokens[:-1])
        root, out = tokens[-1], []
        for _ in range(n):
            nxt = int(backend.verify(root, DraftTree.empty())[0].argmax())
            backend.commit(root, DraftTree.empty(), [])
            out.append(nxt)
            root = nxt
    return out


def fields(path: Path) -> dict[str, object]:
    reader = gguf.GGUFReader(str(path))
    return {f.name: f.contents() for f in reader.fields.values() if not f.name.startswith("GGUF.")}


@pytest.mark.parametrize("weight_type", ["f32", "q8_0"])
def test_widened_copy_is_bigger_and_decodes_identically(tmp_path, weight_type):
    src = tiny_gguf(tmp_path / "tiny.gguf", weight_type)
    result = widen_gguf(src, tmp_path / "wide.gguf", target_weight_bytes=TARGET)

    assert result.n_ff_after > result.n_ff_before == 96
    assert result.n_ff_after % 32 == 0
    assert result.step_bytes_before < TARGET <= result.step_bytes_after
    assert result.path.stat().st_size > TARGET

    before, after = fields(src), fields(result.path)
    assert after.pop("llama.feed_forward_length") == result.n_ff_after
    assert after.pop(ORIGINAL_N_FF_KEY) == 96
    before.pop("llama.feed_forward_length")
    assert after == before  # tokenizer, chat template and everything else copied

    prompt = "def f(self):\n    return "
    assert greedy(result.path, prompt) == greedy(src, prompt)


@pytest.mark.parametrize("weight_type", ["f32", "q8_0"])
def test_original_weights_are_bit_identical_and_new_ones_zero(tmp_path, weight_type):
    src = tiny_gguf(tmp_path / "tiny.gguf", weight_type)
    dst = widen_gguf(src, tmp_path / "wide.gguf", target_weight_bytes=TARGET).path
    old = {t.name: t for t in gguf.GGUFReader(str(src)).tensors}
    new = {t.name: t for t in gguf.GGUFReader(str(dst)).tensors}
    assert list(old) == list(new)
    for name, t in old.items():
        a, b = np.asarray(t.data), np.asarray(new[name].data)
        assert new[name].tensor_type == t.tensor_type
        if "ffn_gate" in name or "ffn_up" in name:  # extra rows
            assert np.array_equal(b[:a.shape[0]].view(np.uint8), a.view(np.uint8))
            assert not b[a.shape[0]:].view(np.uint8).any()
        elif "ffn_down" in name:  # extra columns (whole Q8_0 blocks)
            assert np.array_equal(b[:, :a.shape[1]].view(np.uint8), a.view(np.uint8))
            assert not b[:, a.shape[1]:].view(np.uint8).any()
        else:
            assert np.array_equal(b.view(np.uint8), a.view(np.uint8)), name


def test_small_target_copies_without_new_units_and_rewidening_keeps_the_original(tmp_path):
    src = tiny_gguf(tmp_path / "tiny.gguf", "f32")
    result = widen_gguf(src, tmp_path / "same.gguf", target_weight_bytes=1)
    assert result.n_ff_after == result.n_ff_before
    assert result.step_bytes_after == result.step_bytes_before

    wide = widen_gguf(src, tmp_path / "wide.gguf", target_weight_bytes=2**20).path
    wider = widen_gguf(wide, tmp_path / "wider.gguf", target_weight_bytes=2 * 2**20)
    assert wider.n_ff_after > wider.n_ff_before > 96
    assert fields(wider.path)[ORIGINAL_N_FF_KEY] == 96


def test_bad_inputs_raise_domain_errors(tmp_path):
    src = tiny_gguf(tmp_path / "tiny.gguf", "f32")
    with pytest.raises(ModelFileError):
        widen_gguf(src, src)
    with pytest.raises(ModelFileError):
        widen_gguf(tmp_path / "missing.gguf", tmp_path / "out.gguf")
    text = tmp_path / "notes.gguf"
    text.write_text("not a model")
    with pytest.raises(ModelFileError):
        widen_gguf(text, tmp_path / "out.gguf")

    tokenizer = byte_level_tokenizer(["ab"])
    config = LlamaConfig(vocab_size=len(tokenizer.tokens), n_embd=64, n_layer=1, n_ff=96)
    weights = random_llama_weights(config)
    weights["blk.0.ffn_up.bias"] = np.zeros(96, np.float32)  # a bias would need widening too
    odd = write_llama_gguf(tmp_path / "bias.gguf", config, weights, tokenizer)
    with pytest.raises(UnsupportedModelError):
        widen_gguf(odd, tmp_path / "out.gguf")
    assert not (tmp_path / "out.gguf").exists()
