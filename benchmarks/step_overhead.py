"""The engine's own time per step (drafting, learning, budget, verification rules), without the model.

    python benchmarks/step_overhead.py record --model /tmp/demo-wide.gguf --drafter auto --trace /tmp/auto.pkl
    python benchmarks/step_overhead.py replay --model /tmp/demo-wide.gguf --drafter auto --trace /tmp/auto.pkl

`record` runs every prompt of the set through the engine on llama.cpp and keeps, for each step,
the verified tree, the logits the backend returned and the drafting and verify times the budget
saw. `replay` runs the same prompts again with a backend that hands back the recorded logits
instead of decoding, and the budget fed the recorded times, so every step makes the same
decisions: it checks each tree and each output against the recording and prints the seconds a
step spends outside the model (best of the rounds). Compare two versions of the code on one
trace to see whether a change made the loop cheaper, free of the model's run-to-run noise.
The trace holds every verified row's logits (about 200 MB for the 66 prompts of 96 tokens).
"""

from __future__ import annotations

import argparse
import pickle
import time
from dataclasses import dataclass

import numpy as np

from localspec import bench
from localspec.backends.llamacpp import LlamaCppBackend
from localspec.budget import SpeculationBudget, cached_cost_curve
from localspec.engine import Engine
from localspec.settings import BackendSettings, GenerationSettings
from localspec.tree import DraftTree
from localspec.verify import Verdict


@dataclass
class RecordedStep:
    tokens: np.ndarray
    parents: np.ndarray
    logits: np.ndarray
    draft_seconds: float
    verify_seconds: float
    produced: list[int]
    waiting: int  # committed tokens that rode in front of the root (see LlamaCppBackend.commit)


class RecordingBudget(SpeculationBudget):
    """The budget as it is, noting each step's tree, times and verdict (the logits come from
    the backend wrapper, which saw the same step)."""

    def __init__(self, *args, backend: RecordingBackend, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.backend = backend
        self.steps: list[RecordedStep] = []

    def observe(self, tree: DraftTree, verdict: Verdict, draft_seconds: float, rows: int = 0,
                verify_seconds: float = 0.0) -> None:
        self.steps.append(RecordedStep(tree.tokens.copy(), tree.parents.copy(), self.backend.last_logits,
                                       draft_seconds, verify_seconds, list(verdict.tokens),
                                       self.backend.last_waiting))
        super().observe(tree, verdict, draft_seconds, rows, verify_seconds)


class ReplayBudget(SpeculationBudget):
    """The budget fed the recorded times instead of the replay's, so it decides as it did."""

    def __init__(self, *args, steps: list[RecordedStep], **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.recorded = iter(steps)

    def observe(self, tree: DraftTree, verdict: Verdict, draft_seconds: float, rows: int = 0,
                verify_seconds: float = 0.0) -> None:
        step = next(self.recorded)
        if verdict.tokens != step.produced:
            raise SystemExit("the replay produced other tokens than the recording: not the same code path")
        super().observe(tree, verdict, step.draft_seconds, rows, step.verify_seconds)


class RecordingBackend:
    """llama.cpp, keeping a copy of the logits of the last verify."""

    def __init__(self, real: LlamaCppBackend) -> None:
        self.real = real
        self.last_logits: np.ndarray | None = None
        self.last_waiting = 0

    def __getattr__(self, name: str):
        return getattr(self.real, name)

    def verify(self, root: int, tree: DraftTree) -> np.ndarray:
        self.last_waiting = len(self.real.tokens) - self.real.n_cached
        logits = self.real.verify(root, tree)
        self.last_logits = logits.copy()
        return logits


class ReplayBackend:
    """Hands back the recorded logits of each step; keeps the token bookkeeping of a backend
    (with the recorded count of tokens waiting for the next verify) and asks llama.cpp only for
    the vocabulary."""

    def __init__(self, real: LlamaCppBackend, steps: list[RecordedStep]) -> None:
        self.real = real
        self.steps = steps
        self.next_step = 0
        self._tokens: list[int] = []

    def __getattr__(self, name: str):
        return getattr(self.real, name)

    @property
    def tokens(self) -> list[int]:
        return self._tokens

    @property
    def n_cached(self) -> int:
        waiting = self.steps[self.next_step].waiting if self.next_step < len(self.steps) else 0
        return len(self._tokens) - waiting

    def truncate(self, n_keep: int) -> None:
        del self._tokens[n_keep:]

    def prefill(self, tokens: list[int]) -> None:
        self._tokens.extend(tokens)

    def verify(self, root: int, tree: DraftTree) -> np.ndarray:
        step = self.steps[self.next_step]
        if not (np.array_equal(step.tokens, tree.tokens) and np.array_equal(step.parents, tree.parents)):
            raise SystemExit(f"step {self.next_step}: the replay drafted another tree than the recording")
        self.next_step += 1
        return step.logits

    def commit(self, root: int, tree: DraftTree, accepted: list[int]) -> None:
        self._tokens.append(root)
        self._tokens.extend(tree.tokens[accepted].tolist())


def run_prompts(engine: Engine, prompts: list[list[int]], settings: GenerationSettings) -> tuple[list, float]:
    """Outputs, and the seconds of decoding (prefill excluded), run as `localspec bench` runs them."""
    method = bench.EngineMethod(settings.drafter, engine)
    runs = [method.run(tokens, settings) for tokens in prompts]
    return [run.tokens for run in runs], sum(run.seconds for run in runs)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("mode", choices=("record", "replay"))
    ap.add_argument("--model", required=True)
    ap.add_argument("--prompts", default="benchmarks/prompts.jsonl")
    ap.add_argument("--drafter", default="auto")
    ap.add_argument("-n", "--max-tokens", type=int, default=96)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--trace", required=True)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    settings = BackendSettings(n_ctx=2048, n_threads=args.threads)
    real = LlamaCppBackend(args.model, settings)
    curve = cached_cost_curve(real, args.model, settings.speed_key, settings.n_threads)
    prompts = [bench.encode_prompt(real, p) for p in bench.load_prompts(args.prompts)]
    generation = GenerationSettings(max_tokens=args.max_tokens, drafter=args.drafter)
    max_nodes = min(64, real.n_batch - 1)
    if args.mode == "record":
        backend = RecordingBackend(real)
        budget = RecordingBudget(curve, max_nodes=max_nodes, backend=backend)
        outputs, seconds = run_prompts(Engine(backend, budget=budget), prompts, generation)
        with open(args.trace, "wb") as f:
            pickle.dump((budget.steps, outputs), f)
        print(f"recorded {len(budget.steps)} steps, {seconds:.2f} s of decoding")
        return
    with open(args.trace, "rb") as f:
        steps, recorded_outputs = pickle.load(f)
    best = float("inf")
    for _ in range(args.rounds):  # fresh drafter and budget each round, as in the recording
        backend = ReplayBackend(real, steps)
        engine = Engine(backend, budget=ReplayBudget(curve, max_nodes=max_nodes, steps=steps))
        start = time.perf_counter()
        outputs, seconds = run_prompts(engine, prompts, generation)
        if outputs != recorded_outputs or backend.next_step != len(steps):
            raise SystemExit("the replay's outputs differ from the recording's")
        best = min(best, seconds)
        print(f"round: {seconds:.3f} s of decoding loop, {time.perf_counter() - start:.3f} s in all")
    per_step = best / len(steps) * 1000
    print(f"{len(steps)} steps: {per_step:.3f} ms a step outside the model (best of {args.rounds})")


if __name__ == "__main__":
    main()
