"""SpecMemo targets, measured: memory of speculation vs plain decoding, and a half-size budget.

    python benchmarks/memory.py --model /tmp/demo-wide.gguf --threads 2 [--ctx N] [--prompts 12]

Every configuration runs in a fresh process (so peak RSS is its own) over the same prompts, greedy:
  plain      the unconstrained plan's settings, plain decoding
  spec       the unconstrained plan, the `auto` drafter under the device-aware budget
  specmemo   the plan for a budget of plain's measured peak + 5%
  half       the plan for half the unconstrained plan's predicted total
and prints one JSON object: peak RSS, tokens/s and speedup for each, and the target checks.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

PROMPTS = Path(__file__).with_name("prompts.jsonl")


def child(request: dict) -> dict:
    from localspec.backends.llamacpp import LlamaCppBackend
    from localspec.budget import SpeculationBudget, cached_cost_curve
    from localspec.chat import Message, encode_chat
    from localspec.engine import Engine
    from localspec.generate import generate
    from localspec.memory import peak_rss
    from localspec.settings import BackendSettings, GenerationSettings

    settings = BackendSettings(**request["settings"])
    with LlamaCppBackend(request["model"], settings) as backend:
        budget = None
        if request["drafter"] != "none":
            curve = cached_cost_curve(backend, request["model"], "cpu", settings.n_threads)
            budget = SpeculationBudget(curve, max_nodes=max(1, min(64, request["tree_nodes"])))
        engine = Engine(backend, budget=budget)
        nodes = request["tree_nodes"] if request["drafter"] != "none" else 0
        gen = GenerationSettings(max_tokens=request["max_tokens"], drafter=request["drafter"],
                                 max_draft_tokens=nodes)
        tokens = seconds = 0.0
        for i, line in enumerate(request["prompts"]):
            if "messages" in line:
                prompt = encode_chat(backend, [Message(m["role"], m["content"]) for m in line["messages"]])
            else:
                prompt = backend.tokenize(line["prompt"], add_special=True)
            prompt = prompt[-(backend.n_ctx - request["max_tokens"] - 80):]
            stats = generate(engine, prompt, gen).stats
            if i:  # the first prompt is a warm-up
                tokens += stats.tokens
                seconds += stats.seconds
    return {"peak_rss": peak_rss(), "tokens_per_s": tokens / seconds if seconds else 0.0}


def run(model: str, settings, tree_nodes: int, drafter: str, prompts: list, max_tokens: int) -> dict:
    request = {"model": model, "settings": asdict(settings), "tree_nodes": tree_nodes, "drafter": drafter,
               "prompts": prompts, "max_tokens": max_tokens}
    out = subprocess.run([sys.executable, __file__, "--child", json.dumps(request)], capture_output=True,
                         text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="/tmp/demo-wide.gguf")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--ctx", type=int, default=0, help="preferred context (0: the model's own)")
    parser.add_argument("--prompts", type=int, default=12)
    parser.add_argument("--max-tokens", type=int, default=96)
    parser.add_argument("--child")
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(json.loads(args.child))))
        return

    from localspec.device import probe
    from localspec.errors import LocalspecError
    from localspec.memory import ModelMemory, calibrate
    from localspec.planner import Planner
    from localspec.settings import BackendSettings

    lines = [json.loads(x) for x in PROMPTS.read_text().splitlines() if x.strip()]
    prompts = lines[:: max(1, len(lines) // args.prompts)][: args.prompts + 1]
    model = ModelMemory.from_gguf(args.model)
    planner = Planner(model, probe(), calibrate(args.model, args.threads), n_threads=args.threads)
    base = BackendSettings(n_ctx=args.ctx, n_threads=args.threads)
    full = planner.plan(None, base)
    report: dict = {"model": args.model, "unconstrained_plan": full.as_dict()}

    def go(name: str, plan, drafter: str | None = None) -> dict:
        settings = plan.settings
        drafter = drafter or plan.drafter
        if drafter == "none":
            settings = BackendSettings(**(asdict(settings) | {"max_tree_paths": 1}))
        result = run(args.model, settings, plan.tree_nodes, drafter, prompts, args.max_tokens)
        report[name] = result | {"predicted": plan.memory.total, "settings": asdict(settings),
                                 "tree_nodes": plan.tree_nodes, "drafter": drafter,
                                 "traded": list(plan.traded)}
        return report[name]

    plain = go("plain", full, "none")
    spec = go("spec", full)
    try:
        lean = planner.plan(int(plain["peak_rss"] * 1.05), base)
        specmemo = go("specmemo", lean)
    except LocalspecError as exc:
        specmemo = report["specmemo"] = {"error": str(exc)}
    half_budget = full.memory.total // 2
    try:
        half = go("half", planner.plan(half_budget, base))
        half_check = half["peak_rss"] <= half_budget
    except LocalspecError as exc:
        report["half"] = {"error": str(exc)}
        half_check = None
    speedup = spec["tokens_per_s"] / plain["tokens_per_s"]
    report["checks"] = {
        "spec_memory_over_plain": round(spec["peak_rss"] / plain["peak_rss"] - 1, 4),
        "spec_speedup": round(speedup, 3),
        "specmemo_memory_over_plain": (round(specmemo["peak_rss"] / plain["peak_rss"] - 1, 4)
                                       if "peak_rss" in specmemo else None),
        "specmemo_share_of_speedup": (round((specmemo["tokens_per_s"] / plain["tokens_per_s"]) / speedup, 3)
                                      if "peak_rss" in specmemo else None),
        "half_budget": half_budget,
        "half_peak_under_budget": half_check,
    }
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
