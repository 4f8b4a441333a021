"""Choose settings that fit a memory budget, and say what was given up to get there.

Start from the preferred configuration (everything on the GPU that fits, the model's context,
f16 KV, a 512 batch, a 64-node tree, the `auto` drafter) and, while the memory model says it
does not fit, take one step down a ladder. Steps come in groups tried in order: first
speculation width, drafter state and batch size (the cheapest in tokens per second per byte
saved, by the speculation budget's cost model, goes first), then KV quantisation, then context,
and GPU layers last. Settings the user fixed with a flag are never traded.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace

import numpy as np

from localspec.budget import CostCurve
from localspec.device import DeviceInfo
from localspec.errors import LocalspecError
from localspec.memory import (
    MemoryBreakdown,
    MiB,
    ModelMemory,
    ScratchModel,
    TorchMemory,
    estimate,
    estimate_torch,
)
from localspec.settings import MIN_CTX, BackendSettings

GiB = 1 << 30
MIN_BATCH = 8
MAX_AUTO_CTX = 32768  # the model's own context is used up to this unless asked for more
KV_LADDER = ("f16", "q8_0", "q4_0")
DRAFTER_LADDER = ("auto", "retrieval", "lookup", "none")
# tokens/s relative to plain decoding, from BENCHMARKS.md (widened demo, CPU); `tune` measures them
PRIOR_SPEEDUP = {"auto": 1.76, "recycling": 1.60, "retrieval": 1.56, "lookup": 1.44, "none": 1.0}
PRIOR_ACCEPTANCE = tuple(0.6 * 0.8 ** i for i in range(256))  # chance that tree slot i is accepted
PREFILL_COST_PER_HALVING = 0.005  # a smaller batch slows prompt processing, not decoding
UNITS = {"": 1, "b": 1, "k": 1000, "kb": 1000, "kib": 1 << 10, "m": 10**6, "mb": 10**6, "mib": MiB,
         "g": 10**9, "gb": 10**9, "gib": GiB, "t": 10**12, "tb": 10**12, "tib": 1 << 40}


class MemoryBudgetError(LocalspecError):
    """A budget string is malformed, or nothing fits in it."""


def parse_budget(text: str, available: int) -> int:
    """'6GiB', '512MiB', '2.5GB', '1000000' (bytes) or '50%' (of `available`) -> bytes."""
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*(%|[a-zA-Z]*)\s*", str(text))
    unit = match.group(2).lower() if match else ""
    if not match or (unit != "%" and unit not in UNITS):
        raise MemoryBudgetError(
            f"bad memory budget {text!r}: use a size like 6GiB or 512MiB, or a share like 50%")
    value = float(match.group(1))
    if unit == "%":
        if not 0 < value <= 100:
            raise MemoryBudgetError(f"bad memory budget {text!r}: a share must be in (0, 100]%")
        return int(available * value / 100)
    if value <= 0:
        raise MemoryBudgetError(f"bad memory budget {text!r}: it must be positive")
    return int(value * UNITS[unit])


def format_bytes(n: int) -> str:
    return f"{n / GiB:.2f} GiB" if abs(n) >= GiB else f"{n / MiB:.1f} MiB"


@dataclass(frozen=True)
class PlanState:
    n_ctx: int
    n_batch: int
    kv_type: str
    n_gpu_layers: int
    tree_nodes: int
    drafter: str


@dataclass(frozen=True)
class Plan:
    settings: BackendSettings
    tree_nodes: int  # most draft nodes verified per step (0 = plain decoding)
    drafter: str
    memory: MemoryBreakdown
    budget: int | None
    host_limit: int
    device_limit: int
    traded: tuple[str, ...]
    expected_speedup: float
    backend: str = "llamacpp"  # or "torch": of the settings, only n_ctx applies to it

    def as_dict(self) -> dict:
        s = self.settings
        return {"backend": self.backend, "n_ctx": s.n_ctx, "n_batch": s.n_batch,
                "n_gpu_layers": s.n_gpu_layers, "kv_type": s.kv_type, "max_tree_paths": s.max_tree_paths,
                "tree_nodes": self.tree_nodes, "drafter": self.drafter,
                "budget": self.budget, "host_limit": self.host_limit, "device_limit": self.device_limit,
                "memory": self.memory.as_dict(), "traded": list(self.traded),
                "expected_speedup": round(self.expected_speedup, 3)}


@dataclass(frozen=True)
class SpeedModel:
    """Tokens per second relative to plain decoding, by the budget's cost model."""

    curve: CostCurve | None = None
    speedups: dict[str, float] | None = None  # measured per drafter by `tune`
    acceptance: tuple[float, ...] = PRIOR_ACCEPTANCE

    def tree_factor(self, nodes: int) -> float:
        """Best expected tokens/s with at most `nodes` nodes, relative to the 64-node best."""
        def best(n: int) -> float:
            k = np.arange(n + 1)
            gain = 1.0 + np.concatenate([[0.0], np.cumsum(np.asarray(self.acceptance[:n]))])
            seconds = self.curve.time(k + 1) if self.curve else 1.0 + 0.03 * k  # flat-ish if unmeasured
            return float(np.max(gain / seconds))
        return best(nodes) / best(64) if nodes else 1.0 / best(64)

    def speed(self, state: PlanState) -> float:
        if state.tree_nodes == 0 or state.drafter == "none":
            return 1.0
        table = self.speedups or PRIOR_SPEEDUP
        return max(table.get(state.drafter, 1.0) * self.tree_factor(state.tree_nodes), 1.0)


