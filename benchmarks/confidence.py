"""How sure is a model of its next token? The ceiling on acceptance when sampling.

    python benchmarks/confidence.py --model localspec/demo/localspec-demo-6m-q8_0.gguf -n 96

Greedy-decodes every prompt of the set and reads, at each position, the model's most likely
token's probability after temperature T. An exact sampling verifier accepts even a perfect draft
(the model's own top token) with that probability, so its mean bounds speculative speedups at T.
"""

from __future__ import annotations

import argparse

import numpy as np

from localspec import bench
from localspec.backends.llamacpp import LlamaCppBackend
from localspec.settings import BackendSettings
from localspec.tree import DraftTree


def top_probabilities(logits: np.ndarray, temperatures: list[float]) -> list[float]:
    out = []
    for t in temperatures:
        z = logits / t
        z -= z.max()
        p = np.exp(z)
        out.append(float(p.max() / p.sum()))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--prompts", default="benchmarks/prompts.jsonl")
    ap.add_argument("-n", "--max-tokens", type=int, default=96)
    ap.add_argument("--temperatures", default="0.8,1.0")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    temperatures = [float(t) for t in args.temperatures.split(",")]
    empty = DraftTree.empty("none")
    tops: list[list[float]] = []
    with LlamaCppBackend(args.model, BackendSettings(n_ctx=2048, n_threads=args.threads)) as backend:
        for prompt in bench.load_prompts(args.prompts):
            tokens = bench.encode_prompt(backend, prompt)
            backend.truncate(0)
            backend.prefill(tokens[:-1])
            root = tokens[-1]
            for _ in range(args.max_tokens):
                logits = np.asarray(backend.verify(root, empty)[0], dtype=np.float64)
                tops.append(top_probabilities(logits, temperatures))
                backend.commit(root, empty, [])
                root = int(logits.argmax())
                if backend.is_eog(root):
                    break
    table = np.asarray(tops)
    for i, t in enumerate(temperatures):
        col = table[:, i]
        print(f"T={t}: mean top-1 probability {col.mean():.3f}, median {np.median(col):.3f}, "
              f"above 0.9 at {np.mean(col > 0.9):.1%} of {len(col)} positions")


if __name__ == "__main__":
    main()
