"""The speculation loop: prefill, then draft -> verify -> commit, one step at a time.

The engine owns the loop and the token history; the backend only runs batches and trims its KV
cache, the drafter only proposes trees and learns from verdicts, the verifier only decides.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from localspec.backends.base import Backend
from localspec.budget import SpeculationBudget
from localspec.drafters import Drafter, make_drafter
from localspec.errors import ContextOverflowError, InvalidSettingsError
from localspec.sampling import GumbelNoise, greedy_token, sampled_token
from localspec.settings import GenerationSettings, SamplingSettings
from localspec.tree import DraftTree
from localspec.verify import Verdict, verify_greedy, verify_walk


@dataclass(frozen=True)
class Step:
    """One verified round: the tokens it produced (accepted drafts + bonus) and what was drafted."""

    tokens: list[int]
    drafted: int
    accepted: int
    source: str


def common_prefix_length(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    if n == 0:
        return 0
    diff = np.flatnonzero(np.asarray(a[:n]) != np.asarray(b[:n]))
    return int(diff[0]) if diff.size else n


def fit_tree(tree: DraftTree, max_nodes: int, max_paths: int) -> DraftTree:
    """Drop trailing nodes until the tree fits; removing a last node never adds a leaf."""
    tree = tree.truncated(max(max_nodes, 0))
    while len(tree) and len(tree.leaves()) > max_paths:
        tree = tree.truncated(len(tree) - 1)
    return tree


def sampling_noise(sampling: SamplingSettings) -> GumbelNoise | None:
    """The request's sampler noise (None when greedy); without a seed, a fresh one."""
    if sampling.greedy:
        return None
    return GumbelNoise(secrets.randbits(63) if sampling.seed is None else sampling.seed, sampling.temperature)


def judge(tree: DraftTree, logits: np.ndarray, history: np.ndarray, sampling: SamplingSettings,
          noise: GumbelNoise | None) -> Verdict:
    """Apply the lossless rule that fits the sampling settings (`noise` is None when greedy).
    `history` ends with the root, so row 0 predicts position len(history), a node at depth d
    position len(history) + d."""
    if sampling.greedy and not sampling.has_penalties:
        return verify_greedy(tree, logits.argmax(axis=1))

    def target(row: int) -> int:
        drafted = tree.tokens[tree.path_to(row - 1)] if row else tree.tokens[:0]  # the path to row
        context = np.concatenate([history, drafted]) if sampling.has_penalties else history
        if noise is None:
            return greedy_token(logits[row], context, sampling)
        return sampled_token(logits[row], context, sampling, noise, len(history) + len(drafted))

    return verify_walk(tree, target)


class Engine:
    """Speculative generation over one backend. Drafters persist across requests."""

    def __init__(self, backend: Backend, drafters: Mapping[str, Drafter] | None = None,
                 budget: SpeculationBudget | None = None,
                 new_drafter: Callable[[str], Drafter] = make_drafter) -> None:
        self.backend = backend
        self.budget = budget  # None: always verify up to max_draft_tokens
        self.drafters: dict[str, Drafter] = dict(drafters or {})
        self._new_drafter = new_drafter

    def drafter(self, name: str) -> Drafter:
        """The drafter called `name`, made on first use and kept (what it learnt persists)."""
        if name not in self.drafters:
            self.drafters[name] = self._new_drafter(name)
        return self.drafters[name]

    def check_prompt(self, prompt: Sequence[int]) -> None:
        if len(prompt) == 0:
            raise InvalidSettingsError("the prompt is empty")
        if len(prompt) >= self.backend.n_ctx:
            raise ContextOverflowError(
                f"the prompt has {len(prompt)} tokens but the context holds {self.backend.n_ctx}; "
                "shorten it or raise --ctx")

    def prefill(self, prompt: Sequence[int]) -> int:
        """Bring the cache to prompt[:-1], reusing the longest cached prefix; returns tokens reused."""
        self.check_prompt(prompt)
        reused = common_prefix_length(self.backend.tokens, prompt[:-1])
        self.backend.truncate(reused)
        self.backend.prefill(list(prompt[reused:-1]))
        return reused

    def steps(self, prompt: Sequence[int], settings: GenerationSettings) -> Iterator[Step]:
        """Yield verified steps until max_tokens are produced or the context is full.

        The consumer decides about end-of-generation tokens and stop strings and may stop early;
        the cache then holds every committed token and stays reusable by the next request.
        """
        self.prefill(prompt)
        backend = self.backend
        drafter = self.drafter(settings.drafter)
        noise = sampling_noise(settings.sampling)

        history = np.zeros(backend.n_ctx + 1, np.int32)
        n_hist = len(prompt)
        history[:n_hist] = prompt
        drafter.begin(history[:n_hist].copy(), noise)
        root = int(prompt[-1])
        produced = 0
        while produced < settings.max_tokens:
            room = backend.n_ctx - len(backend.tokens) - 1  # tree slots after the root
            if room < 0:
                return
            budget = min(settings.max_draft_tokens, room, settings.max_tokens - produced - 1)
            tree, draft_seconds = DraftTree.empty(drafter.name), 0.0
            waiting = len(backend.tokens) - backend.n_cached  # committed tokens riding in front
            if budget > 0 and backend.supports_trees:
                start = time.perf_counter()
                tree = fit_tree(drafter.propose(history[:n_hist], budget), budget,
                                backend.max_tree_paths)
                draft_seconds = time.perf_counter() - start
                if self.budget is not None:
                    tree = self.budget.trim(tree, extra_rows=waiting)
            rows = waiting + 1 + len(tree)  # the decode's batch
            start = time.perf_counter()
            logits = backend.verify(root, tree)
            verify_seconds = time.perf_counter() - start
            verdict = judge(tree, logits, history[:n_hist], settings.sampling, noise)
            drafter.observe(tree, logits, verdict)
            backend.commit(root, tree, verdict.accepted)
            if self.budget is not None:
                self.budget.observe(tree, verdict, draft_seconds, rows, verify_seconds)

            tokens = verdict.tokens
            history[n_hist:n_hist + len(tokens)] = tokens
            n_hist += len(tokens)
            root = tokens[-1]
            produced += len(tokens)
            yield Step(tokens, len(tree), verdict.n_accepted, tree.source)
