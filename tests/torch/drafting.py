"""What the layer-skip and polybasic tests share: a cost curve, a quick search, and the step
the engine takes after a verdict."""

from __future__ import annotations

import numpy as np

from localspec.budget import CostCurve
from localspec.drafters.layerskip import LayerSkipDrafter, LayerSkipSettings
from localspec.tree import DraftTree
from localspec.verify import Verdict

CURVE = CostCurve((1, 4, 16, 64), (0.010, 0.011, 0.013, 0.030))
FAST = LayerSkipSettings(min_window=4, window=16, max_evals=6)


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
