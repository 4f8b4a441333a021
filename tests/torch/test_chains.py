"""Layer-skip and polybasic drafting through the engine: greedy output equals plain decoding,
sampling keeps the target distribution, and the real-q verifier is exactly lossless."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import torch

from localspec.backends.torch_backend import chain_parents
from localspec.backends.torch_model import SkipSet
from localspec.budget import CostCurve
from localspec.drafters.layerskip import (
    LayerSkipDrafter,
    LayerSkipSettings,
    SkipSetSearch,
    draft_plan,
    guesses,
    plan_tree,
)
from localspec.drafters.polybasic import (
    ChainStats,
    PolybasicDrafter,
    torch_drafter_factory,
    verify_chain_sampled,
)
from localspec.engine import Engine
from localspec.generate import generate
from localspec.sampling import Distribution, GumbelNoise
from localspec.settings import GenerationSettings, SamplingSettings
from localspec.tree import DraftTree
from localspec.verify import Verdict
from tests.engine.test_lossless_sampling import contingency_p_value
from tests.helpers import enumerate_outputs

CURVE = CostCurve((1, 4, 16, 64), (0.010, 0.011, 0.013, 0.030))
FAST = LayerSkipSettings(min_window=4, window=16, max_evals=6)


@pytest.fixture()
def engine(torch_backend):
    return Engine(torch_backend, new_drafter=torch_drafter_factory(torch_backend, CURVE, FAST))


@pytest.mark.parametrize("drafter", ["layerskip", "polybasic"])
def test_greedy_equals_plain_decoding(engine, torch_backend, drafter):
    rng = np.random.default_rng(4)
    for _ in range(2):
        prompt = rng.integers(0, torch_backend.n_vocab, 12).tolist()
        plain = generate(engine, prompt, GenerationSettings(max_tokens=40, drafter="none"))
        spec = generate(engine, prompt, GenerationSettings(max_tokens=40, drafter=drafter,
                                                           max_draft_tokens=12))
        assert spec.tokens == plain.tokens


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


def after_a_verdict(drafter, backend, prompt: np.ndarray) -> None:
    """What the engine does after a verify of nothing: the drafter observes the verdict (and
    takes a search step then, while its skip set is not settled)."""
    drafter.observe(DraftTree.empty("none"), np.zeros((1, backend.n_vocab), np.float32),
                    Verdict([], [int(prompt[-1])]))


def search_until_settled(backend, curve: CostCurve, settings: LayerSkipSettings, task: str,
                         seed: int, bar: float = 1.0) -> tuple[LayerSkipDrafter, np.ndarray]:
    """A skipper that optimised its skip set over random text until it settled."""
    drafter = LayerSkipDrafter(backend, curve, settings, task=task)
    drafter.bar = bar
    prompt = np.random.default_rng(seed).integers(0, backend.n_vocab, 40).astype(np.int32)
    backend.truncate(0)
    backend.prefill(prompt[:-1].tolist())
    drafter.begin(prompt[:20])
    while not drafter.settled:
        after_a_verdict(drafter, backend, prompt)
    return drafter, prompt


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


def test_polybasic_holds_the_search_to_what_its_model_free_chain_delivers(torch_backend):
    poly = PolybasicDrafter(torch_backend, CURVE, settings=FAST)
    assert poly.free_speed() == 1.0  # nothing seen yet: plain decoding's
    for regime, tokens in (("auto:recycling", 2.0), ("auto:retrieval", 8.0)):
        for _ in range(3 if tokens < 4 else 1):
            poly.chain_stats(regime)["free"].update(tokens, 3, 0.0)
    # 3 steps of 2 tokens and 1 of 8 in 4 verifies of 4 rows, in units of one row's forward
    assert poly.free_speed() == pytest.approx((3 * 2 + 8) / (4 * CURVE.time(4) / CURVE.time(1)))
    settings = LayerSkipSettings(min_window=4, window=16, max_evals=8, target_score=1.01)
    prompt = np.random.default_rng(6).integers(0, torch_backend.n_vocab, 40).astype(np.int32)
    evals = {}
    for name, free_tokens in (("weak", 0.5), ("strong", 50.0)):
        poly = PolybasicDrafter(torch_backend, CURVE, settings=settings)
        poly.skipper.fixed_task = f"poly-bar-{name}"
        poly.chain_stats("auto:recycling")["free"].update(free_tokens, 3, 0.0)
        torch_backend.truncate(0)
        torch_backend.prefill(prompt[:-1].tolist())
        poly.begin(prompt[:20])
        while not poly.skipper.settled:
            after_a_verdict(poly, torch_backend, prompt)
        evals[name] = poly.skipper.evals
    assert evals == {"weak": settings.max_evals, "strong": settings.max_evals // 2}


@pytest.mark.parametrize("name", ["layerskip", "polybasic"])
def test_search_steps_run_after_the_verdict_not_while_drafting(torch_backend, name):
    """The engine times propose as the step's drafting, and the budget takes that time as what
    drafting costs every step; a skip-set search step is a one-off cost and must not be in it."""
    drafter = torch_drafter_factory(torch_backend, CURVE, FAST)(name)
    skipper = drafter if name == "layerskip" else drafter.skipper
    skipper.fixed_task = f"after-verdict-{name}"
    prompt = np.random.default_rng(4).integers(0, torch_backend.n_vocab, 30).astype(np.int32)
    torch_backend.truncate(0)
    torch_backend.prefill(prompt[:-1].tolist())
    drafter.begin(prompt)
    for _ in range(3):
        before = (skipper._window is not None, skipper.evals)
        tree = drafter.propose(prompt, 4)
        assert (skipper._window is not None, skipper.evals) == before  # drafting searched nothing
        drafter.observe(tree, np.zeros((1 + len(tree), torch_backend.n_vocab), np.float32),
                        Verdict([], [int(prompt[-1])]))
        assert (skipper._window is not None, skipper.evals) != before  # the verdict took a step
    assert skipper.evals == 2  # the exits, then two MLP tails


def test_search_never_skips_first_or_last_layer_and_bo_proposes_untried():
    search = SkipSetSearch(6, LayerSkipSettings(bo_every=2))
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


def test_polybasic_sampling_keeps_the_distribution(torch_backend):
    """Temperature 1: first two tokens through the chain vs plain sampling (chi-square)."""
    engine = Engine(torch_backend, new_drafter=torch_drafter_factory(torch_backend, CURVE, FAST))
    poly: PolybasicDrafter = engine.drafter("polybasic")
    poly.skipper.skip, poly.skipper.settled = SkipSet(frozenset(), frozenset({2})), True
    prompt = [5, 6, 7, 5, 6, 7, 5, 6]

    def sample(drafter: str, seed: int) -> tuple[int, ...]:
        settings = GenerationSettings(max_tokens=2, drafter=drafter, max_draft_tokens=6,
                                      sampling=SamplingSettings(temperature=1.0, top_k=5, seed=seed))
        return tuple(generate(engine, prompt, settings).tokens)

    runs = 300
    plain = Counter(sample("none", s) for s in range(runs))
    spec = Counter(sample("polybasic", runs + s) for s in range(runs))
    assert contingency_p_value(plain, spec) > 1e-3


def dist(probs: dict[int, float]) -> Distribution:
    ids = np.array(list(probs), np.int64)
    p = np.array(list(probs.values()))
    return Distribution(ids, p / p.sum())


def test_real_q_chain_verifier_is_exact():
    """Drafts drawn from q, verified with min(1, p/q) and the residual: enumerating every coin
    outcome, the first token is distributed exactly as p0 and the second (given the first) as p1."""
    p_rows = [dist({1: 0.5, 2: 0.3, 3: 0.2}), dist({4: 0.6, 5: 0.4}), dist({6: 1.0})]
    q_rows = [dist({1: 0.2, 2: 0.7, 3: 0.1}), dist({4: 0.1, 5: 0.9})]

    def run(coin):
        draft = [coin.draw(q) for q in q_rows]
        return verify_chain_sampled(draft, lambda i: q_rows[i], lambda i: p_rows[i], coin).tokens

    outputs = enumerate_outputs(run)
    assert sum(outputs.values()) == pytest.approx(1.0)
    for depth, p in enumerate(p_rows[:2]):
        for prefix in ({()} if depth == 0 else {t[:1] for t in outputs if len(t) > 1}):
            found: dict[int, float] = {}
            for tokens, weight in outputs.items():
                if len(tokens) > depth and tokens[:depth] == prefix:
                    found[tokens[depth]] = found.get(tokens[depth], 0.0) + weight
            total = sum(found.values())
            for token, prob in zip(p.ids.tolist(), p.probs.tolist(), strict=True):
                assert found.get(token, 0.0) / total == pytest.approx(prob, abs=1e-12)


def test_polybasic_retries_a_slower_chain_less_and_less_but_never_stops(torch_backend):
    poly = PolybasicDrafter(torch_backend, CURVE, settings=FAST, explore_every=8)
    poly.skipper.skip = SkipSet(frozenset(), frozenset({2}))
    for chain, tokens in (("free", 3.0), ("skip", 1.2), ("free+skip", 1.5)):
        for _ in range(4):  # measured enough to be trusted, and slower than the free chain
            poly.chain_stats("")[chain].update(tokens, 6, 0.0 if chain == "free" else 0.02)
    chosen = [poly.choose() for _ in range(4000)]
    retries = [i for i, c in enumerate(chosen) if c != "free"]
    assert 4 <= len(retries) <= 40  # a fixed interval of 8 would retry 1,000 times
    assert any(i > 3000 for i in retries)  # still retried late on
    poly.chain_stats("")["skip"].update(50, 6, 0.0)  # the skip chain turns out fastest: it runs
    assert poly.choose() == "skip"
    assert poly.choose("auto:retrieval") == "free"  # another regime keeps its own estimates


def test_chain_estimates_average_their_first_runs():
    stats = ChainStats()
    for tokens in (1, 5, 5, 5):  # an unlucky first step, then the chain's usual yield
        stats.update(tokens, 6, 0.0)
    assert stats.tokens == pytest.approx(4.0)  # a moving average from the first run: 2.95


def test_polybasic_retry_schedules_are_kept_per_regime(torch_backend):
    poly = PolybasicDrafter(torch_backend, CURVE, settings=FAST, explore_every=8)
    poly.skipper.skip = SkipSet(frozenset(), frozenset({2}))
    for regime, fast in (("auto:recycling", "free+skip"), ("auto:retrieval", "free")):
        for chain in ("free", "skip", "free+skip"):
            for _ in range(4):
                poly.chain_stats(regime)[chain].update(5.0 if chain == fast else 1.5, 6, 0.0)
    recycling, retrieval = [], []
    for _ in range(2000):  # steps alternate between the regimes
        recycling.append(poly.choose("auto:recycling"))
        retrieval.append(poly.choose("auto:retrieval"))
    assert recycling.count("free+skip") > 1950  # the best chain where it is best...
    assert 2 <= retrieval.count("free+skip") <= 20  # ...retried less and less where it is not


def test_polybasic_retry_intervals_count_the_regimes_own_steps(torch_backend):
    poly = PolybasicDrafter(torch_backend, CURVE, settings=FAST, explore_every=8)
    poly.skipper.skip = SkipSet(frozenset(), frozenset({2}))
    for regime in ("auto:recycling", "auto:retrieval"):
        for chain, tokens in (("free", 5.0), ("skip", 1.5), ("free+skip", 1.5)):
            for _ in range(4):
                poly.chain_stats(regime)[chain].update(tokens, 6, 0.0)
    rare = []
    for step in range(4000):  # the retrieval regime comes one step in ten
        poly.choose("auto:recycling")
        if step % 10 == 0:
            rare.append(poly.choose("auto:retrieval"))
    retries = [i for i, c in enumerate(rare) if c != "free"]
    # by its own 400 steps: two losers, each retried after 8, 16, 32, 64, 128, 256 steps at most;
    # counted in all 4,400 steps of the drafter it was retried 26 times
    assert 2 <= len(retries) <= 12
    assert retries[0] >= 7  # not before its first interval of its own steps has passed


def test_a_refined_tree_verdict_also_teaches_the_model_free_chain_its_yield(torch_backend):

    poly = PolybasicDrafter(torch_backend, CURVE, settings=FAST)
    free_tree = DraftTree.chain([5, 6, 7], "auto:retrieval:8")
    refined = DraftTree.merge([DraftTree.chain([5, 6, 8, 9]), free_tree])  # 5 6 8 9, then 7 under 6
    stats = poly.chain_stats("auto:retrieval")
    for _ in range(6):
        poly._pending = ("auto:retrieval", "free+skip", 0.02, free_tree)
        poly.observe(refined, np.zeros((len(refined) + 1, torch_backend.n_vocab), np.float32),
                     Verdict([0, 1, 2, 3], [5, 6, 8, 9, 11]))
    assert stats["free+skip"].tokens == pytest.approx(5.0)
    assert stats["free"].tokens == pytest.approx(3.0)  # 5 6 on its own path, then the bonus
    assert stats["free"].yields == 6 and stats["free"].runs == 0  # costs are learnt by running
    assert stats["free+skip"].gain == pytest.approx(2.0)  # paired: 5 against 3 on the same steps


def test_a_skip_chain_verdict_also_teaches_the_model_free_chain_its_yield(torch_backend):
    """While the skipped model's chain runs, the model-free chain's estimate must not stay at
    the poor stretch that made it lose: the verdict shows what its tree would have yielded."""

    poly = PolybasicDrafter(torch_backend, CURVE, settings=FAST)
    stats = poly.chain_stats("auto:recycling")
    for _ in range(3):
        stats["free"].update(1, 4, 0.0)  # a poor stretch
    free_tree = DraftTree.merge([DraftTree.chain([5, 6, 7, 8]), DraftTree.chain([9])])
    skip_tree = DraftTree.chain([5, 6, 4], "layerskip")
    for _ in range(20):
        poly._pending = ("auto:recycling", "skip", 0.02, free_tree)
        poly.observe(skip_tree, np.zeros((4, torch_backend.n_vocab), np.float32), Verdict([0, 1], [5, 6, 7]))
    assert stats["free"].tokens == pytest.approx(4.0, abs=0.05)  # 5 6 7 on its path, then the bonus
    assert stats["free"].runs == 3 and stats["skip"].runs == 20
    assert stats["skip"].gain == pytest.approx(-1.0)  # paired: 3 against 4 on the same steps
    assert stats["free+skip"].gains == 0


@pytest.mark.parametrize("chain", ["skip", "free+skip"])
@pytest.mark.parametrize("gain", [0.3, 2.0])
def test_the_skipped_models_chains_are_judged_by_their_paired_gain_not_by_a_poor_stretch_of_the_free_chain(
        torch_backend, chain, gain):
    poly = PolybasicDrafter(torch_backend, CURVE, settings=FAST, explore_every=0)  # no retries
    poly.skipper.skip = SkipSet(frozenset(), frozenset({2}))
    stats = poly.chain_stats("r")
    other = "skip" if chain == "free+skip" else "free+skip"
    for _ in range(4):
        stats["free"].update(3, 4, 0.0)
        stats[chain].update(3, 4, 0.005)
        stats[chain].update_gain(gain)
        stats[other].update(1, 1, 0.05)
        stats[other].update_gain(-2.0)
    for _ in range(5):  # a poor stretch: 3 tokens a step -> about 1.7
        stats["free"].update(1, 4, 0.0)
    # the chain would be chosen on its own yield estimate (3 tokens), but it adds `gain` tokens
    # to what the free chain yields now, which pays for its drafting only when the gain is large
    assert poly.choose("r") == (chain if gain > 1.0 else "free")


def test_the_model_free_drafter_learns_its_own_trees_under_its_own_labels(torch_backend):
    """auto drafts about twice what was verified of its recent trees of a label, so the verdict
    of its chain must reach it under auto's label, not polybasic's."""

    poly = PolybasicDrafter(torch_backend, CURVE, settings=FAST)
    poly._pending = ("auto:recycling", "free", 0.0, None)
    tree = DraftTree.chain([5, 6], "polybasic:free:auto:recycling:1c1")
    poly.observe(tree, np.zeros((3, torch_backend.n_vocab), np.float32), Verdict([0, 1], [5, 6, 7]))
    assert poly.free.proposal_size("auto:recycling:1c1", 16) == 6  # 2 * 2 verified + 2


def test_polybasic_teaches_the_skipper_from_its_chains_verdicts(torch_backend):

    poly = PolybasicDrafter(torch_backend, CURVE, settings=FAST)
    poly.skipper.settled = True  # no search step after the verdict
    tree = DraftTree(np.array([5, 6, 7], np.int32), np.array([-1, -1, 0], np.int32), "layerskip")
    poly.skipper._guessed = {-1: np.array([5, 6, 4, 3]), 0: np.array([7, 1, 2, 3])}
    poly._pending = ("auto:recycling", "skip", 0.01, None)
    poly.observe(tree, np.zeros((4, torch_backend.n_vocab), np.float32), Verdict([0, 2], [5, 7, 9]))
    assert poly.skipper.stats.seen.tolist()[:3] == [1, 1, 0]  # node 2 did not run: nothing at depth 3


def test_guesses_are_the_top_logits_or_with_noise_the_samplers_picks(torch_backend):
    logits = torch.from_numpy(np.random.default_rng(3).standard_normal((3, torch_backend.n_vocab))).float()
    assert guesses(logits, [7, 8, 9], None, 2).tolist() == logits.topk(2, dim=-1).indices.tolist()
    noise = GumbelNoise(5, 0.7)
    ids = np.arange(torch_backend.n_vocab)
    for row, position in enumerate([7, 8, 9]):
        scores = logits[row].numpy().astype(np.float64) / 0.7 + noise.gumbel(position, ids)
        assert guesses(logits, [7, 8, 9], noise, 2)[row].tolist() == np.argsort(-scores)[:2].tolist()


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


@pytest.mark.parametrize("drafter", ["layerskip", "polybasic"])
def test_seeded_sampled_output_equals_plain_decoding(engine, torch_backend, drafter):
    poly: PolybasicDrafter = engine.drafter("polybasic")
    for skipper in (engine.drafter("layerskip"), poly.skipper):
        skipper.skip, skipper.settled = SkipSet(frozenset(), frozenset({2})), True
    prompt = [5, 6, 7, 5, 6, 7, 5, 6]
    for seed in range(3):
        sampling = SamplingSettings(temperature=0.9, top_p=0.9, seed=seed)
        plain = generate(engine, prompt, GenerationSettings(max_tokens=24, drafter="none", sampling=sampling))
        spec = generate(engine, prompt, GenerationSettings(max_tokens=24, drafter=drafter,
                                                           max_draft_tokens=8, sampling=sampling))
        assert spec.tokens == plain.tokens


@pytest.mark.parametrize(("level_seconds", "retried"), [(0.05, False), (0.0001, True)])
def test_the_skipped_models_chain_is_not_retried_where_it_could_not_win(torch_backend, level_seconds,
                                                                        retried):
    """Eight drafts a level of 50 ms cannot beat a model-free chain at 3 tokens per 11 ms even
    if every draft were accepted; at 0.1 ms a level they could, so the chain is still retried."""
    poly = PolybasicDrafter(torch_backend, CURVE, settings=FAST, explore_every=8)
    poly.skipper.skip = SkipSet(frozenset(), frozenset({2}))
    poly.skipper.level_seconds = level_seconds
    stats = poly.chain_stats("r")
    for _ in range(4):
        stats["free"].update(3, 4, 0.0)
        stats["skip"].update(1, 1, level_seconds)
        stats["free+skip"].update(1, 4, 0.05)
    chosen = [poly.choose("r") for _ in range(500)]
    assert ("skip" in chosen) == retried
    assert "free+skip" in chosen  # the refined tree has no such bound and is still retried



def test_a_shallow_skipped_model_tree_that_could_win_is_still_retried(torch_backend):
    """On a curve where verifying 9 rows is dear, 8 drafts all accepted (92 tokens/s) cannot
    beat a model-free chain at 120 tokens/s, but one cheap draft level could (166 tokens/s)."""
    curve = CostCurve((1, 2, 9), (0.010, 0.011, 0.090))
    poly = PolybasicDrafter(torch_backend, curve, settings=FAST, explore_every=8)
    poly.skipper.skip = SkipSet(frozenset(), frozenset({2}))
    poly.skipper.level_seconds = 0.001
    best = 1.32 / float(curve.time(2))
    assert poly.could_beat("skip", best) and not poly.could_beat("skip", 170.0)
