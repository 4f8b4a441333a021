"""Token Recycling: top-k rows learnt from every verified row, drafted by a static rank template."""

from __future__ import annotations

import numpy as np
import pytest

from localspec.drafters.recycling import (
    PAPER_LEVEL_COUNTS,
    ContextRows,
    TokenRecyclingDrafter,
    extend_numbers,
    rank_template,
    suffix_numbers,
    top_k,
)
from localspec.engine import Engine
from localspec.generate import generate
from localspec.sampling import Distribution, GumbelNoise
from localspec.settings import GenerationSettings
from localspec.tree import DraftTree
from localspec.verify import Verdict

V = 50  # vocabulary of the hand-made tests
K = 8


def top_k_of(row: np.ndarray, k: int) -> list[int]:
    return sorted(range(len(row)), key=lambda t: -row[t])[:k]  # slow and obvious on purpose


def filled_drafter(rng: np.random.Generator, unknown: tuple[int, ...] = ()) -> TokenRecyclingDrafter:
    drafter = TokenRecyclingDrafter(V)
    assert drafter.adj is not None
    drafter.adj[:] = np.stack([rng.permutation(V)[:K] for _ in range(V)])
    drafter.adj[list(unknown)] = -1
    return drafter


def walk(drafter: TokenRecyclingDrafter, root: int, n: int) -> tuple[list[int], list[int]]:
    """The expected tree of the first n template paths: tokens and parents, unknowns dropped."""
    assert drafter.adj is not None
    successors = {t: drafter.adj[t].tolist() for t in range(V)}
    tokens: list[int] = []
    parents: list[int] = []
    node_of: dict[tuple[int, ...], int] = {}
    for path in drafter.template.paths[:n]:
        token = root
        for rank in path:
            token = successors[token][rank] if token >= 0 else -1
        parent = node_of.get(path[:-1], -1)
        if token < 0 or (len(path) > 1 and path[:-1] not in node_of):
            continue
        node_of[path] = len(tokens)
        tokens.append(token)
        parents.append(parent)
    return tokens, parents


def test_observe_overwrites_each_rows_token_with_its_top_k_in_descending_order(rng):
    drafter = TokenRecyclingDrafter(V)
    assert drafter.adj is not None
    drafter.adj[7] = np.arange(40, 48)  # known before: must be replaced, not merged
    drafter.begin(np.array([1, 2, 3]))  # root = 3
    tree = DraftTree(np.array([7, 9, 11], np.int32), np.array([-1, 0, -1], np.int32))
    logits = rng.standard_normal((4, V)).astype(np.float32)
    before = drafter.adj.copy()
    drafter.observe(tree, logits, Verdict([0], [7, 12]))
    for row, token in enumerate([3, 7, 9, 11]):
        assert drafter.adj[token].tolist() == top_k_of(logits[row], K)
        np.testing.assert_array_equal(drafter.logit[token], np.sort(logits[row])[::-1][:K].astype(np.float16))
    untouched = np.setdiff1d(np.arange(V), [3, 7, 9, 11])
    assert np.array_equal(drafter.adj[untouched], before[untouched])
    # the next root is the bonus token, even when no proposal comes in between
    again = rng.standard_normal((1, V)).astype(np.float32)
    drafter.observe(DraftTree.empty(), again, Verdict([], [5]))
    assert drafter.adj[12].tolist() == top_k_of(again[0], K)
    assert drafter.adj[7].tolist() == top_k_of(logits[1], K)


def test_a_token_seen_twice_in_a_batch_keeps_its_last_row(rng):
    drafter = TokenRecyclingDrafter(V)
    drafter.begin(np.array([4]))
    tree = DraftTree(np.array([4, 4], np.int32), np.array([-1, 0], np.int32))
    logits = rng.standard_normal((3, V)).astype(np.float32)
    drafter.observe(tree, logits, Verdict([], [1]))
    assert drafter.adj is not None
    assert drafter.adj[4].tolist() == top_k_of(logits[2], K)


def test_observe_chunks_many_rows(rng):
    drafter = TokenRecyclingDrafter(V)
    drafter.begin(np.array([0]))
    tokens = rng.permutation(np.arange(1, V))[:45].astype(np.int32)
    tree = DraftTree.chain(tokens.tolist())
    logits = rng.standard_normal((46, V)).astype(np.float32)
    drafter.observe(tree, logits, Verdict([], [1]))
    assert drafter.adj is not None
    for row, token in enumerate([0, *tokens.tolist()]):
        assert drafter.adj[token].tolist() == top_k_of(logits[row], K)


