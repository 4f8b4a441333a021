"""Verify cost against context length, with llama.cpp's flash attention on and off.

    python benchmarks/context_cost.py --model /tmp/demo-wide.gguf --threads 2

Prints, for each setting and context length, the median time of one verify decode of n tokens
(a chain of n - 1 drafts behind the root), in ms. The cost curve the budget caches is measured
after a 64-token context; this shows how far real steps after longer contexts are from it.
"""

from __future__ import annotations

import argparse

from localspec.backends.llamacpp import LlamaCppBackend
from localspec.budget import measure_cost_curve
from localspec.settings import BackendSettings


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--ctx", type=int, default=2048)
    ap.add_argument("--contexts", default="64,512,1024,1536")
    ap.add_argument("--sizes", default="1,2,4,8,16")
    ap.add_argument("--repeats", type=int, default=7)
    args = ap.parse_args()
    sizes = tuple(int(n) for n in args.sizes.split(","))
    print("| flash attention | context | " + " | ".join(f"n = {n}" for n in sizes) + " |")
    print("|---|---|" + "---|" * len(sizes))
    for flash_attn in (True, False):
        settings = BackendSettings(n_ctx=args.ctx, n_threads=args.threads, flash_attn=flash_attn)
        with LlamaCppBackend(args.model, settings) as backend:
            for context in (int(c) for c in args.contexts.split(",")):
                curve = measure_cost_curve(backend, sizes=sizes, repeats=args.repeats, context=context)
                times = " | ".join(f"{1e3 * s:.1f}" for s in curve.seconds)
                print(f"| {'on' if flash_attn else 'off'} | {context} | {times} |", flush=True)


if __name__ == "__main__":
    main()
