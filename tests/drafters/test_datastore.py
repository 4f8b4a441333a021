"""The REST-style datastore: suffix array, longest-suffix search and prefix counts vs brute force."""

from __future__ import annotations

import dataclasses
from collections import Counter

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from localspec.datastore import SEP, Datastore, DatastoreDrafter, DatastoreError, suffix_array
from localspec.engine import Engine
from localspec.generate import generate
from localspec.settings import GenerationSettings
from tests.helpers import not_an_index

files = st.lists(st.lists(st.integers(0, 2), max_size=40), max_size=4)
contexts = st.lists(st.integers(0, 2), max_size=20)


def brute_occurrences(docs: list[list[int]], query: list[int]) -> list[tuple[int, int]]:
    """(file, end index + 1) of every occurrence of `query` inside one file."""
    n = len(query)
    return [(f, i + n) for f, doc in enumerate(docs)
            for i in range(len(doc) - n + 1) if doc[i:i + n] == query]


def brute_counts(docs: list[list[int]], context: list[int]) -> tuple[int, Counter]:
    """Longest context suffix (16..2) found in a file, and how many continuations pass each prefix."""
    for length in range(min(16, len(context)), 1, -1):
        hits = brute_occurrences(docs, context[-length:])
        if hits:
            counts: Counter = Counter()
            for f, end in hits:
                continuation = docs[f][end:end + 10]
                for d in range(1, len(continuation) + 1):
                    counts[tuple(continuation[:d])] += 1
            return length, counts
    return 0, Counter()


def trie_counts(trie) -> dict[tuple[int, ...], int]:
    paths: dict[int, tuple[int, ...]] = {}
    for i, (token, parent) in enumerate(zip(trie.tokens.tolist(), trie.parents.tolist(), strict=True)):
        paths[i] = (paths[parent] if parent >= 0 else ()) + (token,)
    return {paths[i]: int(c) for i, c in enumerate(trie.counts.tolist())}


@settings(max_examples=200, deadline=None, derandomize=True)
@given(tokens=st.lists(st.sampled_from([SEP, 0, 1, 2]), max_size=60))
def test_suffix_array_sorts_every_suffix(tokens):
    expected = sorted(range(len(tokens)), key=lambda i: tokens[i:])
    assert suffix_array(np.array(tokens, np.int32)).tolist() == expected


def check_search_and_prefix_counts(docs: list[list[int]], context: list[int]) -> None:
    store = Datastore.build([np.array(d, np.int32) for d in docs])
    length, counts = brute_counts(docs, context)
    found, ranks = store.search(np.array(context, np.int32))
    assert found == length
    assert len(ranks) == (len(brute_occurrences(docs, context[-length:])) if length else 0)
    for start in store.suffixes[ranks].tolist():
        assert store.tokens[start:start + length].tolist() == context[-length:]
    trie = store.trie(np.array(context, np.int32))
    assert trie.match_length == length
    assert trie_counts(trie) == dict(counts)
    assert trie.depths.tolist() == [len(p) for p in trie_counts(trie)]


@settings(max_examples=300, deadline=None, derandomize=True)
@given(docs=files, context=contexts)
def test_search_and_prefix_counts_equal_brute_force(docs, context):
    check_search_and_prefix_counts(docs, context)


WIDE = [0, 1, 70_000, 151_000]  # keys hold 3 such tokens: longer queries are compared past the key


@settings(max_examples=300, deadline=None, derandomize=True)
@given(docs=st.lists(st.lists(st.sampled_from(WIDE), max_size=40), max_size=4),
       context=st.lists(st.sampled_from([*WIDE, 300_000]), max_size=20))  # 300,000: in no file
def test_search_with_a_large_vocabulary_equals_brute_force(docs, context):
    check_search_and_prefix_counts(docs, context)


@settings(max_examples=200, deadline=None, derandomize=True)
@given(docs=files, context=contexts, max_nodes=st.integers(0, 30))
def test_lookup_keeps_the_most_counted_prefixes_as_a_valid_tree(docs, context, max_nodes):
    store = Datastore.build([np.array(d, np.int32) for d in docs])
    _, counts = brute_counts(docs, context)
    tree = store.lookup(np.array(context, np.int32), max_nodes)  # DraftTree checks parents-first
    assert tree.source == "datastore"
    assert len(tree) == min(max_nodes, len(counts))
    kept: list[tuple[int, ...]] = []
    for i in range(len(tree)):
        parent = int(tree.parents[i])
        kept.append((kept[parent] if parent >= 0 else ()) + (int(tree.tokens[i]),))
    assert len(set(kept)) == len(kept)  # a trie: no node twice
    assert all(path in counts for path in kept)  # every kept prefix (and so its parent) is real
    dropped = [c for path, c in counts.items() if path not in set(kept)]
    if kept and dropped:
        assert min(counts[p] for p in kept) >= max(dropped)


def test_longest_suffix_wins_and_continuations_stop_at_file_ends():
    docs = [[5, 1, 2, 3, 4], [1, 2, 9, 9], [7, 1, 2]]
    store = Datastore.build([np.array(d) for d in docs])
    assert store.search(np.array([8, 1, 2]))[0] == 2
    assert trie_counts(store.trie(np.array([8, 1, 2]))) == {(3,): 1, (3, 4): 1, (9,): 1, (9, 9): 1}
    assert trie_counts(store.trie(np.array([5, 1, 2]))) == {(3,): 1, (3, 4): 1}
    assert len(store.lookup(np.array([4, 4]), 8)) == 0
    assert len(store.lookup(np.array([1]), 8)) == 0  # shorter than the shortest query
    assert len(Datastore.build([]).lookup(np.array([1, 2]), 8)) == 0


