"""`localspec tune` as functions: measure memory, plan, measure speed, write a profile.

1. Memory: two calibration loads fit the compute scratch (cached), then a few checks at other
   context and tree settings compare the memory model's prediction with the measured peak RSS.
2. Plan under the budget (none: what is free) with the memory model.
3. Load the planned configuration; measure the verify cost curve (cached for the engine's budget),
   prime Token Recycling's matrix from the model (saved where `generate`, `serve` and `chat`
   restore it), and measure tokens per second of plain decoding and of each drafter on a short
   built-in prompt set.
4. Write a profile with the planned settings and what was measured.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from localspec.device import DeviceInfo, probe
from localspec.errors import InvalidSettingsError
from localspec.memory import MemoryBreakdown, ModelMemory, ScratchModel, calibrate, estimate, measure
from localspec.planner import Plan, Planner, SpeedModel, format_bytes
from localspec.profiles import check_profile_name, write_profile
from localspec.settings import BackendSettings, GenerationSettings

TUNE_PROMPTS = (
    "def fibonacci(n):\n    if n < 2:\n        return n\n    return",
    "import os\nimport sys\n\n\ndef main():\n    for name in os.listdir(",
    "class Stack:\n    def __init__(self):\n        self.items = []\n\n    def push(self, item):\n",
    "<|im_start|>user\nWhat is a list comprehension in Python?<|im_end|>\n<|im_start|>assistant\n",
    "for i in range(10):\n    print(i)\nfor i in range(10):\n    print(",
    "<|im_start|>user\nRewrite: x = [] ; for a in b: x.append(a * 2)<|im_end|>\n<|im_start|>assistant\n",
)
TUNE_DRAFTERS = ("none", "auto", "recycling", "retrieval")

PRIME_SECONDS = 120.0  # priming stops here; the tokens left out are the rarest ones

Progress = Callable[[str, int, int], None]  # (stage, done, total)


@dataclass(frozen=True)
class MemoryCheck:
    label: str
    predicted: MemoryBreakdown
    measured_rss: int

    @property
    def error(self) -> float:
        return self.predicted.host / self.measured_rss - 1.0


@dataclass(frozen=True)
class SpeedResult:
    drafter: str
    tokens: int
    seconds: float
    mean_accepted: float

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.seconds if self.seconds > 0 else 0.0


@dataclass
class TuneResult:
    model_path: Path
    device: DeviceInfo
    scratch: ScratchModel
    plan: Plan
    checks: list[MemoryCheck] = field(default_factory=list)
    speeds: dict[str, SpeedResult] = field(default_factory=dict)
    profile_path: Path | None = None
    primed_tokens: int = 0

    def speedups(self) -> dict[str, float]:
        base = self.speeds["none"].tokens_per_s if "none" in self.speeds else 0.0
        return {name: round(s.tokens_per_s / base, 3) if base else 0.0 for name, s in self.speeds.items()}

    @property
    def speedup(self) -> float:
        """Measured tokens/s of the planned drafter over plain decoding."""
        return self.speedups().get(self.plan.drafter, 1.0)


def _noop(stage: str, done: int, total: int) -> None:
    pass


def check_memory(model_path: Path, model: ModelMemory, scratch: ScratchModel, n_threads: int,
                 points: list[tuple[int, int, str]], progress: Progress = _noop) -> list[MemoryCheck]:
    """Predicted vs measured peak RSS at (n_ctx, tree nodes, drafter) points."""
    checks = []
    for i, (n_ctx, nodes, drafter) in enumerate(points):
        settings = BackendSettings(n_ctx=n_ctx, n_batch=min(128, n_ctx // 2), n_threads=n_threads,
                                   max_tree_paths=max(1, min(nodes, 64)))
        run = measure(model_path, settings, nodes, drafter)
        checks.append(MemoryCheck(f"ctx {n_ctx}, tree {nodes}, {drafter}",
                                  estimate(model, settings, nodes, drafter, scratch), run.peak_rss))
        progress("memory", i + 1, len(points))
    return checks


def prime_learned_matrix(backend, model_path: Path, progress: Progress = _noop) -> int:
    """Prime this model's saved recycling matrix where no run has taught it yet; tokens primed."""
    from localspec.drafters.persist import restore_learned, save_learned
    from localspec.drafters.priming import prime_recycling
    from localspec.drafters.recycling import TokenRecyclingDrafter

    matrix = TokenRecyclingDrafter(n_vocab=backend.n_vocab)
    restore_learned(matrix, model_path, backend.n_vocab)
    primed = prime_recycling(backend, matrix, PRIME_SECONDS,
                             on_batch=lambda done, total: progress("prime", done, total))
    save_learned(matrix, model_path)
    return primed


