"""A REST-style datastore: a suffix array over a user's tokenised files, queried for draft trees.

The files are concatenated with a separator (-1, never a token) after each. A query takes the
context's last 16..2 tokens, keeps the longest suffix that occurs in the files, gathers what
followed it (up to 5000 occurrences, 10 tokens each, cut at file ends), merges those
continuations into a trie where each node counts the continuations through it, and keeps the
most counted prefixes as the draft tree.
"""

from __future__ import annotations

import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from localspec.errors import LocalspecError
from localspec.sampling import GumbelNoise
from localspec.tree import DraftTree
from localspec.verify import Verdict

SEP = -1  # after each file; below every token, so a file's end sorts first
FORMAT_VERSION = 1
FIELDS = ("version", "tokens", "suffixes", "fingerprint")
ZIP_MAGIC = b"PK\x03\x04"  # np.savez writes a zip


class DatastoreError(LocalspecError):
    """The datastore file is missing, malformed, or was built for another tokenizer."""


def not_an_index(path: str | Path, reason: str = "") -> DatastoreError:
    hint = "build one with `localspec index build`"
    return DatastoreError(f"{path} is not a localspec index ({reason + '; ' if reason else ''}{hint})")


def _well_formed(tokens: np.ndarray, suffixes: np.ndarray, fingerprint: np.ndarray) -> bool:
    """Whether the arrays read back are what `save` writes, so that querying them cannot fail."""
    if fingerprint.shape != () or fingerprint.dtype.kind != "U":
        return False
    if tokens.ndim != 1 or tokens.shape != suffixes.shape:
        return False
    if tokens.dtype.kind not in "iu" or suffixes.dtype.kind not in "iu":
        return False
    if not tokens.size:
        return True
    return (bool(tokens.min() >= SEP) and int(tokens.max()) <= np.iinfo(np.int32).max
            and bool(suffixes.min() >= 0) and int(suffixes.max()) < len(suffixes))


def suffix_array(tokens: np.ndarray) -> np.ndarray:
    """Start positions of the suffixes of `tokens` in lexicographic order (prefix doubling).

    Each round sorts by (rank of the first k tokens, rank of the next k), doubling k until all
    ranks differ: O(n log^2 n), all in numpy. A suffix that ends sorts before its extensions.
    """
    n = len(tokens)
    if n == 0:
        return np.zeros(0, np.int64)
    rank = np.unique(tokens, return_inverse=True)[1].astype(np.int64).reshape(n)
    k = 1
    while True:
        second = np.zeros(n, np.int64)  # 0 = past the end
        second[:n - k] = rank[k:] + 1
        key = rank * (n + 1) + second
        sa = np.argsort(key, kind="stable")
        sorted_key = key[sa]
        new_rank = np.concatenate([[0], np.cumsum(sorted_key[1:] != sorted_key[:-1])])
        rank = np.empty(n, np.int64)
        rank[sa] = new_rank
        if new_rank[-1] == n - 1 or k >= n:
            return sa
        k *= 2


@dataclass(frozen=True)
class PrefixTrie:
    """Continuations merged by prefix: node i has `counts[i]` continuations through it.

    Nodes are ordered by count (descending), ties by depth, so parents come first and any
    leading slice is a tree.
    """

    tokens: np.ndarray  # int32 [n]
    parents: np.ndarray  # int32 [n], -1 = child of the root
    counts: np.ndarray  # int64 [n]
    depths: np.ndarray  # int32 [n], 1 = child of the root
    match_length: int  # length of the context suffix the continuations follow

    def top(self, max_nodes: int, source: str = "datastore") -> DraftTree:
        keep = max(0, min(max_nodes, len(self.tokens)))
        return DraftTree(self.tokens[:keep], self.parents[:keep], source)


