"""The memory model against real processes: predicted peak RSS within 10% of the measured one,
and memory that does not grow with rejected drafts."""

from __future__ import annotations

import numpy as np
import psutil
import pytest

from localspec.backends.llamacpp import LlamaCppBackend
from localspec.engine import Engine
from localspec.generate import generate
from localspec.memory import ModelMemory, calibrate, estimate, measure
from localspec.settings import BackendSettings, GenerationSettings
from tests.conftest import build_model


@pytest.fixture(scope="module")
def kv_heavy_model(model_dir):
    """~45 MB of f16 weights and 16 KiB of KV a token: context size moves the total a lot."""
    return build_model(model_dir / "kv_heavy.gguf", n_embd=512, n_layer=8, n_head=8, n_head_kv=8, n_ff=1024,
                       n_ctx=8192, weight_type="f16")


@pytest.mark.parametrize(("n_ctx", "tree_nodes", "drafter", "kv_type", "flash_attn"),
                         [(512, 0, "none", "f16", True), (2048, 16, "auto", "f16", True),
                          (8192, 64, "auto", "f16", True), (8192, 8, "none", "q8_0", None),
                          (2048, 16, "auto", "f16", None)])  # None: off on this CPU
def test_predicted_memory_matches_measured_peak_rss(kv_heavy_model, n_ctx, tree_nodes, drafter, kv_type,
                                                    flash_attn):
    scratch = calibrate(kv_heavy_model, n_threads=1)  # fitted at other batch sizes, then cached
    model = ModelMemory.from_gguf(kv_heavy_model)
    settings = BackendSettings(n_ctx=n_ctx, n_batch=128, n_threads=1, kv_type=kv_type,
                               max_tree_paths=max(1, min(tree_nodes, 32)), flash_attn=flash_attn)
    predicted = estimate(model, settings, tree_nodes, drafter, scratch)
    measured = measure(kv_heavy_model, settings, tree_nodes, drafter)
    assert predicted.kv_host == n_ctx * model.kv_bytes_per_token(kv_type)
    assert abs(predicted.host / measured.peak_rss - 1) < 0.10, (predicted.as_dict(), measured)


def test_memory_does_not_grow_with_rejected_drafts(tiny_model):
    """A long generation whose drafts are mostly rejected: RSS after 600 tokens is what it was
    after 100 (KV of rejected branches is dropped every step, buffers are reused)."""
    backend = LlamaCppBackend(tiny_model, BackendSettings(n_ctx=1024, n_threads=1, max_tree_paths=16))
    try:
        engine = Engine(backend)
        proc = psutil.Process()
        settings = GenerationSettings(max_tokens=300, drafter="recycling", max_draft_tokens=16)
        words = ("def the", "self = ", "for x in", "print")
        prompts = [backend.tokenize(w * 3, add_special=True) for w in words]
        generate(engine, prompts[0], settings)
        before = proc.memory_info().rss
        rejected = 0
        for _ in range(3):
            for prompt in prompts:
                stats = generate(engine, prompt, settings).stats
                rejected += stats.draft_tokens - stats.accepted_tokens
        after = proc.memory_info().rss
        assert rejected > 2000  # many rejected draft tokens
        # nothing left of the branches: the cache holds the committed tokens it has KV for (an
        # accepted node that was not right behind the root waits for the next batch)
        assert backend.kv_pos_max(0) == backend.n_cached - 1 >= len(backend.tokens) - 1 - 16
        assert all(backend.kv_pos_max(seq) < 0 for seq in range(1, backend.max_tree_paths))
        assert after - before < 4 << 20
    finally:
        backend.close()


def test_a_full_context_stops_clearly(tiny_model):
    backend = LlamaCppBackend(tiny_model, BackendSettings(n_ctx=64, n_threads=1))
    try:
        prompt = backend.tokenize("def the", add_special=True)
        result = generate(Engine(backend), prompt, GenerationSettings(max_tokens=500, drafter="auto"))
        assert result.finish_reason == "context"
        assert len(prompt) + len(result.tokens) <= backend.n_ctx + 1  # the last one needs no KV
        assert np.all(np.asarray(result.tokens) >= 0)
    finally:
        backend.close()
