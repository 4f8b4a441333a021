"""The auto drafter: lossless, fuses retrieval and recycling, names the regime it used."""

from __future__ import annotations

import numpy as np

from localspec.drafters.auto import AutoDrafter
from localspec.drafters.base import without_match
from localspec.drafters.recycling import TokenRecyclingDrafter
from localspec.engine import Engine
from localspec.generate import generate
from localspec.settings import GenerationSettings
from localspec.tree import DraftTree
from localspec.verify import Verdict


def test_long_match_puts_the_retrieval_chain_first():
    drafter = AutoDrafter(min_match=3)
    history = np.array([1, 2, 3, 4, 5, 6, 9, 1, 2, 3, 4], np.int32)
    drafter.begin(history)
    tree = drafter.propose(history, 4)
    assert tree.source == "auto:retrieval:4"  # regime and match length, learnt apart
    assert tree.tokens[:2].tolist() == [5, 6]


def test_no_match_uses_recycling():
    drafter = AutoDrafter()
    history = np.array([1, 2, 3], np.int32)
    drafter.begin(history)
    assert drafter.propose(history, 4).source == "auto:recycling:0c0"  # nothing known after 3


def test_recycling_sources_name_the_context_that_drafted_the_root(rng):
    drafter = AutoDrafter()
    drafter.recycling = TokenRecyclingDrafter(50)
    history = np.array([4, 1, 2, 3], np.int32)
    drafter.begin(history)
    drafter.recycling.adj[3] = np.arange(8)
    assert drafter.propose(history, 4).source == "auto:recycling:0c1"  # 3's own row
    tree = DraftTree(np.array([5], np.int32), np.array([-1], np.int32))
    drafter.observe(tree, rng.standard_normal((2, 50)).astype(np.float32), Verdict([], [3]))
    # the rows after (1, 2, 3) and (2, 3) are known now; after (9, 2, 3) only (2, 3)'s
    assert drafter.propose(history, 4).source == "auto:recycling:0c3"
    assert drafter.propose(np.array([9, 2, 3], np.int32), 4).source == "auto:recycling:0c2"
    assert without_match("auto:recycling:0c3") == "auto:recycling" == without_match("auto:recycling:2")
    assert drafter.propose(np.array([3, 1, 3], np.int32), 4).source == "auto:recycling:1c1"  # (3) matched


def test_auto_is_lossless_and_accepts_on_loops(loopy_backend, tiny_backend):
    for backend in (tiny_backend, loopy_backend):
        prompt = backend.tokenize("for x in self: print(x)\n" * 3)
        plain = generate(Engine(backend), prompt, GenerationSettings(max_tokens=60, drafter="none"))
        auto = generate(Engine(backend), prompt, GenerationSettings(max_tokens=60, drafter="auto"))
        assert auto.tokens == plain.tokens
    assert auto.stats.mean_accepted > 1.5


def test_proposals_shrink_to_what_the_budget_verified(rng):
    drafter = AutoDrafter()
    drafter.recycling = TokenRecyclingDrafter(50, context_orders=())  # one source throughout
    history = np.array([7, 3], np.int32)
    drafter.begin(history)
    drafter.recycling.adj[:] = np.stack([rng.permutation(50)[:8] for _ in range(50)])
    logits = rng.standard_normal((2, 50)).astype(np.float32)
    first = drafter.propose(history, 16)
    assert first.source == "auto:recycling:0c1" and len(first) == 16  # nothing verified yet
    drafter.observe(first.truncated(1), logits, Verdict([], [3]))  # the budget kept one node
    assert len(drafter.propose(history, 16)) == 4  # twice that, plus two
    drafter.observe(first.truncated(0), logits[:1], Verdict([], [3]))
    assert len(drafter.propose(history, 16)) == 4  # the most of the recent trees counts
    assert len(drafter.propose(history, 3)) == 3  # never more than the engine's budget
    drafter.observe(first.truncated(7), np.zeros((8, 50), np.float32), Verdict([], [3]))
    assert len(drafter.propose(history, 20)) == 16