def test_matrix_is_allocated_from_the_first_logits_when_n_vocab_is_left_out(rng):
    drafter = TokenRecyclingDrafter()
    assert drafter.adj is None
    assert len(drafter.propose(np.array([3]), 8)) == 0
    logits = rng.standard_normal((1, V)).astype(np.float32)
    drafter.observe(DraftTree.empty(), logits, Verdict([], [2]))
    assert drafter.adj is not None and drafter.adj.shape == (V, K)
    assert drafter.adj[3].tolist() == top_k_of(logits[0], K)


@pytest.mark.parametrize("budget", [1, 2, 5, 8, 13, 40, 79, 80, 200])
def test_propose_follows_the_rank_paths_of_the_template(rng, budget):
    drafter = filled_drafter(rng)
    root = 17
    tree = drafter.propose(np.array([2, 9, root]), budget)
    tokens, parents = walk(drafter, root, budget)
    assert len(tree) == min(budget, 80)
    assert tree.tokens.tolist() == tokens
    assert tree.parents.tolist() == parents
    assert tree.source == "recycling"
    for m in range(len(tree) + 1):  # the engine may cut the tree anywhere
        cut = tree.truncated(m)
        assert cut.tokens.tolist() == tokens[:m] and cut.parents.tolist() == parents[:m]


def test_nodes_under_unknown_tokens_are_dropped(rng):
    drafter = filled_drafter(rng)
    assert drafter.adj is not None
    root = 17
    hidden = (int(drafter.adj[root, 0]), int(drafter.adj[root, 2]))
    drafter.adj[hidden, 1:] = -1  # partly known rows: only rank 0 survives
    tree = drafter.propose(np.array([root]), 80)
    tokens, parents = walk(drafter, root, 80)
    assert 0 < len(tree) < 80
    assert tree.tokens.tolist() == tokens
    assert tree.parents.tolist() == parents
    assert (tree.tokens >= 0).all()
    drafter.adj[root] = -1
    assert len(drafter.propose(np.array([root]), 80)) == 0


def test_cold_drafter_proposes_nothing_and_begin_seeds_unknown_rows_from_the_prompt():
    drafter = TokenRecyclingDrafter(V)
    assert len(drafter.propose(np.array([1, 2, 3]), 80)) == 0
    assert drafter.adj is not None
    drafter.adj[5] = np.arange(10, 18)
    drafter.begin(np.array([1, 2, 3, 5, 6, 1, 4]))
    assert drafter.adj[1, 0] in (2, 4) and drafter.adj[1, 1] == -1
    assert drafter.adj[2, 0] == 3 and drafter.adj[3, 0] == 5
    assert drafter.adj[5].tolist() == list(range(10, 18))  # known rows are kept
    tree = drafter.propose(np.array([1, 2]), 80)
    assert tree.tokens.tolist() == [3, 5, 10, 11, 12, 13, 14, 15]  # (0, 0, r) for r < 6


