"""Measure the torch backend's drafters (layerskip, polybasic, ...) against its plain decoding.

    python benchmarks/torch_bench.py --model /tmp/demo-wide.gguf --prompts benchmarks/prompts.jsonl \
        --methods none,auto,layerskip,polybasic -n 96 --threads 2 --json /tmp/torch-bench.json

Same runner and report format as `localspec bench` (interleaved runs, warm-up, JSON + markdown).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from localspec import bench as b
from localspec.backends.torch_backend import TorchBackend, TorchSettings, cached_torch_cost_curve
from localspec.budget import SpeculationBudget
from localspec.drafters.polybasic import torch_drafter_factory
from localspec.engine import Engine
from localspec.settings import GenerationSettings, SamplingSettings


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--prompts", default="benchmarks/prompts.jsonl")
    ap.add_argument("--methods", default="none,recycling,retrieval,auto,layerskip,polybasic")
    ap.add_argument("-n", "--max-tokens", type=int, default=96)
    ap.add_argument("--draft-tokens", type=int, default=16)
    ap.add_argument("--temperature", type=float, default=0.0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default=None)
    ap.add_argument("--dtype", default=None)
    ap.add_argument("--ctx", type=int, default=2048)
    ap.add_argument("--limit", type=int, default=None)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--json", required=True)
    args = ap.parse_args()

    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    if "none" not in methods:
        methods.insert(0, "none")
    prompts = b.load_prompts(args.prompts)[: args.limit]
    backend = TorchBackend(args.model, TorchSettings(device=args.device, dtype=args.dtype, n_ctx=args.ctx,
                                                     n_threads=args.threads))
    start = time.perf_counter()
    curve = cached_torch_cost_curve(backend)
    print(f"cost curve ({time.perf_counter() - start:.1f} s): "
          + ", ".join(f"t({n})={s * 1000:.1f}ms" for n, s in zip(curve.sizes, curve.seconds, strict=True)))
    engine = Engine(backend, budget=SpeculationBudget(curve),
                    new_drafter=torch_drafter_factory(backend, curve))
    settings = GenerationSettings(max_tokens=args.max_tokens, max_draft_tokens=args.draft_tokens,
                                  sampling=SamplingSettings(temperature=args.temperature, seed=0))
    runners = [b.EngineMethod(m, engine) for m in methods]
    done = [0]

    def progress() -> None:
        done[0] += 1
        print(f"\r{done[0]}/{len(prompts) * len(runners) * args.repeats}", end="", flush=True)

    report = b.run_bench(prompts, runners, backend, settings, args.repeats, on_run=progress)
    print()
    summary, by_category = b.summarize(report["prompts"], methods)
    skipper = engine.drafter("layerskip") if "layerskip" in methods else None
    report = {"model": Path(args.model).name,
              "device": f"torch {backend.device} {backend.settings.resolved_dtype()}, "
                        + b.device_description(args.threads, 0),
              "settings": {"max_tokens": args.max_tokens, "temperature": args.temperature,
                           "draft_tokens": args.draft_tokens, "n_ctx": args.ctx, "threads": args.threads,
                           "prompts": len(prompts), "repeats": args.repeats},
              "skip_set": None if skipper is None or skipper.skip is None else
              {"attn": sorted(skipper.skip.attn), "mlp": sorted(skipper.skip.mlp), "match": skipper.score,
               "ranks": skipper.ranks.round(3).tolist(), "learnt": skipper.stats.rates[:3].round(3).tolist(),
               "level_seconds": skipper.level_seconds,
               "evals": skipper.evals, "search_seconds": round(skipper.search_seconds, 2)},
              "polybasic_chains": None if "polybasic" not in methods else
              {regime: {c: vars(s) for c, s in chains.items()}
               for regime, chains in engine.drafter("polybasic").stats.items()},
              **report, "summary": summary, "by_category": by_category}
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1, default=float))
    table = b.markdown_table(report)
    out.with_suffix(".md").write_text(table)
    print(table)
    print("skip set:", report["skip_set"])
    print("polybasic chains:", report["polybasic_chains"])


if __name__ == "__main__":
    main()