def _down(ladder: tuple, value) -> object | None:
    i = ladder.index(value) if value in ladder else -1
    return ladder[i + 1] if 0 <= i < len(ladder) - 1 else None


def _moves(state: PlanState, fixed: frozenset[str]) -> list[list[tuple[str, PlanState]]]:
    """Candidate single steps, grouped in trading order."""
    first: list[tuple[str, PlanState]] = []
    if "tree_nodes" not in fixed and state.tree_nodes > 0:
        nodes = state.tree_nodes // 2 if state.tree_nodes > 4 else 0
        first.append((f"tree {state.tree_nodes} -> {nodes} nodes", replace(state, tree_nodes=nodes)))
    if "drafter" not in fixed and (nxt := _down(DRAFTER_LADDER, state.drafter)):
        first.append((f"drafter {state.drafter} -> {nxt}", replace(state, drafter=nxt)))
    batch = max(state.n_batch // 2, MIN_BATCH, state.tree_nodes + 1)
    if "n_batch" not in fixed and batch < state.n_batch:
        first.append((f"batch {state.n_batch} -> {batch}", replace(state, n_batch=batch)))
    kv: list[tuple[str, PlanState]] = []
    if "kv_type" not in fixed and (nxt := _down(KV_LADDER, state.kv_type)):
        kv.append((f"kv cache {state.kv_type} -> {nxt}", replace(state, kv_type=nxt)))
    ctx: list[tuple[str, PlanState]] = []
    if "n_ctx" not in fixed and state.n_ctx > MIN_CTX:
        n_ctx = max(state.n_ctx // 2, MIN_CTX)
        ctx.append((f"context {state.n_ctx} -> {n_ctx}",
                    replace(state, n_ctx=n_ctx, n_batch=min(state.n_batch, n_ctx))))
    gpu: list[tuple[str, PlanState]] = []
    if "n_gpu_layers" not in fixed and state.n_gpu_layers > 0:
        gpu.append((f"gpu layers {state.n_gpu_layers} -> {state.n_gpu_layers - 1}",
                    replace(state, n_gpu_layers=state.n_gpu_layers - 1)))
    return [first, kv, ctx, gpu]


class Planner:
    def __init__(self, model: ModelMemory, device: DeviceInfo, scratch: ScratchModel,
                 speed: SpeedModel | None = None, n_threads: int = 1,
                 torch: TorchMemory | None = None) -> None:
        """`torch` plans for the torch backend instead of llama.cpp: its weights are dequantised
        whole onto one device, so only the context is traded."""
        self.model = model
        self.device = device
        self.scratch = scratch
        self.speed = speed or SpeedModel()
        self.n_threads = n_threads
        self.torch = torch

    def settings(self, state: PlanState, base: BackendSettings) -> BackendSettings:
        paths = max(1, min(base.max_tree_paths, state.tree_nodes or 1, state.n_batch))
        return replace(base, n_ctx=state.n_ctx, n_batch=state.n_batch, kv_type=state.kv_type,
                       n_gpu_layers=state.n_gpu_layers, max_tree_paths=paths, n_threads=self.n_threads)

    def memory(self, state: PlanState, base: BackendSettings) -> MemoryBreakdown:
        settings = self.settings(state, base)
        if self.torch is not None:
            return estimate_torch(self.model, settings, state.tree_nodes, state.drafter, self.torch)
        return estimate(self.model, settings, state.tree_nodes, state.drafter, self.scratch)

    def on_gpu(self, state: PlanState) -> bool:
        return self.torch.on_gpu if self.torch is not None else state.n_gpu_layers > 0

    def limits(self, budget: int | None, on_gpu: bool) -> tuple[int, int]:
        """Usable host and device bytes, less a safety margin (llama.cpp's --fit keeps one too)."""
        host = self.device.ram_available
        device = 0
        if on_gpu:
            total = self.device.gpus[0].total_bytes
            device = self.device.gpu_free - min(GiB, total // 10)
            if budget is not None:
                device = min(device, budget)
        elif budget is not None:
            host = budget
        return max(host - max(host // 32, 8 * MiB), 0), max(device, 0)

    def initial(self, base: BackendSettings, tree_nodes: int, drafter: str,
                fixed: frozenset[str]) -> PlanState:
        n_ctx = base.n_ctx or min(self.model.context_length or 4096, MAX_AUTO_CTX)
        gpu = base.n_gpu_layers
        if ("n_gpu_layers" not in fixed and self.device.kind != "cpu") or gpu < 0:
            gpu = self.model.n_layer + 1
        if self.device.kind == "cpu":
            gpu = 0
        if "n_batch" in fixed:  # a fixed batch caps the tree instead
            tree_nodes = min(tree_nodes, base.n_batch - 1)
        return PlanState(n_ctx=n_ctx, n_batch=max(min(base.n_batch, n_ctx), tree_nodes + 1, MIN_BATCH),
                         kv_type=base.kv_type, n_gpu_layers=gpu, tree_nodes=tree_nodes, drafter=drafter)

    def plan(self, budget: int | None, base: BackendSettings | None = None, tree_nodes: int = 64,
             drafter: str = "auto", fixed: frozenset[str] = frozenset()) -> Plan:
        """The preferred configuration, stepped down until it fits `budget` (None: what is free)."""
        base = base or BackendSettings(n_threads=self.n_threads)
        if self.torch is not None:
            fixed = fixed | {"tree_nodes", "drafter", "n_batch", "kv_type", "n_gpu_layers"}
        state = self.initial(base, tree_nodes, drafter, fixed)
        traded: list[str] = []
        while True:
            host_limit, device_limit = self.limits(budget, self.on_gpu(state))
            mem = self.memory(state, base)
            if mem.host <= host_limit and mem.device <= device_limit:
                break
            step = self._cheapest_step(state, base, fixed)
            if step is None:
                raise MemoryBudgetError(self._no_fit_message(budget, state, mem, host_limit, device_limit))
            traded.append(step[0])
            state = step[1]
        return Plan(self.settings(state, base), state.tree_nodes, state.drafter, mem, budget, host_limit,
                    device_limit, tuple(traded), self.speed.speed(state),
                    "torch" if self.torch is not None else "llamacpp")

    def _cheapest_step(self, state: PlanState, base: BackendSettings, fixed: frozenset[str]
                       ) -> tuple[str, PlanState] | None:
        here = self.memory(state, base)
        speed = self.speed.speed(state)
        for group in _moves(state, fixed):
            scored = []
            for label, nxt in group:
                after = self.memory(nxt, base)
                saved = (here.host + here.device) - (after.host + after.device)
                if saved <= 0 and not label.startswith("gpu"):
                    continue
                loss = max(speed - self.speed.speed(nxt), 0.0) / max(speed, 1e-9)
                if label.startswith("batch"):
                    loss += PREFILL_COST_PER_HALVING
                scored.append((loss / max(saved, 1), label, nxt))
            if scored:
                _, label, nxt = min(scored, key=lambda t: t[0])
                return label, nxt
        return None

    def _no_fit_message(self, budget: int | None, state: PlanState, mem: MemoryBreakdown, host_limit: int,
                        device_limit: int) -> str:
        where = f"the budget of {format_bytes(budget)}" if budget is not None else "the free memory"
        need = mem.host if mem.host > host_limit else mem.device
        limit = host_limit if mem.host > host_limit else device_limit
        if self.torch is None:
            shape = (f"context {state.n_ctx}, batch {state.n_batch}, kv {state.kv_type}, "
                     f"{state.n_gpu_layers} GPU layers")
        else:
            shape = f"context {state.n_ctx} on the torch backend"
        return (f"the model does not fit in {where}: the smallest plan ({shape}) needs "
                f"{format_bytes(need)}, {format_bytes(mem.weights_host + mem.weights_device)} of it weights, "
                f"and {format_bytes(limit)} is usable")
