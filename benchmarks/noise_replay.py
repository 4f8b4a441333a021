"""Does knowing the sampler's noise make Token Recycling's guesses better? An offline replay.

    python benchmarks/noise_replay.py --model localspec/demo/localspec-demo-6m-q8_0.gguf -n 96

Samples every prompt of the set plainly (the engine's seeded Gumbel-max draw at temperature T),
then replays the text through a recycling matrix that learns from the sampled path only, and
counts, at each position whose token already has a row: how often the sampled token is the
first guess by the model's ranking, the first guess ordered by kept logit / T + the noise, and
among the kept successors at all; and the tokens a 4-token chain of each kind gets accepted for.
"""

from __future__ import annotations

import argparse

import numpy as np

from localspec import bench
from localspec.backends.llamacpp import LlamaCppBackend
from localspec.drafters.recycling import TokenRecyclingDrafter
from localspec.sampling import GumbelNoise, make_distribution
from localspec.settings import BackendSettings, SamplingSettings
from localspec.tree import DraftTree

CHAIN = 4


def sample_plainly(backend: LlamaCppBackend, prompt: list[int], n: int, noise: GumbelNoise,
                   sampling: SamplingSettings) -> tuple[list[int], np.ndarray]:
    """The sampled continuation and the logits row before each of its tokens."""
    empty = DraftTree.empty("none")
    backend.truncate(0)
    backend.prefill(prompt[:-1])
    history, rows = list(prompt), []
    for _ in range(n):
        logits = np.asarray(backend.verify(history[-1], empty)[0], dtype=np.float64)
        backend.commit(history[-1], empty, [])
        rows.append(logits)
        history.append(noise.sample(make_distribution(logits, np.asarray(history), sampling), len(history)))
    return history[len(prompt):], np.asarray(rows)


def accepted(guesses: list[int], truth: list[int]) -> int:
    n = 0
    while n < min(len(guesses), len(truth)) and guesses[n] == truth[n]:
        n += 1
    return n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--prompts", default="benchmarks/prompts.jsonl")
    ap.add_argument("-n", "--max-tokens", type=int, default=96)
    ap.add_argument("--temperature", type=float, default=0.8)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    sampling = SamplingSettings(temperature=args.temperature, seed=args.seed)
    noise = GumbelNoise(args.seed, args.temperature)
    drafter = TokenRecyclingDrafter()
    counts = dict.fromkeys(("positions", "rank_first", "noise_first", "kept", "rank_chain", "noise_chain"), 0)
    with LlamaCppBackend(args.model, BackendSettings(n_ctx=2048, n_threads=args.threads)) as backend:
        for prompt in bench.load_prompts(args.prompts):
            tokens = bench.encode_prompt(backend, prompt)
            text, rows = sample_plainly(backend, tokens, args.max_tokens, noise, sampling)
            drafter.begin(np.asarray(tokens), noise)
            history = list(tokens)
            for i, token in enumerate(text):
                last, position = history[-1], len(history)
                if drafter.adj is not None and drafter.adj[last, 0] >= 0:
                    truth = text[i:i + CHAIN]
                    rank_chain, noise_chain, a, b = [], [], last, last
                    for depth in range(len(truth)):
                        if a >= 0:
                            a = int(drafter.adj[a, 0])
                            rank_chain.append(a)
                        if b >= 0:
                            b = int(drafter.ranked(np.array([b]), position + depth)[0, 0])
                            noise_chain.append(b)
                    counts["positions"] += 1
                    counts["rank_first"] += rank_chain[0] == token
                    counts["noise_first"] += noise_chain[0] == token
                    counts["kept"] += token in drafter.adj[last]
                    counts["rank_chain"] += accepted([t for t in rank_chain if t >= 0], truth)
                    counts["noise_chain"] += accepted([t for t in noise_chain if t >= 0], truth)
                drafter.learn(np.array([last]), rows[i:i + 1])
                history.append(token)
    n = max(counts["positions"], 1)
    print(f"T={args.temperature}: {counts['positions']} positions with a row; first guess right "
          f"{counts['rank_first'] / n:.3f} by rank, {counts['noise_first'] / n:.3f} with the noise; "
          f"sampled token kept {counts['kept'] / n:.3f}; {CHAIN}-token chain accepted "
          f"{counts['rank_chain'] / n:.3f} by rank, {counts['noise_chain'] / n:.3f} with the noise")


if __name__ == "__main__":
    main()
