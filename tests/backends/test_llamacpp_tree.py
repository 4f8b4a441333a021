"""Tree verification on llama.cpp: one decode equals sequential decoding, and the KV cache keeps
exactly the committed tokens."""

from __future__ import annotations

import numpy as np
import pytest

from localspec.backends.llamacpp import LlamaCppBackend
from localspec.demo import demo_model_path
from localspec.errors import ContextOverflowError
from localspec.settings import BackendSettings
from localspec.tree import DraftTree


def random_tree(rng: np.random.Generator, n_nodes: int, n_vocab: int) -> DraftTree:
    parents = np.array([rng.integers(-1, i) if i else -1 for i in range(n_nodes)], np.int32)
    return DraftTree(rng.integers(0, n_vocab, n_nodes).astype(np.int32), parents)


def sequential_logits(backend, context: list[int]) -> np.ndarray:
    """Logits after `context`, decoded one plain step after a prefill."""
    backend.truncate(0)
    backend.prefill(context[:-1])
    row = backend.verify(context[-1], DraftTree.empty())[0].copy()
    backend.commit(context[-1], DraftTree.empty(), [])
    return row


@pytest.mark.parametrize("seed", range(6))
def test_tree_logits_equal_sequential_logits(tiny_model, seed):
    rng = np.random.default_rng(seed)
    settings = BackendSettings(n_ctx=256, n_threads=1)
    with LlamaCppBackend(tiny_model, settings) as tree_backend, \
            LlamaCppBackend(tiny_model, settings) as plain_backend:
        prompt = rng.integers(0, tree_backend.n_vocab, 12).tolist()
        tree = random_tree(rng, int(rng.integers(1, 24)), tree_backend.n_vocab)
        tree_backend.prefill(prompt[:-1])
        logits = tree_backend.verify(prompt[-1], tree).copy()
        assert logits.shape == (len(tree) + 1, tree_backend.n_vocab)
        for row in range(len(tree) + 1):
            path = tree.tokens[tree.path_to(row - 1)].tolist() if row else []
            expected = sequential_logits(plain_backend, prompt + path)
            np.testing.assert_allclose(logits[row], expected, atol=1e-3, rtol=0)


def test_duplicate_siblings_get_identical_logits(tiny_backend):
    backend = tiny_backend
    backend.truncate(0)
    backend.prefill([1, 2, 3])
    tree = DraftTree(np.array([7, 7, 9, 9], np.int32), np.array([-1, -1, 0, 1], np.int32))
    logits = backend.verify(4, tree).copy()
    backend.commit(4, tree, [])
    np.testing.assert_allclose(logits[1], logits[2], atol=1e-4)
    np.testing.assert_allclose(logits[3], logits[4], atol=1e-4)


def plain_decode_logits(backend, prompt: list[int], continuation: list[int]) -> np.ndarray:
    """Logits after prompt + continuation, the continuation decoded one token per step."""
    backend.truncate(0)
    backend.prefill(prompt[:-1])
    for token in [prompt[-1], *continuation]:
        row = backend.verify(token, DraftTree.empty())[0].copy()
        backend.commit(token, DraftTree.empty(), [])
    return row


def speculate_randomly(model, settings: BackendSettings, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Verify random trees, accept random paths, then decode one more token; returns its logits
    and those of plain decoding of the same tokens."""
    rng = np.random.default_rng(100 + seed)
    with LlamaCppBackend(model, settings) as backend:
        prompt = rng.integers(0, backend.n_vocab, 10).tolist()
        backend.prefill(prompt[:-1])
        root = prompt[-1]
        committed = prompt[:-1]
        for _ in range(6):
            tree = random_tree(rng, int(rng.integers(0, 12)), backend.n_vocab)
            backend.verify(root, tree)
            # accept a random root-to-node path, as a verifier might
            node = int(rng.integers(-1, len(tree))) if len(tree) else -1
            accepted = tree.path_to(node)
            backend.commit(root, tree, accepted)
            committed = committed + [root] + tree.tokens[accepted].tolist()
            assert backend.tokens == committed
            # the accepted nodes not right behind the root wait for the next batch
            assert len(committed) - len(accepted) <= backend.n_cached <= len(committed)
            assert backend.kv_pos_max(0) == backend.n_cached - 1
            for seq in range(1, backend.max_tree_paths):
                assert backend.kv_pos_max(seq) == -1  # branch sequences are empty again
            root = int(rng.integers(0, backend.n_vocab))
        # the cache now continues bit for bit like plain decoding of the same tokens
        cont = backend.verify(root, DraftTree.empty())[0].copy()
        backend.commit(root, DraftTree.empty(), [])
        assert backend.n_cached == len(committed) + 1
    with LlamaCppBackend(model, settings) as plain:
        return cont, plain_decode_logits(plain, prompt, committed[len(prompt):] + [root])


@pytest.mark.parametrize("seed", range(8))
def test_cache_holds_prefix_plus_accepted_after_each_step(tiny_model, seed):
    cont, plain = speculate_randomly(tiny_model, BackendSettings(n_ctx=256, n_threads=1), seed)
    # f32 weights: llama.cpp's matrix products round differently for other batch sizes
    np.testing.assert_allclose(cont, plain, atol=5e-3)


@pytest.mark.parametrize("flash_attn", [True, False])
@pytest.mark.parametrize("seed", range(4))
def test_speculation_leaves_the_cache_bit_identical_to_plain_decoding(seed, flash_attn):
    """Quantised weights multiply the same for any batch size; then only the order of the cache
    cells can change the sums, and the backend keeps it the order of plain decoding."""
    settings = BackendSettings(n_ctx=256, n_threads=2, flash_attn=flash_attn)
    cont, plain = speculate_randomly(demo_model_path(), settings, seed)
    np.testing.assert_array_equal(cont, plain)


def test_truncate_keeps_a_reusable_prefix(tiny_backend):
    backend = tiny_backend
    backend.truncate(0)
    backend.prefill([5, 6, 7, 8, 9])
    backend.truncate(3)
    assert backend.tokens == [5, 6, 7]
    assert backend.kv_pos_max(0) == 2


def test_prompt_beyond_context_is_refused(tiny_model):
    with LlamaCppBackend(tiny_model, BackendSettings(n_ctx=32, n_threads=1)) as backend, \
            pytest.raises(ContextOverflowError):
        backend.prefill([1] * (backend.n_ctx + 10))


def test_tokenizer_round_trip_and_special_tokens(tiny_backend):
    text = "def f(self):\n    return 'héllo 世界'"
    ids = tiny_backend.tokenize(text, add_special=False)
    assert b"".join(tiny_backend.token_bytes(t) for t in ids).decode() == text
    im_end = tiny_backend.tokenize("<|im_end|>", add_special=False, parse_special=True)
    assert len(im_end) == 1 and tiny_backend.is_eog(im_end[0])
    assert not tiny_backend.is_eog(ids[0])
