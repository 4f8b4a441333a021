"""Layer skipping (SWIFT, DEL): the skip-set search and its cache, tree plans, drafting."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch

from localspec.backends.torch_backend import chain_parents
from localspec.backends.torch_model import SkipSet
from localspec.budget import CostCurve
from localspec.drafters.layerskip import (
    LayerSkipDrafter,
    LayerSkipSettings,
    device_gumbel,
    draft_plan,
    guesses,
    plan_tree,
)
from localspec.drafters.polybasic import torch_drafter_factory
from localspec.drafters.skipsets import SkipSetSearch
from localspec.engine import Engine
from localspec.generate import generate
from localspec.sampling import GumbelNoise
from localspec.settings import GenerationSettings, SamplingSettings
from localspec.tree import DraftTree
from localspec.verify import Verdict
from tests.torch.drafting import CURVE, FAST, after_a_verdict, search_until_settled


def test_layerskip_drafts_once_a_skip_set_is_found(engine, torch_backend):
    skipper = engine.drafter("layerskip")
    skipper.skip, skipper.settled = SkipSet(frozenset(), frozenset({2})), True  # a fixed, mild skip
    prompt = np.random.default_rng(5).integers(0, torch_backend.n_vocab, 12).tolist()
    result = generate(engine, prompt, GenerationSettings(max_tokens=30, drafter="layerskip",
                                                         max_draft_tokens=8))
    assert result.stats.draft_tokens > 0 and result.stats.accepted_tokens > 0


def test_layerskip_declines_to_draft_when_it_does_not_pay_but_still_probes(torch_backend):
    settings = LayerSkipSettings(probe_every=3)
    drafter = LayerSkipDrafter(torch_backend, CURVE, settings, task="decline-test")
    prompt = np.random.default_rng(7).integers(0, torch_backend.n_vocab, 12).astype(np.int32)
    torch_backend.truncate(0)
    torch_backend.prefill(prompt[:-1].tolist())
    drafter.begin(prompt)
    drafter.skip, drafter.settled = SkipSet(frozenset(), frozenset({2})), True
    drafter.stats.rates[:] = 0.01  # its guesses are almost never right
    sizes = [len(drafter.propose(prompt, 8)) for _ in range(8)]
    assert sizes[:3] == [0, 0, 0] and sizes[3] > 0  # three declined steps, then one probe
    assert sizes[4:7] == [0, 0, 0] and drafter.level_seconds is not None


def test_optimised_skip_set_is_cached_per_task(torch_backend):
    drafter, prompt = search_until_settled(torch_backend, CURVE, FAST, "cache-test", seed=6)
    assert 0 < drafter.evals <= FAST.max_evals
    again = LayerSkipDrafter(torch_backend, CURVE, FAST, task="cache-test")
    again.begin(prompt[:20])
    assert again.settled and again.skip == drafter.skip


def test_skip_sets_are_scored_against_the_full_model_from_the_first_step(torch_backend):
    """No generated text is needed: the first step takes the prompt's last tokens as the window
    and the full model's guesses there as targets, so the full model scores 1.0 on it."""
    drafter = LayerSkipDrafter(torch_backend, CURVE, FAST, task="window-test")
    prompt = np.random.default_rng(10).integers(0, torch_backend.n_vocab, 30).astype(np.int32)
    torch_backend.truncate(0)
    torch_backend.prefill(prompt[:-1].tolist())
    drafter.begin(prompt)
    after_a_verdict(drafter, torch_backend, prompt)
    assert drafter.evals == 0  # the first step scores the exits
    first, inputs, targets = drafter._window
    assert first == 29 - FAST.window and inputs.tolist() == prompt[first:29].tolist()
    assert drafter.rank_rates(SkipSet())[0] == 1.0
    n_layer = torch_backend.model.args.n_layer
    after_a_verdict(drafter, torch_backend, prompt)  # then the MLP tails, shortest first
    assert drafter.evals == 1 and not drafter.search.X and len(drafter._tails) == n_layer - 2


def test_search_gives_up_at_half_its_evaluations_when_no_set_can_pay(torch_backend):
    steep = CostCurve((1, 2, 64), (0.010, 0.020, 0.640))  # every verified draft costs a full step
    settings = LayerSkipSettings(min_window=4, window=16, max_evals=8)
    drafter, _ = search_until_settled(torch_backend, steep, settings, "hopeless-test", seed=8)
    assert drafter.skip is None and drafter.evals == settings.max_evals // 2


def test_search_stops_at_half_its_evaluations_when_no_set_beats_the_bar(torch_backend):
    """Polybasic raises the bar from plain decoding to what its model-free chain delivers: a
    set that only beats plain decoding is kept, but not searched past half the budget."""
    settings = LayerSkipSettings(min_window=4, window=16, max_evals=8, target_score=1.01)
    low, _ = search_until_settled(torch_backend, CURVE, settings, "bar-low", seed=6)
    assert low.skip is not None and low.evals == settings.max_evals
    high, _ = search_until_settled(torch_backend, CURVE, settings, "bar-high", seed=6, bar=1e9)
    assert high.skip is not None and high.evals == settings.max_evals // 2