def measure_speed(engine, backend, prompts: tuple[str, ...], drafters: tuple[str, ...], max_tokens: int,
                  tree_nodes: int, progress: Progress = _noop) -> dict[str, SpeedResult]:
    """Greedy tokens/s of each drafter over the prompts, interleaved, after an untimed pass that
    warms what a long-running user has warm: thread pools, the recycling matrix, the budget's
    acceptance estimates. Drafts are capped as `generate` caps them by default."""
    from localspec.generate import generate

    totals = {d: [0, 0.0, 0] for d in drafters}
    encoded = [backend.tokenize(p, add_special=True, parse_special=True) for p in prompts]
    draft_tokens = min(max(tree_nodes, 0), GenerationSettings.max_draft_tokens)
    done = 0
    for timed in (False, True):
        for tokens in encoded:
            for drafter in drafters:
                settings = GenerationSettings(max_tokens=max_tokens, drafter=drafter,
                                              max_draft_tokens=draft_tokens if drafter != "none" else 0)
                stats = generate(engine, tokens, settings).stats
                done += 1
                progress("speed", done, 2 * len(encoded) * len(drafters))
                if not timed:
                    continue
                totals[drafter][0] += stats.tokens
                totals[drafter][1] += stats.seconds
                totals[drafter][2] += stats.steps
    return {d: SpeedResult(d, t, s, t / steps if steps else 0.0) for d, (t, s, steps) in totals.items()}


def tune(model_path: Path, budget: int | None, n_threads: int, budget_text: str | None = None,
         name: str = "tuned", max_tokens: int = 64, prompts: tuple[str, ...] = TUNE_PROMPTS,
         drafters: tuple[str, ...] = TUNE_DRAFTERS, check_points: list[tuple[int, int, str]] | None = None,
         progress: Progress = _noop, device: DeviceInfo | None = None) -> TuneResult:
    from localspec.backends.llamacpp import LlamaCppBackend
    from localspec.budget import SpeculationBudget, cached_cost_curve
    from localspec.drafters import Drafter, make_drafter
    from localspec.drafters.persist import restore_learned
    from localspec.engine import Engine

    check_profile_name(name)  # before minutes of measuring, not when writing the result
    if max_tokens < 1:
        raise InvalidSettingsError(f"max_tokens must be >= 1, got {max_tokens}")
    device = device or probe()
    model = ModelMemory.from_gguf(model_path)
    steps = [0]

    def calibrated() -> None:
        steps[0] += 1
        progress("calibrate", steps[0], 2)

    scratch = calibrate(model_path, n_threads, refresh=True, on_step=calibrated)
    planner = Planner(model, device, scratch, SpeedModel(), n_threads)
    base = BackendSettings(n_ctx=0, n_threads=n_threads)  # 0: start from the model's own context
    plan = planner.plan(budget, base)
    n_ctx = plan.settings.n_ctx
    if check_points is None:
        check_points = [(max(n_ctx // 4, 256), 0, "none"), (n_ctx, plan.tree_nodes, plan.drafter)]
    checks = check_memory(model_path, model, scratch, n_threads, check_points, progress)

    settings = plan.settings
    with LlamaCppBackend(model_path, settings) as backend:
        progress("cost curve", 0, 1)
        curve = cached_cost_curve(backend, model_path, settings.speed_key, n_threads, refresh=True)
        progress("cost curve", 1, 1)
        primed = prime_learned_matrix(backend, model_path, progress)

        def restored(name: str) -> Drafter:  # as `generate` starts them: from the saved matrix
            drafter = make_drafter(name)
            restore_learned(drafter, model_path, backend.n_vocab)
            return drafter

        engine = Engine(backend, budget=SpeculationBudget(curve, max_nodes=max(plan.tree_nodes, 1)),
                        new_drafter=restored)
        speeds = measure_speed(engine, backend, prompts, drafters, max_tokens, plan.tree_nodes, progress)

    result = TuneResult(model_path, device, scratch, plan, checks, speeds, primed_tokens=primed)
    # re-plan with the measured speeds, so a tight budget trades the drafters that paid least here
    measured_speed = SpeedModel(curve=curve, speedups=result.speedups())
    result.plan = Planner(model, device, scratch, measured_speed, n_threads).plan(budget, base)
    result.profile_path = save_profile(result, name, budget_text)
    return result


def save_profile(result: TuneResult, name: str, budget_text: str | None) -> Path:
    plan = result.plan
    s = plan.settings
    settings = {"n_ctx": s.n_ctx, "n_batch": s.n_batch, "n_threads": s.n_threads,
                "n_gpu_layers": s.n_gpu_layers,
                "kv_type": s.kv_type, "max_tree_paths": s.max_tree_paths, "tree_nodes": plan.tree_nodes,
                "drafter": plan.drafter, "budget": budget_text}
    measured = {
        "model": str(result.model_path),
        "speedup": result.speedup,
        "speedups": result.speedups(),
        "tokens_per_s": {d: round(r.tokens_per_s, 2) for d, r in result.speeds.items()},
        "mean_accepted": {d: round(r.mean_accepted, 3) for d, r in result.speeds.items()},
        "planned_bytes": plan.memory.total,
        "memory_checks": [{"label": c.label, "predicted": c.predicted.host, "measured": c.measured_rss}
                          for c in result.checks],
        "traded": list(plan.traded),
    }
    description = (f"tuned for {result.model_path.name} on {result.device.kind}; planned "
                   f"{format_bytes(plan.memory.total)}")
    return write_profile(name, settings, description, measured)
