"""The speculation budget: flat cost curves give large trees, steep ones small trees or none."""

from __future__ import annotations

import json

import numpy as np
import pytest

from localspec.budget import CostCurve, SpeculationBudget, VerifyTimes, cached_cost_curve, measure_cost_curve
from localspec.engine import Engine
from localspec.generate import generate
from localspec.settings import GenerationSettings
from localspec.tree import DraftTree
from localspec.verify import Verdict

FLAT = CostCurve((1, 64), (0.010, 0.011))  # a GPU: 64 tokens cost about as much as one
CPU = CostCurve((1, 2, 4, 8, 16, 32, 64), (0.0187, 0.0209, 0.0248, 0.0452, 0.0672, 0.110, 0.175))
STEEP = CostCurve((1, 2, 64), (0.010, 0.020, 0.640))  # every token costs a full step


def trained(curve: CostCurve, rates: list[float]) -> SpeculationBudget:
    budget = SpeculationBudget(curve, explore_every=0)
    stats = budget._stats("d")
    stats.rates[:] = 0.0
    stats.rates[: len(rates)] = rates
    return budget


def test_flat_curve_takes_the_whole_tree():
    budget = trained(FLAT, [0.9, 0.7, 0.5, 0.4] + [0.1] * 60)
    assert budget.best_size("d", 64) == 64


def test_steep_curve_prefers_plain_decoding():
    budget = trained(STEEP, [0.6, 0.3, 0.1])
    assert budget.best_size("d", 3) == 0


def test_cpu_curve_takes_a_few_good_nodes_only():
    budget = trained(CPU, [0.8, 0.6, 0.45, 0.3, 0.1, 0.05, 0.05, 0.05])
    n = budget.best_size("d", 8)
    assert 2 <= n <= 5


def test_tokens_riding_in_the_batch_count_against_the_tree():
    # a CPU kernel that runs batches of up to 4 rows at the price of one
    stepped = CostCurve((1, 4, 5, 8), (0.010, 0.010, 0.020, 0.020))
    budget = trained(stepped, [0.6, 0.6, 0.3, 0.3])
    assert budget.best_size("d", 4) == 3  # root + 3 nodes fill the cheap batch
    assert budget.best_size("d", 4, extra_rows=1) == 2  # one waiting token takes a row
    assert budget.trim(DraftTree.chain([1, 2, 3, 4], "d"), extra_rows=2).tokens.tolist() == [1]


def test_a_tree_its_drafter_sized_is_kept_whole():
    budget = trained(STEEP, [0.6, 0.3, 0.1])  # it would verify none of these nodes
    tree = DraftTree(np.array([1, 2, 3], np.int32), np.array([-1, -1, 0], np.int32), "d", sized=True)
    assert len(budget.trim(tree)) == 3 and budget.trim(tree).sized
    assert len(budget.trim(DraftTree(tree.tokens, tree.parents, "d"))) == 0


def test_rates_are_learned_from_verdicts():
    budget = SpeculationBudget(CPU, explore_every=0)
    tree = DraftTree.chain([1, 2, 3, 4])
    for _ in range(100):
        budget.observe(tree, Verdict([0, 1], [1, 2, 9]), 0.0)
    rates = budget.stats[""].rates[:4]
    assert rates[0] == pytest.approx(1.0, abs=1e-3) and rates[1] == pytest.approx(1.0, abs=1e-3)
    assert rates[2] == pytest.approx(0.0, abs=1e-3) and rates[3] == pytest.approx(0.0, abs=1e-3)
    assert budget.best_size("", 4) == 2


def test_a_few_verifications_outweigh_the_prior():
    budget = SpeculationBudget(CPU, explore_every=0)
    for _ in range(3):
        budget.observe(DraftTree.chain([1]), Verdict([0], [1, 2]), 0.0)
    assert budget.stats[""].rates[0] >= 0.8  # a moving average from the prior 0.5 would be 0.64


def test_slots_past_the_verified_ones_follow_their_decay():
    gentle = CostCurve((1, 64), (0.010, 0.042))  # each extra row costs 5% of a step
    budget = SpeculationBudget(gentle, explore_every=0)
    for _ in range(20):  # a chain accepted whole, three nodes at a time
        budget.observe(DraftTree.chain([1, 2, 3], "chain"), Verdict([0, 1, 2], [1, 2, 3, 4]), 0.0)
    assert budget.stats["chain"].expected()[3:16].min() > 0.9
    assert budget.best_size("chain", 16) == 16  # the tail, never verified, looks as good

    guesses = DraftTree.chain([5, 6], "guess")  # the first node right 60% of the time, both 20%
    for accepted in [[0, 1], [0], [], [0], []] * 4:
        budget.observe(guesses, Verdict(accepted, [5, 6, 7][:len(accepted) + 1]), 0.0)
    expected = budget.stats["guess"].expected()
    assert expected[2] < 0.5 * expected[1] < 0.5 * expected[0]
    assert budget.best_size("guess", 16) <= 3


def test_curve_interpolates_and_extrapolates():
    curve = CostCurve((1, 4, 8), (1.0, 2.0, 4.0))
    np.testing.assert_allclose(curve.time([1, 2, 4, 6, 8, 10]), [1.0, 4 / 3, 2.0, 3.0, 4.0, 5.0])


