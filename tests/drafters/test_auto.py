"""The auto drafter: lossless, fuses retrieval and recycling, names the regime it used."""

from __future__ import annotations

import numpy as np

from localspec.drafters.auto import AutoDrafter
from localspec.engine import Engine
from localspec.generate import generate
from localspec.settings import GenerationSettings


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
    assert drafter.propose(history, 4).source == "auto:recycling:0"


def test_auto_is_lossless_and_accepts_on_loops(loopy_backend, tiny_backend):
    for backend in (tiny_backend, loopy_backend):
        prompt = backend.tokenize("for x in self: print(x)\n" * 3)
        plain = generate(Engine(backend), prompt, GenerationSettings(max_tokens=60, drafter="none"))
        auto = generate(Engine(backend), prompt, GenerationSettings(max_tokens=60, drafter="auto"))
        assert auto.tokens == plain.tokens
    assert auto.stats.mean_accepted > 1.5