@dataclass(eq=False)
class Datastore:
    tokens: np.ndarray  # int32: the files, each followed by SEP
    suffixes: np.ndarray  # int64: suffix array of `tokens`
    fingerprint: str = ""  # model/tokenizer the files were tokenised with
    max_query: int = 16
    min_query: int = 2
    max_matches: int = 5000
    max_depth: int = 10
    _padded: np.ndarray = field(init=False, repr=False)
    _keys: np.ndarray = field(init=False, repr=False)
    _key_bits: int = field(init=False, repr=False)
    _key_tokens: int = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if not (1 <= self.min_query <= self.max_query and self.max_depth >= 1 and self.max_matches >= 1):
            raise ValueError("need 1 <= min_query <= max_query, max_depth >= 1 and max_matches >= 1")
        # each suffix's first tokens, + 1 so that SEP and the end are 0, packed into one int64 the
        # first most significant: the sorted suffixes' keys are sorted, so np.searchsorted finds a prefix
        top = int(self.tokens.max(initial=0)) + 1
        self._key_bits = top.bit_length()
        self._key_tokens = 63 // self._key_bits
        # room to read max_query, max_depth or a key's tokens past any suffix start
        pad = np.full(max(self.max_query, self.max_depth, self._key_tokens), SEP, np.int32)
        self._padded = np.concatenate([self.tokens.astype(np.int32), pad])
        keys = np.zeros(len(self.suffixes), np.int64)
        for offset in range(self._key_tokens):
            keys = (keys << self._key_bits) | (self._padded[self.suffixes + offset].astype(np.int64) + 1)
        self._keys = keys

    @classmethod
    def build(cls, token_arrays: list[np.ndarray], fingerprint: str = "") -> Datastore:
        parts: list[np.ndarray] = []
        for array in token_arrays:
            array = np.asarray(array, np.int64).ravel()
            if array.size and array.min() < 0:
                raise ValueError("token ids must be >= 0")
            parts += [array.astype(np.int32), np.array([SEP], np.int32)]
        tokens = np.concatenate(parts) if parts else np.zeros(0, np.int32)
        return cls(tokens, suffix_array(tokens), fingerprint)

    @property
    def n_files(self) -> int:
        return int(np.count_nonzero(self.tokens == SEP))

    def save(self, path: str | Path) -> None:
        with open(path, "wb") as f:  # a file object keeps numpy from appending ".npz"
            np.savez(f, tokens=self.tokens, suffixes=self.suffixes,
                     fingerprint=np.array(self.fingerprint), version=np.array(FORMAT_VERSION))

    @classmethod
    def load(cls, path: str | Path, fingerprint: str | None = None) -> Datastore:
        """Read a datastore; with `fingerprint`, refuse one built for another tokenizer."""
        try:
            with open(path, "rb") as f:
                head = f.read(len(ZIP_MAGIC))
                if head != ZIP_MAGIC:  # else np.load reads it as .npy or refuses a pickle
                    raise not_an_index(path, "" if head else "empty")
                f.seek(0)
                with np.load(f, allow_pickle=False) as data:
                    if not set(FIELDS) <= set(data.files):
                        raise not_an_index(path)
                    version, tokens, suffixes, stored = (data[name] for name in FIELDS)
        except OSError as error:
            raise DatastoreError(f"cannot read datastore {path}: {error.strerror or error}") from error
        except (EOFError, KeyError, ValueError, RuntimeError, NotImplementedError, zipfile.BadZipFile,
                zlib.error) as error:
            raise not_an_index(path, "truncated or damaged") from error
        if version.shape != () or version.dtype.kind not in "iu":
            raise not_an_index(path)
        if int(version) != FORMAT_VERSION:
            raise DatastoreError(f"datastore {path} has an unsupported format (version {int(version)})")
        if not _well_formed(tokens, suffixes, stored):
            raise not_an_index(path, "truncated or damaged")
        stored = str(stored)
        if fingerprint is not None and fingerprint != stored:
            raise DatastoreError(
                f"datastore {path} was built for {stored!r}, not {fingerprint!r}; rebuild it")
        return cls(tokens.astype(np.int32), suffixes.astype(np.int64), stored)

    def _range(self, query: np.ndarray) -> tuple[int, int]:
        """The suffix-array ranks [lo, hi) of the suffixes that start with `query` (tokens >= 0):
        np.searchsorted on the packed keys of their first tokens, then the few suffixes left are
        compared past the key."""
        width = self._key_tokens
        head = [int(t) + 1 for t in query[:width]]
        if max(head, default=0) >> self._key_bits:
            return 0, 0  # a token above every token in the files (and too wide for a key)
        key, spare = 0, self._key_bits * (width - len(head))
        for value in head:
            key = (key << self._key_bits) | value
        key <<= spare
        lo = int(np.searchsorted(self._keys, key, "left"))
        hi = int(np.searchsorted(self._keys, key | ((1 << spare) - 1), "right"))
        if len(query) > width and hi > lo:
            rest = np.asarray(query[width:])
            window = self._padded[self.suffixes[lo:hi, None] + width + np.arange(len(rest))]
            match = np.flatnonzero((window == rest).all(axis=1))  # contiguous: the rows are sorted
            lo, hi = (lo + int(match[0]), lo + int(match[-1]) + 1) if match.size else (lo, lo)
        return lo, hi

    def search(self, context: np.ndarray) -> tuple[int, np.ndarray]:
        """The longest suffix length (max_query..min_query) of `context` found in the files, and
        the suffix-array ranks [lo, hi) of its occurrences; (0, empty) when none is found.
        Whenever a suffix occurs so does every shorter one (its tail), so the longest is found by
        a binary search over lengths."""
        context = np.asarray(context)
        shortest, longest = self.min_query, min(self.max_query, len(context))
        found, ranks = 0, (0, 0)
        while shortest <= longest and len(self.suffixes):
            length = (shortest + longest + 1) // 2
            lo, hi = self._range(context[-length:])
            if hi > lo:
                found, ranks, shortest = length, (lo, hi), length + 1
            else:
                longest = length - 1
        return found, np.arange(*ranks, dtype=np.int64)

    def continuations(self, context: np.ndarray) -> tuple[int, np.ndarray]:
        """What followed the longest matched suffix: [m, max_depth] tokens, SEP after a file ends.

        Rows stay in suffix-array order, hence sorted. Beyond `max_matches` occurrences an evenly
        spaced sample is taken: over sorted rows it keeps each continuation's share.
        """
        length, ranks = self.search(context)
        if len(ranks) > self.max_matches:
            ranks = ranks[np.linspace(0, len(ranks) - 1, self.max_matches).round().astype(np.int64)]
        starts = self.suffixes[ranks] + length
        rows = self._padded[starts[:, None] + np.arange(self.max_depth)]
        ended = np.logical_or.accumulate(rows == SEP, axis=1)
        return length, np.where(ended, SEP, rows)

    def trie(self, context: np.ndarray) -> PrefixTrie:
        """Every prefix of the continuations, counted, ordered by count (then depth)."""
        length, rows = self.continuations(context)
        n_rows, depth = rows.shape
        valid = rows != SEP
        changed = np.ones((n_rows, depth), bool)  # row starts a new prefix at this depth
        changed[1:] = np.logical_or.accumulate(rows[1:] != rows[:-1], axis=1)
        tokens, parents, counts, depths = [], [], [], []
        offset = 0
        group_above = np.zeros(n_rows, np.int64)
        for d in range(depth):  # sorted rows: a prefix's rows are contiguous
            group = np.cumsum(changed[:, d]) - 1
            starts = np.flatnonzero(changed[:, d])
            keep = valid[starts, d]
            tokens.append(rows[starts[keep], d])
            parents.append(group_above[starts[keep]] if d else np.full(int(keep.sum()), -1))
            counts.append(np.diff(np.append(starts, n_rows))[keep])  # rows in each prefix
            depths.append(np.full(int(keep.sum()), d + 1))
            node_id = np.full(len(starts), -1, np.int64)
            node_id[keep] = offset + np.arange(int(keep.sum()))
            group_above = node_id[group]
            offset += int(keep.sum())
        return _ordered_trie(np.concatenate(tokens), np.concatenate(parents), np.concatenate(counts),
                             np.concatenate(depths), length)

    def lookup(self, context: np.ndarray, max_nodes: int) -> DraftTree:
        """The `max_nodes` most counted continuation prefixes as a draft tree."""
        if max_nodes <= 0:
            return DraftTree.empty("datastore")
        return self.trie(context).top(max_nodes)


