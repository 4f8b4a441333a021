"""Logits -> distribution: each filter against a direct reference, and the penalties."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.special import softmax
from scipy.stats import chisquare

from localspec.errors import InvalidSettingsError
from localspec.sampling import (
    Distribution,
    GumbelNoise,
    apply_penalties,
    make_distribution,
    sampled_token,
)
from localspec.settings import SamplingSettings


def reference(logits: np.ndarray, s: SamplingSettings) -> np.ndarray:
    """Slow, obvious version over the dense vocabulary."""
    p = softmax(logits / s.temperature)
    order = np.argsort(-p, kind="stable")
    keep = np.zeros_like(p, bool)
    if s.top_k:
        keep[order[: s.top_k]] = True
    else:
        keep[:] = True
    q = np.where(keep, p, 0)
    q /= q.sum()
    if s.top_p < 1:
        sorted_q = q[order]
        cum = 0.0
        mask = np.zeros_like(p, bool)
        for idx, value in zip(order, sorted_q, strict=False):
            if value == 0:
                break
            mask[idx] = True
            cum += value
            if cum >= s.top_p:
                break
        q = np.where(mask, q, 0)
        q /= q.sum()
    if s.min_p > 0:
        q = np.where(q >= s.min_p * q.max(), q, 0)
        q /= q.sum()
    return q


@pytest.mark.parametrize("kwargs", [
    dict(temperature=1.0),
    dict(temperature=0.7, top_k=5),
    dict(temperature=1.3, top_p=0.8),
    dict(temperature=1.0, min_p=0.1),
    dict(temperature=0.9, top_k=20, top_p=0.9, min_p=0.05),
])
def test_distribution_matches_reference(kwargs, rng):
    s = SamplingSettings(**kwargs)
    for _ in range(20):
        logits = rng.normal(0, 3, 50).astype(np.float32)
        got = make_distribution(logits, np.zeros(0, np.int32), s).dense(50)
        np.testing.assert_allclose(got, reference(logits.astype(np.float64), s), atol=1e-9)


def test_greedy_is_a_point_mass_on_the_argmax(rng):
    logits = rng.normal(size=30)
    dist = make_distribution(logits, np.zeros(0, np.int32), SamplingSettings())
    assert dist.ids.tolist() == [int(np.argmax(logits))] and dist.probs.tolist() == [1.0]


def test_penalties_follow_llama_cpp():
    logits = np.array([2.0, -2.0, 1.0, 0.5])
    history = np.array([0, 1, 1, 3])
    s = SamplingSettings(repeat_penalty=2.0, presence_penalty=0.5, frequency_penalty=0.25)
    out = apply_penalties(logits, history, s)
    np.testing.assert_allclose(out, [2.0 / 2 - 0.25 - 0.5, -2.0 * 2 - 0.5 - 0.5, 1.0, 0.5 / 2 - 0.75])


def test_penalty_window_only_looks_back_penalty_last_n():
    s = SamplingSettings(repeat_penalty=2.0, penalty_last_n=2)
    out = apply_penalties(np.array([1.0, 1.0, 1.0]), np.array([0, 1, 2]), s)
    np.testing.assert_allclose(out, [1.0, 0.5, 0.5])


@pytest.mark.parametrize("kwargs", [dict(temperature=-1), dict(top_p=0), dict(top_p=1.5),
                                    dict(top_k=-1), dict(min_p=2), dict(repeat_penalty=0),
                                    dict(seed=-5), dict(presence_penalty=3)])
def test_invalid_sampling_values_are_rejected(kwargs):
    with pytest.raises(InvalidSettingsError):
        SamplingSettings(**kwargs)


def test_gumbel_sampling_draws_exactly_from_the_distribution():
    """Across seeds at one position, and across positions with one seed."""
    dist = Distribution(np.array([3, 7, 9, 20]), np.array([0.5, 0.3, 0.15, 0.05]))
    n = 8000
    for draws in ([GumbelNoise(seed, 1.0).sample(dist, 11) for seed in range(n)],
                  [GumbelNoise(5, 1.0).sample(dist, position) for position in range(n)]):
        counts = [draws.count(int(t)) for t in dist.ids]
        assert sum(counts) == n
        assert chisquare(counts, dist.probs * n).pvalue > 1e-3


def test_noise_depends_on_seed_position_and_token_only():
    ids = np.arange(5000)
    noise = GumbelNoise(7, 0.5)
    values = noise.gumbel(12, ids)
    np.testing.assert_array_equal(noise.gumbel(12, ids[::-1]), values[::-1])
    np.testing.assert_array_equal(GumbelNoise(7, 1.0).gumbel(12, ids), values)  # not the temperature
    assert not np.allclose(noise.gumbel(13, ids), values)
    assert not np.allclose(GumbelNoise(8, 0.5).gumbel(12, ids), values)
    assert abs(np.corrcoef(noise.gumbel(13, ids), values)[0, 1]) < 0.05
    assert values.mean() == pytest.approx(np.euler_gamma, abs=0.05)  # a standard Gumbel
    assert values.std() == pytest.approx(np.pi / np.sqrt(6), abs=0.05)
    pair = np.array([1, 2])
    grid = noise.gumbel(np.array([[3], [4]]), np.stack([pair, pair]))
    np.testing.assert_array_equal(grid, [noise.gumbel(3, pair), noise.gumbel(4, pair)])
    np.testing.assert_allclose(noise.perturbed(np.array([1.0, -1.0]), 3, pair),
                               np.array([2.0, -2.0]) + noise.gumbel(3, pair))


@pytest.mark.parametrize("kwargs", [dict(temperature=0.8), dict(temperature=1.2, repeat_penalty=1.3),
                                    dict(temperature=0.9, top_k=5), dict(temperature=1.0, top_p=0.7)])
def test_sampled_token_is_the_noises_draw_from_the_distribution(kwargs, rng):
    """The engine's shortcut (no normalising when nothing filters) draws what the sampler would."""
    s = SamplingSettings(**kwargs)
    noise = GumbelNoise(11, s.temperature)
    history = rng.integers(0, 50, 20)
    for position in range(300):
        logits = rng.normal(0, 3, 50).astype(np.float32)
        expected = noise.sample(make_distribution(logits, history, s), position)
        assert sampled_token(logits, history, s, noise, position) == expected
