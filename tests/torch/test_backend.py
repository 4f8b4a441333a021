"""Tree attention through the mask equals one-token decoding; skipping nothing is the full model;
loading holds the weights once."""

from __future__ import annotations

import gc
import weakref

import numpy as np
import torch

from localspec.backends import torch_model
from localspec.backends.torch_backend import TorchBackend, TorchSettings
from localspec.backends.torch_model import FULL, SkipSet, Transformer, read_weights
from localspec.tree import DraftTree


def sequential(backend, prompt: list[int], tokens: list[int]) -> np.ndarray:
    """Logits after prompt[-1] and after each of `tokens`, one token per forward."""
    backend.truncate(0)
    backend.prefill(prompt[:-1])
    rows, root = [], prompt[-1]
    for token in [*tokens, None]:
        rows.append(backend.verify(root, DraftTree.empty())[0].copy())
        backend.commit(root, DraftTree.empty(), [])
        root = token
    return np.array(rows)


def test_tree_rows_equal_sequential_decoding(torch_backend):
    rng = np.random.default_rng(0)
    prompt = rng.integers(0, torch_backend.n_vocab, 30).tolist()
    paths = [rng.integers(0, torch_backend.n_vocab, 4).tolist() for _ in range(3)]
    paths.append(paths[0][:2] + [7, 8])  # shares a prefix with path 0
    tree = DraftTree.from_paths(paths)
    torch_backend.truncate(0)
    torch_backend.prefill(prompt[:-1])
    logits = torch_backend.verify(prompt[-1], tree).copy()
    for path in paths:
        expected = sequential(torch_backend, prompt, path)
        nodes, node = [], -1
        for token in path:
            node = next(c for c in tree.children(node).tolist() if tree.tokens[c] == token)
            nodes.append(node)
        got = logits[[0] + [n + 1 for n in nodes]]
        np.testing.assert_allclose(got, expected, atol=1e-4, rtol=1e-4)


def test_commit_of_a_side_branch_keeps_the_cache_right(torch_backend):
    rng = np.random.default_rng(1)
    prompt = rng.integers(0, torch_backend.n_vocab, 20).tolist()
    good = rng.integers(0, torch_backend.n_vocab, 5).tolist()
    tree = DraftTree.from_paths([[1, 2, 3], good[:3], [good[0], 4]])
    torch_backend.truncate(0)
    torch_backend.prefill(prompt[:-1])
    torch_backend.verify(prompt[-1], tree)
    accepted = [3, 4, 5]  # the second path: good[:3]
    assert tree.tokens[accepted].tolist() == good[:3]
    torch_backend.commit(prompt[-1], tree, accepted)
    after = torch_backend.verify(good[3], DraftTree.chain(good[4:]))
    np.testing.assert_allclose(after, sequential(torch_backend, prompt, good)[4:], atol=1e-4, rtol=1e-4)


def test_bf16_batches_are_bit_identical_to_single_tokens(torch_model_path):
    """On CPU the model is batch-invariant, so speculation reproduces plain decoding exactly."""
    backend = TorchBackend(torch_model_path, TorchSettings(device="cpu", dtype="bfloat16", n_ctx=256,
                                                           n_threads=1))
    rng = np.random.default_rng(2)
    prompt = rng.integers(0, backend.n_vocab, 30).tolist()
    chain = rng.integers(0, backend.n_vocab, 12).tolist()
    expected = sequential(backend, prompt, chain)
    backend.truncate(0)
    backend.prefill(prompt[:-1])
    assert np.array_equal(backend.verify(prompt[-1], DraftTree.chain(chain)), expected)
    backend.close()


def test_empty_skip_set_is_the_full_model_and_skipping_changes_it(torch_backend):
    rng = np.random.default_rng(3)
    prompt = rng.integers(0, torch_backend.n_vocab, 16).tolist()
    torch_backend.truncate(0)
    torch_backend.prefill(prompt[:-1])
    n = torch_backend.n_vocab
    full = torch_backend.verify(prompt[-1], DraftTree.empty())[0].copy()
    n_past = len(torch_backend.tokens)
    mask = torch.ones(1, n_past + 1, dtype=torch.bool)

    def run(skip: SkipSet) -> np.ndarray:
        return torch_backend.run([prompt[-1]], [n_past], [n_past], mask, skip)[0].numpy()

    assert np.array_equal(run(FULL), full) and run(FULL).shape == (n,)
    assert np.array_equal(run(SkipSet()), full)
    assert not np.allclose(run(SkipSet(frozenset({1}), frozenset({1, 2}))), full, atol=1e-3)


def test_loading_frees_each_blocks_unfused_weights_before_the_next_block(torch_model_path, monkeypatch):
    """A block fuses q/k/v and gate/up into new tensors; were the unfused ones kept until the
    model is built, loading would hold those weights twice (GPU memory included)."""
    args, weights = read_weights(torch_model_path)
    unfused = [weakref.ref(weights[f"blk.{i}.{name}.weight"])
               for i in range(args.n_layer) for name in ("attn_q", "ffn_gate")]
    alive_when_built: list[list[bool]] = []
    build = torch_model.Block.__init__

    def spy(self, *a, **kw):
        gc.collect()
        alive_when_built.append([ref() is not None for ref in unfused])
        build(self, *a, **kw)

    monkeypatch.setattr(torch_model.Block, "__init__", spy)
    Transformer(args, weights, n_slots=64)
    for i, alive in enumerate(alive_when_built):  # block i: the earlier blocks' are gone
        assert alive == [layer >= i for layer in range(args.n_layer) for _ in range(2)]



def test_the_memory_model_counts_what_the_torch_backend_loads(torch_model_path):
    from localspec.memory import ModelMemory

    _, weights = read_weights(torch_model_path)
    memory = ModelMemory.from_gguf(torch_model_path)
    assert memory.n_params == sum(t.numel() for t in weights.values())
    assert memory.largest_tensor == max(t.numel() for t in weights.values())