@pytest.mark.parametrize(("curve", "explores"), [(FLAT, True), (CPU, False)])
def test_the_budget_looks_past_its_choice_now_and_then_where_that_is_cheap(curve, explores):
    budget = SpeculationBudget(curve, explore_every=4)
    stats = budget._stats("d")
    stats.rates[:] = 0.0
    stats.rates[:2] = [0.9, 0.6]
    stats.seen[:] = 1000  # known: nothing past the second node is ever accepted
    tree = DraftTree.chain(list(range(1, 17)), "d")
    sizes = [len(budget.trim(tree)) for _ in range(8)]
    chosen = budget.best_size("d", 16)
    wider = [s for s in sizes if s > chosen]
    assert len(wider) == (2 if explores else 0)  # steps 4 and 8
    assert all(s == min(2 * chosen + 2, 16) for s in wider)


def test_the_budget_looks_past_its_choice_at_any_cost_while_the_next_node_is_little_known():
    budget = SpeculationBudget(CPU, explore_every=4)
    stats = budget._stats("d")
    stats.rates[:] = 0.0
    stats.rates[:2] = [0.9, 0.6]
    stats.seen[:2] = 1000  # the nodes after these were never verified
    tree = DraftTree.chain(list(range(1, 17)), "d")
    chosen = budget.best_size("d", 16)
    assert stats.seen[chosen] == 0
    sizes = [len(budget.trim(tree)) for _ in range(8)]
    assert sizes.count(min(2 * chosen + 2, 16)) == 2 and sizes.count(chosen) == 6
    stats.seen[:] = 1000  # known now (nothing past the second node): no more looks on this curve
    assert [len(budget.trim(tree)) for _ in range(8)] == [budget.best_size("d", 16)] * 8


def test_verify_times_learn_the_real_cost_per_size():
    times = VerifyTimes(CostCurve((1, 4, 16), (1.0, 2.0, 4.0)))
    np.testing.assert_allclose(times.time([1, 8, 16]), [1.0, 8 / 3, 4.0])  # nothing seen: the curve
    for _ in range(200):
        times.update(1, 1.5)  # the call's own overhead on top of a one-row decode
        times.update(16, 8.0)  # long batches after a long context: twice the curve
    np.testing.assert_allclose(times.time([1, 16]), [1.5, 8.0], rtol=0.02)
    assert 2.0 * 1.5 < times.time(4) < 2.0 * 2.0  # between the two learnt ratios
    assert times.time(64) == pytest.approx(2.0 * CostCurve((1, 4, 16), (1.0, 2.0, 4.0)).time(64), rel=0.02)


def test_verify_times_shrug_off_a_pause():
    times = VerifyTimes(CostCurve((1, 8), (1.0, 2.0)))
    for _ in range(50):
        times.update(8, 2.0)
    times.update(8, 200.0)  # the process was descheduled once
    assert times.time(8) < 2.0 * 1.2


def test_budget_trims_more_when_verifying_costs_more_than_measured():
    flat = CostCurve(tuple(range(1, 10)), tuple(0.010 + 0.0001 * n for n in range(9)))
    budget = trained(flat, [0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2])
    assert budget.best_size("d", 8) == 8
    empty = DraftTree.empty("d")
    for n in (1, 2, 3, 4, 5, 6, 7, 8, 9):  # each row really costs a full step
        for _ in range(30):
            budget.observe(empty, Verdict([], [0]), 0.0, rows=n, verify_seconds=0.010 * n)
    assert budget.best_size("d", 8) == 0


def test_measured_curve_is_cached_per_model(tiny_backend, tiny_model, tmp_path, monkeypatch):
    monkeypatch.setenv("LOCALSPEC_CACHE_DIR", str(tmp_path))
    curve = cached_cost_curve(tiny_backend, tiny_model, "cpu", 1)
    assert curve.sizes[0] == 1 and all(s > 0 for s in curve.seconds)
    stored = json.loads((tmp_path / "cost_curves.json").read_text())
    assert len(stored) == 1 and list(stored.values())[0]["sizes"] == list(curve.sizes)
    assert cached_cost_curve(tiny_backend, tiny_model, "cpu", 1) == curve  # read back, not re-measured


def test_budgeted_engine_stays_lossless(loopy_backend):
    budget = SpeculationBudget(measure_cost_curve(loopy_backend, sizes=(1, 2, 4, 8), repeats=2))
    prompt = loopy_backend.tokenize("for x in self: print(x)\n" * 4)
    plain = generate(Engine(loopy_backend), prompt, GenerationSettings(max_tokens=80, drafter="none"))
    spec = generate(Engine(loopy_backend, budget=budget), prompt,
                    GenerationSettings(max_tokens=80, drafter="lookup"))
    assert spec.tokens == plain.tokens
    assert budget.stats["lookup:3"].rates[0] > 0.5  # long matches were right often on a loop


def test_a_new_label_starts_from_what_its_family_learnt():
    gentle = CostCurve((1, 64), (0.010, 0.042))
    budget = SpeculationBudget(gentle, explore_every=0)
    chain = DraftTree.chain([1, 2, 3, 4, 5, 6], "auto:recycling:0c3")
    for _ in range(20):  # accepted whole, every time
        budget.observe(chain, Verdict(list(range(6)), [1, 2, 3, 4, 5, 6, 7]), 0.0)
    fresh = SpeculationBudget(gentle, explore_every=0).best_size("auto:recycling:1c2", 16)
    assert budget.best_size("auto:recycling:1c2", 16) == 16 > fresh  # a sibling label, seeded
    assert budget.best_size("lookup:1", 16) == fresh  # another family starts from the prior
    assert budget.best_size("recycling", 16) == fresh  # a label with no family too
