"""Drafters and utilities shared by the tests."""

from __future__ import annotations

import zipfile
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

import numpy as np

from localspec.datastore import Datastore
from localspec.sampling import Distribution, GumbelNoise
from localspec.tree import DraftTree
from localspec.verify import Verdict


class ScriptedDrafter:
    """Proposes whatever `make_tree(history, budget)` returns; records what it saw."""

    name = "scripted"

    def __init__(self, make_tree: Callable[[np.ndarray, int], DraftTree]) -> None:
        self.make_tree = make_tree
        self.verdicts: list[Verdict] = []

    def begin(self, prompt: np.ndarray, noise: GumbelNoise | None = None) -> None:
        pass

    def propose(self, history: np.ndarray, budget: int) -> DraftTree:
        return self.make_tree(history, budget)

    def observe(self, tree: DraftTree, logits: np.ndarray, verdict: Verdict) -> None:
        self.verdicts.append(verdict)


class FakeBackend:
    """A deterministic 'model': the next token is `table[last token]`; text is one byte a token.

    It follows the Backend contract (root row first, commit keeps root + accepted path).
    """

    supports_trees = True
    max_tree_paths = 64
    chat_template = None
    bos_token = -1
    eos_token = 0

    def __init__(self, table: list[int], n_ctx: int = 64, eog: tuple[int, ...] = (0,)) -> None:
        self.table = np.asarray(table)
        self.n_vocab = len(table)
        self.n_ctx = n_ctx
        self.eog = set(eog)
        self._tokens: list[int] = []
        self.decoded_rows = 0

    @property
    def tokens(self) -> list[int]:
        return self._tokens

    @property
    def n_cached(self) -> int:
        return len(self._tokens)

    def tokenize(self, text: str, add_special: bool = True, parse_special: bool = False) -> list[int]:
        return [b % self.n_vocab for b in text.encode()]

    def token_bytes(self, token: int) -> bytes:
        return bytes([token])

    def special_token_text(self, token: int) -> str:
        return ""

    def is_eog(self, token: int) -> bool:
        return token in self.eog

    def truncate(self, n_keep: int) -> None:
        del self._tokens[n_keep:]

    def prefill(self, tokens: list[int]) -> None:
        self._tokens.extend(tokens)

    def verify(self, root: int, tree: DraftTree) -> np.ndarray:
        rows = [root] + tree.tokens.tolist()
        logits = np.zeros((len(rows), self.n_vocab), np.float32)
        logits[np.arange(len(rows)), self.table[rows]] = 10.0
        self.decoded_rows += len(rows)
        return logits

    def commit(self, root: int, tree: DraftTree, accepted: list[int]) -> None:
        self._tokens.extend([root] + tree.tokens[accepted].tolist())

    def close(self) -> None:
        pass


class EnumeratingCoin:
    """Replays a fixed prefix of decisions, then takes the first branch, recording alternatives.

    Driving a verifier to exhaustion gives the exact probability of every output.
    """

    def __init__(self, script: list[int]) -> None:
        self.script = script
        self.position = 0
        self.weight = 1.0
        self.choices: list[tuple[int, list[float]]] = []  # (choice taken, option weights)

    def _decide(self, weights: list[float]) -> int:
        if self.position < len(self.script):
            choice = self.script[self.position]
        else:
            choice = next(i for i, w in enumerate(weights) if w > 0)
        self.choices.append((choice, weights))
        self.position += 1
        self.weight *= weights[choice]
        return choice

    def accept(self, probability: float) -> bool:
        return self._decide([probability, 1.0 - probability]) == 0

    def draw(self, dist: Distribution) -> int:
        return int(dist.ids[self._decide(dist.probs.tolist())])


def enumerate_outputs(run) -> dict[tuple[int, ...], float]:
    outputs: dict[tuple[int, ...], float] = defaultdict(float)
    stack: list[list[int]] = [[]]
    while stack:
        coin = EnumeratingCoin(stack.pop())
        tokens = run(coin)
        if coin.weight > 0:
            outputs[tuple(tokens)] += coin.weight
        for depth in range(len(coin.script), len(coin.choices)):  # branch at every new decision
            taken, weights = coin.choices[depth]
            prefix = [c for c, _ in coin.choices[:depth]]
            stack.extend(prefix + [alt] for alt, w in enumerate(weights) if alt != taken and w > 0)
    return outputs


def not_an_index(path: Path) -> None:
    """Write one kind of file that is not a localspec index, named by `path`'s stem."""
    kind = path.stem
    if kind == "empty":
        path.write_bytes(b"")
    elif kind == "random":
        path.write_bytes(np.random.default_rng(0).bytes(300))
    elif kind == "jsonl":
        path.write_text('{"prompt": "hi"}\n{"prompt": "there"}\n')
    elif kind == "zip":
        with zipfile.ZipFile(path, "w") as archive:
            archive.writestr("notes.txt", "hello")
    elif kind == "npy":
        with open(path, "wb") as f:  # a file object keeps numpy from appending ".npy"
            np.save(f, np.arange(5))
    elif kind == "npz":
        with open(path, "wb") as f:
            np.savez(f, tokens=np.arange(5))
    elif kind == "truncated":
        Datastore.build([np.arange(50)]).save(path)
        path.write_bytes(path.read_bytes()[:-40])
    elif kind == "bad_suffixes":
        with open(path, "wb") as f:
            np.savez(f, tokens=np.arange(3, dtype=np.int32), suffixes=np.array([0, 7, 1]),
                     fingerprint=np.array("x"), version=np.array(1))