@pytest.mark.parametrize("n", [5, 50, 1024, 1025, 8192, 8200])
@pytest.mark.parametrize("k", [1, 8])
def test_top_k_matches_a_full_sort(rng, n, k):
    rows = rng.standard_normal((6, n)).astype(np.float32)
    if n >= 1024:
        rows[0, 200:200 + k] += 10.0  # all k largest in one block
        rows[1, ::n // k][:k] += 10.0  # each in a block of its own
        rows[2, -k:] += 10.0  # in the last block, which may be partial
    ids, values = top_k(rows, min(k, n))
    for row, got, got_values in zip(rows, ids, values, strict=True):
        assert got.tolist() == top_k_of(row, min(k, n))
        np.testing.assert_array_equal(got_values, row[got])


def test_suffix_numbers_read_the_last_tokens_in_base_n_vocab():
    contexts = np.array([[4, 7, 9], [-1, 7, 9], [4, -1, 9], [1, 2, -1]])
    numbers = suffix_numbers(contexts, V)
    assert numbers.tolist() == [[9, 7 * V + 9, (4 * V + 7) * V + 9],
                                [9, 7 * V + 9, -1], [9, -1, -1], [-1, -1, -1]]
    longer = extend_numbers(numbers, np.array([3, 3, 3, 3]), V)
    appended = np.array([[7, 9, 3], [7, 9, 3], [-1, 9, 3], [2, -1, 3]])
    assert longer.tolist() == suffix_numbers(appended, V).tolist()


def test_context_rows_find_the_longest_context_they_hold():
    table = ContextRows((2, 3), n_vocab=V, k=K, slots=64)
    rows = np.arange(5 * K, dtype=np.int32).reshape(5, K)

    def store(contexts, which):
        table.store(suffix_numbers(np.array(contexts), V), rows[which], rows[which].astype(np.float16))

    def found(contexts):
        slots = table.find(suffix_numbers(np.array(contexts), V))
        return [table.adj[s].tolist() if s >= 0 else None for s in slots]

    store([[9, 3, 4]], [0])  # rows for (3, 4) and (9, 3, 4)
    store([[1, 3, 4]], [1])  # (3, 4) again, and (1, 3, 4)
    store([[-1, 7, 8]], [2])  # (7, 8) only: the older token is unknown
    assert found([[9, 3, 4], [1, 3, 4], [5, 3, 4], [5, 7, 8], [3, 4, 5], [4, 3, 5], [-1, -1, 4]]) == [
        rows[0].tolist(), rows[1].tolist(), rows[1].tolist(), rows[2].tolist(), None, None, None]

    tiny = ContextRows((2,), n_vocab=V, k=K, slots=1)  # every context hashes to one slot
    tiny.store(suffix_numbers(np.array([[3, 4]]), V), rows[:1], rows[:1].astype(np.float16))
    tiny.store(suffix_numbers(np.array([[7, 8]]), V), rows[1:2], rows[1:2].astype(np.float16))
    assert tiny.find(suffix_numbers(np.array([[3, 4], [7, 8]]), V)).tolist() == [-1, 0]  # evicted
    with pytest.raises(ValueError):
        ContextRows((2,), n_vocab=V, k=K, slots=48)
    with pytest.raises(ValueError):
        ContextRows((1, 2), n_vocab=V, k=K)


def test_nodes_draft_from_the_longest_context_that_has_a_row(rng):
    drafter = filled_drafter(rng)
    after_2_5 = np.arange(20, 28, dtype=np.int32)
    after_9_2_5 = np.arange(30, 38, dtype=np.int32)
    after_5_20 = np.arange(40, 48, dtype=np.int32)
    assert drafter.contexts is not None and drafter.contexts.orders == (2, 3)
    # (9, 2, 5) also stores (2, 5), which the next row then takes over
    for context, row in (([9, 2, 5], after_9_2_5), ([-1, 2, 5], after_2_5), ([-1, 5, 20], after_5_20)):
        numbers = suffix_numbers(np.array([context]), V)
        drafter.contexts.store(numbers, row[None], row[None].astype(np.float16))

    first_level = drafter.template.levels[0]
    tree = drafter.propose(np.array([1, 9, 2, 5]), 80)
    assert tree.tokens[first_level].tolist() == after_9_2_5.tolist()  # the 3-token context wins
    tree = drafter.propose(np.array([1, 4, 2, 5]), 80)
    assert tree.tokens[first_level].tolist() == after_2_5.tolist()  # backs off to 2 tokens
    node = int(first_level[0])  # the root's first guess after (2, 5): token 20
    children = np.flatnonzero(tree.parents == node)
    assert tree.tokens[children].tolist() == after_5_20[:len(children)].tolist()  # after (5, 20)
    tree = drafter.propose(np.array([1, 4, 3, 5]), 80)
    assert tree.tokens[first_level].tolist() == drafter.adj[5].tolist()  # the token's own row
    plain = TokenRecyclingDrafter(V, context_orders=())
    plain.adopt(drafter)
    assert plain.contexts is None
    assert plain.propose(np.array([1, 9, 2, 5]), 80).tokens[first_level].tolist() == drafter.adj[5].tolist()
    same = TokenRecyclingDrafter(V)
    same.adopt(drafter)
    assert same.propose(np.array([1, 9, 2, 5]), 80).tokens[first_level].tolist() == after_9_2_5.tolist()


def test_observe_learns_each_rows_context(rng):
    drafter = TokenRecyclingDrafter(V)
    drafter.begin(np.array([6, 1, 2, 3]))  # root = 3 after (1, 2)
    tree = DraftTree(np.array([7, 9, 11], np.int32), np.array([-1, 0, -1], np.int32))
    logits = rng.standard_normal((4, V)).astype(np.float32)
    drafter.observe(tree, logits, Verdict([0, 1], [7, 9, 12]))
    table = drafter.contexts
    assert table is not None

    def row_of(context):
        slot = table.find(suffix_numbers(np.array([context]), V))[0]
        return table.adj[slot].tolist() if slot >= 0 else None

    for context, row in {(1, 2, 3): 0, (2, 3, 7): 1, (3, 7, 9): 2, (2, 3, 11): 3}.items():  # each row's path
        assert row_of(context) == row_of((-1, *context[1:])) == top_k_of(logits[row], K)
    assert row_of((1, 3, 7)) == row_of((2, 3, 7))  # only (3, 7) is known there
    assert row_of((-1, 1, 3)) is None
    # the tail moves on with the verdict: the next root, 12, follows (7, 9)
    again = rng.standard_normal((1, V)).astype(np.float32)
    drafter.observe(DraftTree.empty(), again, Verdict([], [5]))
    assert row_of((7, 9, 12)) == top_k_of(again[0], K)


def test_paper_template_has_80_nodes_in_six_levels_parents_first():
    paths = rank_template()
    assert len(paths) == 80 and len(set(paths)) == 80
    depths = np.bincount([len(p) for p in paths])[1:]
    assert tuple(depths.tolist()) == PAPER_LEVEL_COUNTS == (8, 21, 25, 15, 8, 3)
    assert all(0 <= r < 8 for p in paths for r in p)
    seen: set[tuple[int, ...]] = set()
    for path in paths:
        assert len(path) == 1 or path[:-1] in seen
        seen.add(path)
    assert paths[:3] == [(0,), (0, 0), (0, 0, 0)]  # the best guesses come first
    drafter = TokenRecyclingDrafter(V)
    assert drafter.template_size == 80
    leaves = DraftTree(np.zeros(80, np.int32), drafter.template.parents).leaves()
    assert len(leaves) <= 64  # fits the default max_tree_paths


def test_smaller_k_keeps_the_closed_part_of_the_template():
    drafter = TokenRecyclingDrafter(V, k=2)
    assert all(max(p) < 2 for p in drafter.template.paths)
    assert 0 < drafter.template_size < 80
    with pytest.raises(ValueError):
        TokenRecyclingDrafter(V, k=2, template=[(0,), (0, 3)])
    with pytest.raises(ValueError):
        TokenRecyclingDrafter(V, template=[(0, 0), (0,)])


def test_matrix_persists_across_requests_and_fits_in_2_mb(rng, tmp_path):
    drafter = filled_drafter(rng)
    assert drafter.adj is not None
    learnt = drafter.adj.copy()
    drafter.begin(np.array([3, 4]))
    drafter.begin(np.array([9]))
    assert np.array_equal(drafter.adj, learnt)

    path = tmp_path / "recycling.npz"
    drafter.save(path)
    other = TokenRecyclingDrafter(V)
    other.load(path)
    assert other.adj is not None and np.array_equal(other.adj, learnt)
    np.testing.assert_array_equal(other.logit, drafter.logit)
    with pytest.raises(ValueError):
        TokenRecyclingDrafter(V + 1).load(path)

    big = TokenRecyclingDrafter(32000)
    assert big.adj is not None and big.adj.dtype == np.int32
    assert big.nbytes <= 2 * 1024 * 1024
    assert big.context_nbytes <= 4 * 1024 * 1024  # the context rows do not grow with the vocabulary
    assert TokenRecyclingDrafter(32000, context_orders=()).context_nbytes == 0


def test_a_matrix_saved_without_logits_loads_with_the_models_ranking_kept(rng, tmp_path):
    drafter = filled_drafter(rng)
    path = tmp_path / "v1.npz"
    np.savez(path, adj=drafter.adj, version=np.int32(1))
    other = TokenRecyclingDrafter(V)
    other.load(path)
    np.testing.assert_array_equal(other.adj, drafter.adj)
    assert (np.diff(other.logit.astype(np.float64), axis=1) < 0).all()


def noise_walk(drafter: TokenRecyclingDrafter, root: int, n: int, noise: GumbelNoise,
               first_position: int) -> list[int]:
    """The tokens of the first n template paths, each rank read from the successors ordered by
    kept logit / T + the noise at the node's position (slow and obvious)."""
    tokens = []
    for path in drafter.template.paths[:n]:
        token = root
        for depth, rank in enumerate(path):
            ids = drafter.adj[token]
            scores = [float(drafter.logit[token, j]) / noise.temperature
                      + float(noise.gumbel(first_position + depth, np.array([ids[j]]))[0]) for j in range(K)]
            token = int(ids[sorted(range(K), key=lambda j: -scores[j])[rank]])
        tokens.append(token)
    return tokens


def test_when_sampling_each_nodes_successors_are_ordered_by_kept_logit_plus_noise(rng):
    drafter = filled_drafter(rng)
    drafter.logit[:] = rng.standard_normal((V, K)).astype(np.float16)
    history = np.array([4, 9, 2, 5])
    noise = GumbelNoise(3, 0.7)
    drafter.begin(history, noise)
    tree = drafter.propose(history, 40)
    assert tree.tokens.tolist() == noise_walk(drafter, 5, 40, noise, first_position=len(history))
    drafter.begin(history)  # greedy again: the model's ranking
    greedy = drafter.propose(history, 40)
    assert greedy.tokens.tolist() == walk(drafter, 5, 40)[0] != tree.tokens.tolist()


def test_with_the_models_own_logits_the_first_guess_is_the_sampled_token_whenever_it_is_kept(rng):
    """A bigram 'model': the next token's logits depend only on the last token. With its rows
    learnt exactly, the noise-aware first guess is right exactly when the sampled token is among
    the k kept successors; the likeliest successor is right far less often."""
    model = 1.5 * rng.standard_normal((V, V))
    drafter = TokenRecyclingDrafter(V)
    drafter.learn(np.arange(V), model)
    noise = GumbelNoise(11, 1.0)
    drafter.begin(np.array([0]), noise)
    lasts = rng.integers(0, V, 3000)
    positions = np.arange(3000)
    probs = np.exp(model) / np.exp(model).sum(axis=1, keepdims=True)
    pairs = list(zip(lasts, positions, strict=True))
    sampled = np.array([noise.sample(Distribution(np.arange(V), probs[t]), p) for t, p in pairs])
    guessed = np.array([drafter.ranked(np.array([t]), p)[0, 0] for t, p in pairs])
    kept = np.array([s in drafter.adj[t] for s, t in zip(sampled, lasts, strict=True)])
    assert np.array_equal(guessed == sampled, kept)
    assert (guessed == sampled).mean() > (drafter.adj[lasts, 0] == sampled).mean() + 0.15


PROMPTS = ["def f(self):\n    return", "for x in self: print(x)\n", "import the"]


@pytest.mark.parametrize("max_draft_tokens", [8, 80])
def test_greedy_output_equals_plain_decoding(tiny_backend, max_draft_tokens):
    drafter = TokenRecyclingDrafter(tiny_backend.n_vocab)
    engine = Engine(tiny_backend, {"recycling": drafter})
    for text in PROMPTS:
        prompt = tiny_backend.tokenize(text)
        plain = generate(engine, prompt, GenerationSettings(max_tokens=40, drafter="none"))
        spec = generate(engine, prompt, GenerationSettings(max_tokens=40, drafter="recycling",
                                                           max_draft_tokens=max_draft_tokens))
        assert spec.tokens == plain.tokens


def test_loopy_model_accepts_more_than_one_token_per_step_after_warm_up(loopy_backend):
    drafter = TokenRecyclingDrafter()  # n_vocab taken from the first logits
    engine = Engine(loopy_backend, {"recycling": drafter})
    settings = GenerationSettings(max_tokens=100, drafter="recycling", max_draft_tokens=80)
    warm = generate(engine, loopy_backend.tokenize("print the"), settings)
    prompt = loopy_backend.tokenize("for x in self: print(x)\n")
    result = generate(engine, prompt, settings)
    plain = generate(engine, prompt, GenerationSettings(max_tokens=100, drafter="none"))
    assert warm.stats.steps > 0
    assert result.tokens == plain.tokens
    assert result.stats.accepted_tokens > 0
    assert result.stats.mean_accepted > 1.5
