"""Token Recycling's matrix on disk per model: saved after a run, restored by the next, never fatal."""

from __future__ import annotations

import numpy as np

from localspec.cli import main
from localspec.drafters import make_drafter
from localspec.drafters.base import FusedDrafter, NoDrafter
from localspec.drafters.persist import learned_path, recycling_part, restore_learned, save_learned
from localspec.drafters.recycling import TokenRecyclingDrafter
from tests.conftest import build_model


def learnt(n_vocab: int, rng) -> TokenRecyclingDrafter:
    drafter = TokenRecyclingDrafter(n_vocab=n_vocab)
    drafter.adj[:] = rng.integers(0, n_vocab, drafter.adj.shape)
    drafter.logit[:] = rng.standard_normal(drafter.adj.shape)
    return drafter


def test_recycling_part_finds_the_matrix_inside_auto():
    auto = make_drafter("auto")
    assert recycling_part(auto) is auto.recycling
    assert recycling_part(make_drafter("recycling")) is not None
    assert recycling_part(NoDrafter()) is None
    assert recycling_part(FusedDrafter("x", [NoDrafter()])) is None


def test_save_then_restore_into_a_fresh_auto_drafter(tiny_model, rng):
    source = learnt(300, rng)
    assert save_learned(source, tiny_model)
    target = make_drafter("auto")
    assert restore_learned(target, tiny_model, n_vocab=300)
    np.testing.assert_array_equal(target.recycling.adj, source.adj)
    np.testing.assert_array_equal(target.recycling.logit, source.logit)


def test_nothing_learnt_writes_nothing(tiny_model):
    assert not save_learned(TokenRecyclingDrafter(), tiny_model)


def test_wrong_vocabulary_or_corrupt_file_is_ignored(loopy_model, rng):
    save_learned(learnt(300, rng), loopy_model)
    fresh = make_drafter("recycling")
    assert not restore_learned(fresh, loopy_model, n_vocab=301)
    assert fresh.adj is None
    learned_path(loopy_model, 8).write_bytes(b"not a matrix")
    assert not restore_learned(fresh, loopy_model, n_vocab=300)
    assert fresh.adj is None


def test_generate_learns_across_runs_and_no_learn_leaves_no_file(capsys, tmp_path):
    model = build_model(tmp_path / "m.gguf", seed=11, layer_scale=0.3)  # a model no other test saved
    args = ["generate", "-m", str(model), "-p", "for x in self:", "-n", "20", "--threads", "1"]
    assert main([*args, "--no-learn"]) == 0
    assert not learned_path(model, 8).exists()
    assert main(args) == 0
    first = np.load(learned_path(model, 8))["adj"]
    assert (first >= 0).any()
    assert main([*args, "-p", "import the print"]) == 0  # a second run starts from the first's matrix
    second = np.load(learned_path(model, 8))["adj"]
    known = first[:, 0] >= 0
    assert (second[known, 0] >= 0).all()
    capsys.readouterr()
