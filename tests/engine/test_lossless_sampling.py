"""End to end: speculative sampling gives the same token distributions as plain sampling."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
from scipy.stats import chi2_contingency

from localspec.engine import Engine
from localspec.generate import generate
from localspec.sampling import make_distribution
from localspec.settings import GenerationSettings, SamplingSettings
from localspec.tree import DraftTree
from tests.helpers import ScriptedDrafter

RUNS = 1500


def contingency_p_value(a: Counter, b: Counter) -> float:
    keys = sorted(set(a) | set(b))
    table = np.array([[a[k] for k in keys], [b[k] for k in keys]])
    table = table[:, table.sum(axis=0) >= 10]  # chi-square needs populated cells
    return float(chi2_contingency(table).pvalue)


def test_first_tokens_are_distributed_as_plain_sampling(tiny_backend):
    sampling = SamplingSettings(temperature=1.5, top_k=6)
    prompt = tiny_backend.tokenize("def the return self")
    # a draft that is often right: the root's three likeliest tokens, each with a likely child
    tiny_backend.truncate(0)
    tiny_backend.prefill(prompt[:-1])
    root_logits = tiny_backend.verify(prompt[-1], DraftTree.empty())[0].copy()
    tiny_backend.commit(prompt[-1], DraftTree.empty(), [])
    top3 = np.argsort(-root_logits)[:3].tolist()
    tree = DraftTree.from_paths([[t, int(np.argmax(root_logits))] for t in top3], "scripted")
    engine = Engine(tiny_backend, {"scripted": ScriptedDrafter(lambda h, budget: tree)})

    def sample(drafter: str, seed: int) -> tuple[int, ...]:
        settings = GenerationSettings(max_tokens=2, drafter=drafter, max_draft_tokens=8,
                                      sampling=SamplingSettings(temperature=1.5, top_k=6, seed=seed))
        return tuple(generate(engine, prompt, settings).tokens)

    plain = [sample("none", seed) for seed in range(RUNS)]
    spec = [sample("scripted", RUNS + seed) for seed in range(RUNS)]
    first_p, first_s = Counter(t[0] for t in plain), Counter(t[0] for t in spec)
    assert contingency_p_value(first_p, first_s) > 1e-3
    assert contingency_p_value(Counter(plain), Counter(spec)) > 1e-3
    # and both match the model's own distribution
    p = make_distribution(root_logits, np.array(prompt), sampling)
    expected = {int(t): float(q) * RUNS for t, q in zip(p.ids, p.probs, strict=False)}
    for token, count in first_s.items():
        assert abs(count - expected[token]) < 5 * np.sqrt(expected[token]) + 5


@pytest.mark.parametrize("drafter", ["recycling", "retrieval", "auto", "lookup"])
@pytest.mark.parametrize("penalty", [1.0, 1.15])
def test_a_seeded_sampled_output_is_the_plain_sampled_output(loopy_backend, drafter, penalty):
    """The sampler's noise is fixed per position, so speculation changes how fast, not what."""
    engine = Engine(loopy_backend)
    prompt = loopy_backend.tokenize("one two three one two three one two")
    accepted = 0
    for seed in range(4):
        def settings(name: str, seed: int = seed) -> GenerationSettings:
            sampling = SamplingSettings(temperature=0.8, top_p=0.95, repeat_penalty=penalty, seed=seed)
            return GenerationSettings(max_tokens=48, drafter=name, max_draft_tokens=8, sampling=sampling)

        plain = generate(engine, prompt, settings("none"))
        spec = generate(engine, prompt, settings(drafter))
        assert spec.tokens == plain.tokens
        accepted += spec.stats.accepted_tokens
    assert accepted > 0  # drafts were verified, and some sampled tokens came from them


def test_without_a_seed_each_request_samples_afresh(loopy_backend):
    engine = Engine(loopy_backend)
    prompt = loopy_backend.tokenize("one two three")
    settings = GenerationSettings(max_tokens=24, drafter="auto", sampling=SamplingSettings(temperature=1.0))
    assert len({tuple(generate(engine, prompt, settings).tokens) for _ in range(4)}) > 1
