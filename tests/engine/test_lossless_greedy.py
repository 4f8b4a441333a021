"""Greedy speculative decoding is token-identical to plain decoding, whatever the drafts."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from localspec.engine import Engine
from localspec.generate import generate
from localspec.settings import GenerationSettings
from localspec.tree import DraftTree
from tests.helpers import ScriptedDrafter

MODES = ["right", "wrong", "mixed", "duplicates", "deep"]


def oracle_tree(rng: np.random.Generator, mode: str, truth: list[int], budget: int, n_vocab: int
                ) -> DraftTree:
    """Draft trees built from the true continuation, from all-right to all-wrong."""
    def wrong(token: int) -> int:
        return int((token + 1 + rng.integers(n_vocab - 1)) % n_vocab)

    if not truth or budget == 0:
        return DraftTree.empty("scripted")
    if mode == "right":
        return DraftTree.chain(truth[:budget], "scripted")
    if mode == "wrong":
        return DraftTree.chain([wrong(truth[0])] + rng.integers(0, n_vocab, budget - 1).tolist(),
                               "scripted")
    if mode == "deep":
        k = int(rng.integers(0, min(budget, len(truth)) + 1))
        return DraftTree.chain((truth[:k] + rng.integers(0, n_vocab, budget).tolist())[:budget],
                               "scripted")
    paths = []
    for _ in range(int(rng.integers(1, 5))):
        k = int(rng.integers(0, min(4, len(truth)) + 1))
        paths.append(truth[:k] + rng.integers(0, n_vocab, int(rng.integers(1, 4))).tolist())
    tree = DraftTree.from_paths(paths, "scripted")
    if mode == "duplicates":  # the same token twice under one parent
        tokens = np.concatenate([tree.tokens, tree.tokens[:1]])
        parents = np.concatenate([tree.parents, [-1]]).astype(np.int32)
        tree = DraftTree(tokens, parents, "scripted")
    return tree.truncated(budget)


@settings(max_examples=100, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seed=st.integers(0, 2**32 - 1), prompt_len=st.integers(1, 40), mode=st.sampled_from(MODES),
       draft_tokens=st.integers(1, 16))
def test_speculative_greedy_equals_plain(tiny_backend, seed, prompt_len, mode, draft_tokens):
    rng = np.random.default_rng(seed)
    n_vocab = tiny_backend.n_vocab
    prompt = rng.integers(0, n_vocab, prompt_len).tolist()
    plain = generate(Engine(tiny_backend), prompt,
                     GenerationSettings(max_tokens=24, drafter="none")).tokens

    def make_tree(history: np.ndarray, budget: int) -> DraftTree:
        produced = len(history) - len(prompt)
        return oracle_tree(rng, mode, plain[produced:], budget, n_vocab)

    drafter = ScriptedDrafter(make_tree)
    engine = Engine(tiny_backend, {"scripted": drafter})
    spec = generate(engine, prompt, GenerationSettings(max_tokens=24, drafter="scripted",
                                                       max_draft_tokens=draft_tokens))
    assert spec.tokens == plain
    if mode == "right" and len(plain) == 24 and draft_tokens > 1:
        assert spec.stats.steps < len(plain)  # right drafts really were accepted


@pytest.mark.parametrize("drafter", ["none", "lookup"])
def test_repetitive_prompt_lookup_accepts_more_than_one_token_per_step(loopy_backend, drafter):
    engine = Engine(loopy_backend)
    prompt = loopy_backend.tokenize("for x in self: print(x)\n" * 4)
    result = generate(engine, prompt, GenerationSettings(max_tokens=120, drafter=drafter))
    baseline = generate(engine, prompt, GenerationSettings(max_tokens=120, drafter="none"))
    assert result.tokens == baseline.tokens
    if drafter == "lookup":
        assert result.stats.mean_accepted > 1.5
        assert result.stats.accepted_tokens > 0
    else:
        assert result.stats.mean_accepted == 1.0
