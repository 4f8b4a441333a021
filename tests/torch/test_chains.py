"""Both self-speculative drafters through the engine: greedy and seeded sampled output equal
plain decoding, and the skip-set search never counts as drafting time."""

from __future__ import annotations

import numpy as np
import pytest

from localspec.backends.torch_model import SkipSet
from localspec.drafters.polybasic import PolybasicDrafter, torch_drafter_factory
from localspec.generate import generate
from localspec.settings import GenerationSettings, SamplingSettings
from localspec.verify import Verdict
from tests.torch.drafting import CURVE, FAST


@pytest.mark.parametrize("drafter", ["layerskip", "polybasic"])
def test_greedy_equals_plain_decoding(engine, torch_backend, drafter):
    rng = np.random.default_rng(4)
    for _ in range(2):
        prompt = rng.integers(0, torch_backend.n_vocab, 12).tolist()
        plain = generate(engine, prompt, GenerationSettings(max_tokens=40, drafter="none"))
        spec = generate(engine, prompt, GenerationSettings(max_tokens=40, drafter=drafter,
                                                           max_draft_tokens=12))
        assert spec.tokens == plain.tokens


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
