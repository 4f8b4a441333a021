"""Suffix-automaton retrieval: the maintained match against brute force, incremental == fresh."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from localspec.drafters.retrieval import SuffixAutomaton, SuffixAutomatonDrafter
from localspec.engine import Engine
from localspec.generate import generate
from localspec.settings import GenerationSettings

texts = st.integers(1, 4).flatmap(lambda k: st.lists(st.integers(0, k - 1), min_size=1, max_size=60))


def brute_match(text: list[int]) -> tuple[int, list[int]]:
    """Longest suffix of `text` that also ends at an earlier position, and all those positions."""
    n = len(text)
    for length in range(n - 1, 0, -1):
        suffix = text[n - length:]
        ends = [e for e in range(length - 1, n - 1) if text[e - length + 1:e + 1] == suffix]
        if ends:
            return length, ends
    return 0, []


@settings(max_examples=200, deadline=None, derandomize=True)
@given(text=texts, exact=st.booleans())
def test_match_after_every_token_equals_brute_force(text, exact):
    sam = SuffixAutomaton(recency_hops=None if exact else 2)
    for i, token in enumerate(text):
        sam.append(token)
        prefix = text[:i + 1]
        length, ends = brute_match(prefix)
        assert sam.match_length == length
        if length == 0:
            assert sam.match_end == -1 and len(sam.continuation(8)) == 0
            continue
        if exact:
            assert sam.match_end == max(ends)  # the most recent earlier occurrence
        else:
            assert sam.match_end in ends
        e = sam.match_end
        known = prefix[e + 1:e + 9]
        assert sam.continuation(8).tolist() == known  # stops at the end of the known text
        assert sam.continuation(8, cyclic=True).tolist() == (known * 8)[:8]  # or copies on
    assert sam.text.tolist() == text
    assert sam.n_states <= max(2 * len(text) - 1, 2)  # linear size


@settings(max_examples=100, deadline=None, derandomize=True)
@given(text=texts, cuts=st.lists(st.integers(1, 60), max_size=6), budget=st.integers(0, 20),
       cyclic=st.booleans())
def test_incremental_updates_equal_a_fresh_build(text, cuts, budget, cyclic):
    history = np.array(text, np.int32)
    drafter = SuffixAutomatonDrafter(recency_hops=None, cyclic=cyclic)
    drafter.begin(history[:1])
    for cut in sorted(c for c in cuts if c <= len(text)) + [len(text)]:
        tree = drafter.propose(history[:cut], budget)
    fresh = SuffixAutomatonDrafter(recency_hops=None, cyclic=cyclic)
    expected = fresh.propose(history, budget)
    assert tree.tokens.tolist() == expected.tokens.tolist()
    assert tree.parents.tolist() == list(range(-1, len(tree) - 1))
    assert drafter.match_length == fresh.match_length
    assert drafter.automaton.n_states == fresh.automaton.n_states
    length, ends = brute_match(text)
    n_draft = min(budget, 16, 1 + 4 * length) if length else 0
    known = text[max(ends, default=0) + 1:]
    if not cyclic:
        n_draft = min(n_draft, len(known))
    assert len(tree) == n_draft
    assert tree.tokens.tolist() == (known * 16)[:n_draft]


def test_draft_length_follows_the_match_length_rule():
    history = np.array([7, 1, 2, 3, 4, 5, 6, 8, 9, 1, 9] + list(range(20, 40)) + [7, 1], np.int32)
    drafter = SuffixAutomatonDrafter()
    tree = drafter.propose(history, 16)
    assert drafter.match_length == 2
    assert tree.tokens.tolist() == [2, 3, 4, 5, 6, 8, 9, 1, 9]  # 1 + 4 * 2 tokens
    assert tree.source == "retrieval:2"  # the budget learns each match length apart
    assert drafter.propose(history, 3).tokens.tolist() == [2, 3, 4]
    assert len(drafter.propose(history, 0)) == 0
    assert len(SuffixAutomatonDrafter().propose(np.array([1, 2, 3], np.int32), 8)) == 0


def test_the_most_recent_occurrence_wins_and_drafts_may_stop_at_known_text():
    x, y, z, a, b = 10, 11, 12, 1, 2
    history = np.array([x, a, b, 3, y, a, b, 4, y, a, b, 5, z, a, b], np.int32)
    assert SuffixAutomatonDrafter(cyclic=False).propose(history, 16).tokens.tolist() == [5, z, a, b]
    assert SuffixAutomatonDrafter().propose(history, 16).tokens.tolist() == [5, z, a, b] * 2 + [5]
    run = np.array([a, a, a, a], np.int32)
    assert SuffixAutomatonDrafter(cyclic=False).propose(run, 16).tokens.tolist() == [a]
    assert SuffixAutomatonDrafter().propose(run, 16).tokens.tolist() == [a] * 13  # 1 + 4 * 3


def test_begin_keeps_the_automaton_for_an_extended_prompt_and_resets_otherwise():
    drafter = SuffixAutomatonDrafter()
    drafter.begin(np.array([1, 2, 3, 1, 2], np.int32))
    kept = drafter.automaton
    drafter.begin(np.array([1, 2, 3, 1, 2, 3, 4], np.int32))
    assert drafter.automaton is kept and len(kept) == 7
    drafter.begin(np.array([5, 6], np.int32))
    assert drafter.automaton is not kept and drafter.automaton.text.tolist() == [5, 6]
    assert drafter.propose(np.array([9, 1, 9], np.int32), 4).tokens.tolist() == [1, 9, 1, 9]  # no begin


def test_long_repetitive_text_stays_linear():
    rng = np.random.default_rng(0)
    cycle = rng.integers(0, 150_000, 7)
    text = np.concatenate([rng.integers(0, 150_000, 500), np.tile(cycle, 400)]).astype(np.int32)
    drafter = SuffixAutomatonDrafter(cyclic=False)
    tree = drafter.propose(text, 16)
    assert drafter.automaton.n_states < 2 * len(text)
    assert drafter.match_length == len(text) - 500 - 7
    assert tree.tokens.tolist() == cycle.tolist()  # the known text ends one cycle after the match
    assert SuffixAutomatonDrafter().propose(text, 16).tokens.tolist() == np.resize(cycle, 16).tolist()


@settings(max_examples=10, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seed=st.integers(0, 2**32 - 1), prompt_len=st.integers(1, 40), repeat=st.booleans())
def test_greedy_output_with_retrieval_equals_plain_decoding(tiny_backend, seed, prompt_len, repeat):
    rng = np.random.default_rng(seed)
    prompt = rng.integers(0, tiny_backend.n_vocab, prompt_len).tolist()
    if repeat:
        prompt = prompt * 3
    plain = generate(Engine(tiny_backend), prompt, GenerationSettings(max_tokens=40, drafter="none"))
    engine = Engine(tiny_backend, {"retrieval": SuffixAutomatonDrafter()})
    spec = generate(engine, prompt, GenerationSettings(max_tokens=40, drafter="retrieval"))
    assert spec.tokens == plain.tokens


@pytest.mark.parametrize("text", ["for x in self: print(x)\n" * 4, "import the def"])
@pytest.mark.parametrize("cyclic", [True, False])
def test_retrieval_accepts_more_than_one_token_per_step_on_a_loopy_model(loopy_backend, text, cyclic):
    drafter = SuffixAutomatonDrafter(cyclic=cyclic)
    engine = Engine(loopy_backend, {"retrieval": drafter})
    prompt = loopy_backend.tokenize(text)
    baseline = generate(engine, prompt, GenerationSettings(max_tokens=120, drafter="none"))
    for _ in range(2):  # the same prompt again: the automaton starts afresh
        result = generate(engine, prompt, GenerationSettings(max_tokens=120, drafter="retrieval"))
        assert result.tokens == baseline.tokens
        assert result.stats.mean_accepted > (1.5 if cyclic else 1.2)