def test_search_never_skips_first_or_last_layer_and_bo_proposes_untried():
    search = SkipSetSearch(6, bo_every=2)
    for step in range(12):
        bits = search.propose()
        skip = search.to_skip(bits)
        assert not ({0, 5} & (skip.attn | skip.mlp))
        assert bits.tobytes() not in search.tried or step == 0
        search.record(bits, float(bits[:2].sum() - bits[2:].sum()))


FLAT = np.linspace(1.0, 1.3, 33)  # verifying 32 drafts costs 30% more than one token


STEEP = np.arange(1.0, 34.0)  # every verified draft costs a full forward


def test_plan_is_a_wide_deep_tree_on_a_flat_curve_and_nothing_worth_it_on_a_steep_one():
    good = np.tile([0.6, 0.2, 0.1, 0.05], (8, 1))
    paths, speed = plan_tree(good, 0.1, FLAT, 32)
    depths = [len(p) for p in paths]
    assert len(paths) >= 16 and max(depths) >= 3 and speed > 2.0
    assert sum(len(p) == 1 for p in paths) >= 3  # several first guesses, not only a chain
    paths, speed = plan_tree(good, 0.1, STEEP, 32)
    assert speed < 1.0  # plain decoding is faster: the caller drafts nothing
    paths, speed = plan_tree(np.full((8, 4), 0.02), 0.3, FLAT, 32)
    assert speed < 1.0


def test_plan_prefers_one_cheap_wide_level_to_an_expensive_deep_chain():
    wide = np.tile([0.5, 0.15, 0.1, 0.08, 0.05, 0.04], (8, 1))
    paths, _ = plan_tree(wide, 0.6, FLAT, 16)
    assert max(len(p) for p in paths) == 1 and len(paths) >= 4
    sure = np.tile([0.97, 0.01, 0.01, 0.0, 0.0, 0.0], (8, 1))
    paths, _ = plan_tree(sure, 0.1, FLAT, 16)
    assert [p for p in paths if set(p) == {0}] == [(0,) * d for d in range(1, 9)]  # the whole chain


def speed_of(paths, rates, level_cost, verify_cost):
    chances = [np.prod([rates[d, r] for d, r in enumerate(p)]) for p in paths]
    return (1 + sum(chances)) / (max(len(p) for p in paths) * level_cost + verify_cost[len(paths)])


@pytest.mark.parametrize("seed", range(6))
def test_plan_is_the_fastest_of_all_trees(seed):
    """Against every tree of rank paths (depth <= 2, ranks < 3): none is faster than the plan."""
    rng = np.random.default_rng(seed)
    rates = rng.dirichlet(np.ones(4), size=2)[:, :3]  # three ranks and a miss, per depth
    level_cost = float(rng.uniform(0.05, 0.6))
    curve = 1.0 + np.cumsum(np.concatenate([[0.0], rng.uniform(0.0, 0.3, 32)]))
    nodes = [(r,) for r in range(3)] + [(a, b) for a in range(3) for b in range(3)]
    best = 0.0
    for mask in range(1, 2 ** len(nodes)):
        tree = [n for i, n in enumerate(nodes) if mask >> i & 1]
        if all(len(n) == 1 or n[:1] in tree for n in tree):
            best = max(best, speed_of(tree, rates, level_cost, curve))
    paths, speed = plan_tree(rates, level_cost, curve, 32)
    assert speed == pytest.approx(best)
    assert speed == pytest.approx(speed_of(paths, rates, level_cost, curve))
    assert all(len(p) == 1 or p[:-1] in paths[:i] for i, p in enumerate(paths))  # parents first


def test_a_timed_skipped_forward_waits_for_the_device(torch_backend, monkeypatch):
    """On a GPU a forward returns before its kernels run; a stand-in device that takes 30 ms to
    finish shows whether the timing waits for them."""
    drafter = LayerSkipDrafter(torch_backend, CURVE, FAST)
    monkeypatch.setattr(torch_backend, "synchronize", lambda: time.sleep(0.03))
    assert drafter._time_forward(SkipSet(frozenset(), frozenset({2})), repeats=1) >= 0.03


