"""Priming Token Recycling's matrix from the model: every unknown token's successors after the
start token, without touching what was learnt, and generation stays lossless."""

from __future__ import annotations

import numpy as np

from localspec.drafters.priming import prime_recycling
from localspec.drafters.recycling import TokenRecyclingDrafter
from localspec.engine import Engine
from localspec.generate import generate
from localspec.settings import GenerationSettings
from localspec.tree import DraftTree


def successor_after_start(backend, token: int) -> int:
    backend.truncate(0)
    logits = backend.verify(backend.bos_token, DraftTree.chain([token]))
    best = int(np.argmax(logits[1]))
    backend.commit(backend.bos_token, DraftTree.chain([token]), [])
    backend.truncate(0)
    return best


def test_priming_fills_every_row_with_the_models_guess_after_the_start(tiny_backend, rng):
    drafter = TokenRecyclingDrafter()
    assert prime_recycling(tiny_backend, drafter) == tiny_backend.n_vocab
    assert (drafter.adj >= 0).all()
    assert tiny_backend.tokens == []  # the cache is left empty
    sample = rng.choice(tiny_backend.n_vocab, 40, replace=False)
    agree = np.mean([drafter.adj[t, 0] == successor_after_start(tiny_backend, int(t)) for t in sample])
    assert agree >= 0.9  # one batch shape against another may round a near tie differently


def test_priming_keeps_learnt_rows_and_honours_the_deadline(tiny_backend):
    drafter = TokenRecyclingDrafter(n_vocab=tiny_backend.n_vocab)
    drafter.adj[:5] = np.arange(8)
    assert prime_recycling(tiny_backend, drafter, deadline_s=0.0) == 0
    assert (drafter.adj[5:] == -1).all()
    assert prime_recycling(tiny_backend, drafter) == tiny_backend.n_vocab - 5
    assert (drafter.adj[:5] == np.arange(8)).all()


def test_a_primed_auto_drafter_stays_lossless(tiny_backend):
    prompt = tiny_backend.tokenize("def the for x in self")
    plain = generate(Engine(tiny_backend), prompt, GenerationSettings(max_tokens=40, drafter="none"))
    engine = Engine(tiny_backend)
    prime_recycling(tiny_backend, engine.drafter("auto").recycling)
    primed = generate(engine, prompt, GenerationSettings(max_tokens=40, drafter="auto"))
    assert primed.tokens == plain.tokens
