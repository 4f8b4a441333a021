"""Memory-model arithmetic on synthetic metadata: GQA, quantised KV, logits rows, offloading."""

from __future__ import annotations

import gguf
import pytest

from localspec.memory import (
    MiB,
    ModelMemory,
    ScratchModel,
    drafter_bytes,
    estimate,
    type_bytes,
)
from localspec.settings import BackendSettings
from tests.conftest import build_model


def llama3_8b_like() -> ModelMemory:
    """32 layers, 32 query heads sharing 8 KV heads of 128 dims (GQA), 128k vocabulary."""
    return ModelMemory(n_layer=32, n_embd=4096, n_head=32, n_head_kv=8, head_dim_k=128, head_dim_v=128,
                       n_ff=14336, n_vocab=128256, context_length=8192, layer_bytes=(200 * MiB,) * 32,
                       embd_bytes=250 * MiB, output_bytes=250 * MiB)


def test_kv_bytes_per_token_with_gqa_and_quantised_types():
    model = llama3_8b_like()
    assert model.kv_bytes_per_token("f16") == 32 * 2 * 8 * 128 * 2 == 128 * 1024
    assert model.kv_bytes_per_token("f32") == 2 * model.kv_bytes_per_token("f16")
    # q8_0: blocks of 32 values in 34 bytes; q4_0: 18 bytes
    assert model.kv_bytes_per_token("q8_0") == 32 * 2 * (1024 // 32) * 34
    assert model.kv_bytes_per_token("q4_0") == 32 * 2 * (1024 // 32) * 18
    assert type_bytes("q8_0", 33) == 2 * 34  # a partial block is stored whole
    with pytest.raises(ValueError):
        type_bytes("q3_z", 32)


def test_estimate_adds_up_and_logits_follow_tree_rows():
    model = llama3_8b_like()
    scratch = ScratchModel(runtime_bytes=50 * MiB, fixed_bytes=10 * MiB, per_batch_token=1000.0)
    settings = BackendSettings(n_ctx=8192, n_batch=512, n_threads=1, kv_type="q8_0", max_tree_paths=16)
    mem = estimate(model, settings, tree_nodes=63, drafter="auto", scratch=scratch)
    assert mem.kv_host == 8192 * model.kv_bytes_per_token("q8_0")
    assert mem.weights_host == model.weights_bytes and mem.device == 0
    assert mem.logits == 64 * 128256 * 4  # root + 63 nodes, never the 512-row batch
    assert mem.compute_host == 10 * MiB + 512 * 1000 + 8192 * 512 * 2
    assert mem.total == sum(host + device for _, host, device in mem.rows())
    fewer = estimate(model, settings, tree_nodes=7, drafter="auto", scratch=scratch)
    assert fewer.logits == 17 * 128256 * 4  # one output row per sequence: 16 paths + the pad
    plain = estimate(model, settings, tree_nodes=0, drafter="none", scratch=scratch)
    assert plain.drafter < mem.drafter
    assert drafter_bytes("auto", model, 8192) - drafter_bytes("retrieval", model, 8192) > 128256 * 8 * 4


def test_offloaded_layers_move_weights_and_kv_to_the_device():
    model = llama3_8b_like()
    scratch = ScratchModel(50 * MiB, 10 * MiB, 1000.0)
    part = estimate(model, BackendSettings(n_ctx=4096, n_threads=1, n_gpu_layers=8), 0, "none", scratch)
    assert part.weights_device == 8 * 200 * MiB
    assert part.kv_device == 8 * 4096 * model.kv_bytes_per_token_layer("f16")
    assert part.kv_host == 24 * 4096 * model.kv_bytes_per_token_layer("f16")
    full = estimate(model, BackendSettings(n_ctx=4096, n_threads=1, n_gpu_layers=-1), 0, "none", scratch)
    assert full.weights_device == 32 * 200 * MiB + 250 * MiB  # the output layer goes too
    assert full.weights_host == 250 * MiB  # token embeddings stay on the CPU
    assert full.kv_host == 0 and full.compute_device > 0


def test_model_memory_from_a_real_gguf(model_dir):
    path = build_model(model_dir / "mem_gqa.gguf", n_embd=128, n_layer=3, n_head=8, n_head_kv=2,
                       n_ff=256, weight_type="f16")
    model = ModelMemory.from_gguf(path)
    reader = gguf.GGUFReader(str(path))
    assert model.weights_bytes == sum(int(t.n_bytes) for t in reader.tensors)
    assert len(model.layer_bytes) == 3 and len(set(model.layer_bytes)) == 1
    assert (model.n_head, model.n_head_kv, model.head_dim_k, model.n_ff) == (8, 2, 16, 256)
    assert model.kv_bytes_per_token("f16") == 3 * 2 * 2 * 16 * 2


def test_flash_attention_is_off_on_a_cpu_alone_and_its_scores_are_counted():
    assert BackendSettings().resolved_flash_attn is False
    assert BackendSettings(kv_type="q8_0").resolved_flash_attn is None  # a quantised V needs it
    assert BackendSettings(n_gpu_layers=-1).resolved_flash_attn is None  # llama.cpp decides
    assert BackendSettings(flash_attn=True).resolved_flash_attn is True
    assert BackendSettings().speed_key != BackendSettings(flash_attn=True).speed_key  # curves apart
    model = llama3_8b_like()
    scratch = ScratchModel(runtime_bytes=50 * MiB, fixed_bytes=10 * MiB, per_batch_token=1000.0)
    cpu = estimate(model, BackendSettings(n_ctx=8192, n_batch=512), 15, "auto", scratch)
    fa = estimate(model, BackendSettings(n_ctx=8192, n_batch=512, flash_attn=True), 15, "auto", scratch)
    assert cpu.compute_host - fa.compute_host == 8192 * 512 * model.n_head * 4