def test_many_matches_are_sampled_evenly_and_keep_their_shares():
    docs = [[1, 2, 3] * 3000 + [1, 2, 4] * 1000]
    store = dataclasses.replace(Datastore.build([np.array(d) for d in docs]), max_matches=400)
    counts = trie_counts(store.trie(np.array([1, 2])))
    assert counts[(3,)] + counts[(4,)] == 400
    assert abs(counts[(3,)] - 300) <= 2


def test_save_and_load_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    store = Datastore.build([rng.integers(0, 50, 300) for _ in range(3)], fingerprint="llama:abc123")
    path = tmp_path / "store.idx"
    store.save(path)
    loaded = Datastore.load(path, fingerprint="llama:abc123")
    assert loaded.fingerprint == "llama:abc123"
    assert np.array_equal(loaded.tokens, store.tokens) and np.array_equal(loaded.suffixes, store.suffixes)
    context = np.concatenate([rng.integers(0, 50, 5), store.tokens[100:103]])
    a, b = store.lookup(context, 16), loaded.lookup(context, 16)
    assert len(a) > 0 and a.tokens.tolist() == b.tokens.tolist() and a.parents.tolist() == b.parents.tolist()
    with pytest.raises(DatastoreError, match="built for"):
        Datastore.load(path, fingerprint="qwen:xyz")
    (tmp_path / "junk").write_bytes(b"not a datastore")
    with pytest.raises(DatastoreError):
        Datastore.load(tmp_path / "junk")
    with pytest.raises(DatastoreError):
        Datastore.load(tmp_path / "missing.npz")


@pytest.mark.parametrize("kind, reason", [
    ("empty", "(empty; "), ("random", "(build"), ("jsonl", "(build"), ("zip", "(build"), ("npy", "(build"),
    ("npz", "(build"), ("truncated", "(truncated or damaged; "), ("bad_suffixes", "(truncated or damaged; "),
])
def test_loading_a_file_that_is_not_an_index_says_so(tmp_path, kind, reason):
    path = tmp_path / f"{kind}.idx"
    not_an_index(path)
    with pytest.raises(DatastoreError) as caught:
        Datastore.load(path, fingerprint="llama:abc123")
    message = str(caught.value)
    assert message.startswith(f"{path} is not a localspec index {reason}"), message
    assert message.endswith("build one with `localspec index build`)") and "pickle" not in message


def test_an_index_of_another_format_version_keeps_its_message(tmp_path):
    path = tmp_path / "future.idx"
    with open(path, "wb") as f:
        np.savez(f, tokens=np.arange(3, dtype=np.int32), suffixes=np.array([0, 1, 2]),
                 fingerprint=np.array("x"), version=np.array(2))
    with pytest.raises(DatastoreError, match="unsupported format \\(version 2\\)"):
        Datastore.load(path)


def test_build_a_few_hundred_thousand_tokens_quickly():
    rng = np.random.default_rng(1)
    text = rng.integers(0, 30_000, 200_000)
    store = Datastore.build([text[:150_000], text[50_000:]])  # overlapping files: long repeats
    assert np.all(np.diff(store.tokens[store.suffixes]) >= 0)
    for rank in rng.integers(0, len(store.suffixes) - 1, 300).tolist():  # spot-check neighbours
        first, second = (store.tokens[s:] for s in store.suffixes[rank:rank + 2].tolist())
        m = min(len(first), len(second))
        differ = np.flatnonzero(first[:m] != second[:m])
        assert first[differ[0]] < second[differ[0]] if differ.size else len(first) < len(second)
    assert store.lookup(text[1000:1020], 64).tokens[0] == text[1020]


@settings(max_examples=10, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seed=st.integers(0, 2**32 - 1), prompt_len=st.integers(2, 30))
def test_greedy_output_with_the_datastore_equals_plain_decoding(tiny_backend, seed, prompt_len):
    rng = np.random.default_rng(seed)
    prompt = rng.integers(0, tiny_backend.n_vocab, prompt_len).tolist()
    plain = generate(Engine(tiny_backend), prompt, GenerationSettings(max_tokens=40, drafter="none"))
    noise = [rng.integers(0, tiny_backend.n_vocab, 200) for _ in range(2)]
    store = Datastore.build([np.array(prompt + plain.tokens)] + noise)  # the model's own output
    engine = Engine(tiny_backend, {"datastore": DatastoreDrafter(store)})
    spec = generate(engine, prompt, GenerationSettings(max_tokens=40, drafter="datastore"))
    assert spec.tokens == plain.tokens
    assert spec.stats.mean_accepted > 1.5


def test_datastore_drafter_on_a_loopy_model(loopy_backend):
    prompt = loopy_backend.tokenize("import the def")
    plain = generate(Engine(loopy_backend), prompt, GenerationSettings(max_tokens=80, drafter="none"))
    other = loopy_backend.tokenize("for x in self: print(x)\n" * 3)
    store = Datastore.build([np.array(other), np.array(prompt + plain.tokens)])
    engine = Engine(loopy_backend, {"datastore": DatastoreDrafter(store)})
    spec = generate(engine, prompt, GenerationSettings(max_tokens=80, drafter="datastore"))
    assert spec.tokens == plain.tokens
    assert spec.stats.mean_accepted > 1.5