def test_skipper_learns_which_rank_was_right_down_the_accepted_path(torch_backend):
    skipper = LayerSkipDrafter(torch_backend, CURVE, FAST)
    skipper.stats.rates[:] = 0.25
    # root guessed [5, 6, 7]: nodes 0 = 5 and 1 = 6; node 1 ran and guessed [8, 9, 4]: node 2 = 9
    tree = DraftTree(np.array([5, 6, 9], np.int32), np.array([-1, -1, 1], np.int32), "layerskip")
    skipper._guessed = {-1: np.array([5, 6, 7]), 0: np.array([1, 2, 3]), 1: np.array([8, 9, 4])}
    skipper.record(tree, Verdict([1], [6, 4]))  # 6 accepted, then the target said 4: node 1's rank 2
    assert skipper.stats.rates[0, 1] > 0.25 and skipper.stats.rates[0, 0] < 0.25
    assert skipper.stats.rates[1, 2] > 0.25 and skipper.stats.rates[1, 1] < 0.25
    assert skipper.stats.seen.tolist()[:3] == [1, 1, 0]  # node 2 never ran: depth 3 learns nothing
    before = skipper.stats.rates[0].copy()
    skipper._guessed = {-1: np.array([5, 6, 7])}
    skipper.record(DraftTree.chain([5], "layerskip"), Verdict([], [3]))  # no guess was right
    assert np.all(skipper.stats.rates[0, :3] < before[:3]) and skipper.stats.seen[0] == 2


def test_a_drafted_plan_holds_each_parents_guess_of_its_rank(torch_backend):
    skip = SkipSet(frozenset(), frozenset({2}))
    prompt = np.random.default_rng(9).integers(0, torch_backend.n_vocab, 10).tolist()
    torch_backend.truncate(0)
    torch_backend.prefill(prompt[:-1])
    paths = [(0,), (1,), (0, 0), (0, 2), (1, 1), (0, 0, 0)]
    tree, guessed = draft_plan(torch_backend, skip, prompt[-1], paths, 4, 0.0)
    assert tree.parents.tolist() == [-1, -1, 0, 0, 1, 2]
    assert set(guessed) == {-1, 0, 1, 2}  # the nodes with children ran
    for node, path in enumerate(paths):
        parent = int(tree.parents[node])
        assert tree.tokens[node] == guessed[parent][path[-1]]
    # the root's guesses are the skipped model's top 4 after the prompt
    n = len(prompt)
    logits = torch_backend.run_tree(0, np.array(prompt), chain_parents(n), np.arange(1, n + 1),
                                    torch_backend.scratch_base, skip)
    assert guessed[-1].tolist() == logits[-1].topk(4).indices.tolist()
    tree, guessed = draft_plan(torch_backend, skip, prompt[-1], paths, 4, 1.01)  # never sure enough
    assert tree.parents.tolist() == [-1, -1] and set(guessed) == {-1}


def test_guesses_are_the_top_logits_or_with_noise_the_samplers_picks(torch_backend):
    logits = torch.from_numpy(np.random.default_rng(3).standard_normal((3, torch_backend.n_vocab))).float()
    assert guesses(logits, [7, 8, 9], None, 2).tolist() == logits.topk(2, dim=-1).indices.tolist()
    noise = GumbelNoise(5, 0.7)
    ids = np.arange(torch_backend.n_vocab)
    for row, position in enumerate([7, 8, 9]):
        scores = logits[row].numpy().astype(np.float64) / 0.7 + noise.gumbel(position, ids)
        assert guesses(logits, [7, 8, 9], noise, 2)[row].tolist() == np.argsort(-scores)[:2].tolist()


@pytest.mark.parametrize("seed", [0, 5, 2**63 + 7, -3])
def test_the_device_copy_of_the_noise_is_the_samplers_noise(seed):
    """guesses() hashes the noise with torch on a GPU; run here on CPU tensors, it must give the
    sampler's numbers (the same bits; logarithms within rounding)."""
    noise = GumbelNoise(seed, 0.8)
    positions, ids = np.array([0, 7, 1_000_003]), np.arange(5000)
    expected = noise.gumbel(positions[:, None], ids)
    got = device_gumbel(seed, torch.from_numpy(positions)[:, None], torch.from_numpy(ids)).numpy()
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-12)
    assert np.array_equal(got.argmax(axis=1), expected.argmax(axis=1))


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_a_skipped_model_that_is_the_model_has_every_drafted_token_accepted(torch_backend, temperature):
    """With nothing skipped the draft model is the target, so its guesses, made with the sampler's
    noise when sampling, are what the target picks: every drafted token is accepted."""
    settings = LayerSkipSettings(confidence=0.0, max_draft=4, probe_every=0)  # always drafts
    engine = Engine(torch_backend, new_drafter=torch_drafter_factory(torch_backend, CURVE, settings))
    skipper: LayerSkipDrafter = engine.drafter("layerskip")
    skipper.skip, skipper.settled = SkipSet(frozenset(), frozenset()), True
    skipper.stats.rates[:] = [0.99, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]  # a chain of first guesses
    prompt = np.random.default_rng(8).integers(0, torch_backend.n_vocab, 12).tolist()
    sampling = SamplingSettings(temperature=temperature, seed=3)
    plain = generate(engine, prompt, GenerationSettings(max_tokens=24, drafter="none", sampling=sampling))
    spec = generate(engine, prompt, GenerationSettings(max_tokens=24, drafter="layerskip",
                                                       max_draft_tokens=4, sampling=sampling))
    assert spec.tokens == plain.tokens
    assert spec.stats.draft_tokens >= 12 and spec.stats.accepted_tokens == spec.stats.draft_tokens
