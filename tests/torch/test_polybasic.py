"""Polybasic chains: which chain runs, what each verdict teaches, and the real-q verifier."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from localspec.backends.torch_model import SkipSet
from localspec.budget import CostCurve
from localspec.drafters.layerskip import LayerSkipSettings
from localspec.drafters.polybasic import ChainStats, PolybasicDrafter, verify_chain_sampled
from localspec.generate import generate
from localspec.sampling import Distribution
from localspec.settings import GenerationSettings, SamplingSettings
from localspec.tree import DraftTree
from localspec.verify import Verdict
from tests.engine.test_lossless_sampling import contingency_p_value
from tests.helpers import enumerate_outputs
from tests.torch.drafting import CURVE, FAST, after_a_verdict


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


def test_polybasic_sampling_keeps_the_distribution(engine):
    """Temperature 1: first two tokens through the chain vs plain sampling (chi-square)."""
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