def _ordered_trie(tokens: np.ndarray, parents: np.ndarray, counts: np.ndarray, depths: np.ndarray,
                  match_length: int) -> PrefixTrie:
    """Reorder nodes by (count desc, depth): a parent counts at least its child, so it comes first."""
    order = np.lexsort((depths, -counts))
    position = np.empty(len(order), np.int64)
    position[order] = np.arange(len(order))
    new_parents = np.where(parents[order] >= 0, position[np.maximum(parents[order], 0)], -1)
    return PrefixTrie(tokens[order].astype(np.int32), new_parents.astype(np.int32),
                      counts[order].astype(np.int64), depths[order].astype(np.int32), match_length)


class DatastoreDrafter:
    """Drafts the datastore's top continuation prefixes for the context's end."""

    name = "datastore"

    def __init__(self, datastore: Datastore, max_nodes: int = 64) -> None:
        self.datastore = datastore
        self.max_nodes = max_nodes

    def begin(self, prompt: np.ndarray, noise: GumbelNoise | None = None) -> None:
        pass

    def propose(self, history: np.ndarray, budget: int) -> DraftTree:
        return self.datastore.lookup(history, min(budget, self.max_nodes))

    def observe(self, tree: DraftTree, logits: np.ndarray, verdict: Verdict) -> None:
        pass
