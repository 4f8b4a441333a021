"""The recipe end to end on a tiny corpus: data, tokenizer, a few steps, export, samples."""

from __future__ import annotations

import json

import pytest

from localspec.backends.llamacpp import LlamaCppBackend
from localspec.demo.corpus import SourceFile, chat_examples, collect_stdlib, functions_in, manifest
from localspec.gguf_export import LlamaConfig
from localspec.settings import BackendSettings

pytest.importorskip("torch")
pytest.importorskip("tokenizers")
from localspec.demo.recipe import SAMPLE_PROMPTS, RecipeConfig, TrainConfig, run  # noqa: E402


@pytest.fixture(scope="module")
def small_corpus() -> list[SourceFile]:
    """A few modest stdlib files with documented functions, at least one on each side."""
    usable = [f for f in collect_stdlib() if 2_000 < len(f.text) < 12_000
              and sum(1 for _ in functions_in(f)) >= 3]
    train = [f for f in usable if not f.is_validation][:3]
    val = [f for f in usable if f.is_validation][:1]
    assert len(train) == 3 and len(val) == 1
    return train + val


def test_manifest_and_split_are_by_file(small_corpus):
    files = small_corpus
    data = manifest(files)
    assert data["n_files"] == 4 and data["n_val"] == 1
    assert {e["path"] for e in data["files"]} == {f.relpath for f in files}
    assert all(len(e["sha256"]) == 64 for e in data["files"])
    assert data["corpus_sha256"] != manifest(files[:3])["corpus_sha256"]


def test_chat_examples_cover_three_tasks(small_corpus):
    functions = [fn for f in small_corpus for fn in functions_in(f)]
    examples = chat_examples(functions)
    asks = [ex[0]["content"] for ex in examples]
    assert any(a.lower().startswith("write a") for a in asks)
    assert any(a.startswith("What does `") for a in asks)
    renames = [ex for ex in examples if ex[0]["content"].startswith("Rewrite this function")]
    assert renames
    for ex in renames:
        new_name = ex[0]["content"].split("`")[1]
        assert f"def {new_name}(" in ex[1]["content"]


def test_recipe_runs_end_to_end_and_resumes(tmp_path, small_corpus):
    config = RecipeConfig(
        model=LlamaConfig(vocab_size=600, n_embd=32, n_layer=1, n_head=2, n_head_kv=1, n_ff=64,
                          n_ctx=64),
        train=TrainConfig(steps=6, batch=2, seq_len=32, warmup=2, eval_every=3, eval_batches=1,
                          checkpoint_every=3, threads=1),
        weight_type="f32", name="smoke", sample_tokens=8)
    out = tmp_path / "smoke.gguf"
    files = small_corpus
    summary = run(config, tmp_path / "work", out, files=files, log=lambda _: None)

    log = [json.loads(line) for line in (tmp_path / "work" / "train_log.jsonl").open()]
    assert [r["step"] for r in log] == list(range(1, 7))
    assert "val_code" in log[2] and "val_chat" in log[5]
    assert summary["steps"] == 6 and summary["val_code_loss"] > 0
    assert len(summary["samples"]) == len(SAMPLE_PROMPTS)

    with LlamaCppBackend(out, BackendSettings(n_ctx=64, n_threads=1)) as backend:
        assert backend.n_vocab == summary["config"]["model"]["vocab_size"]
        assert backend.chat_template and "<|im_start|>" in backend.chat_template
        im_end = backend.tokenize("<|im_end|>", add_special=False, parse_special=True)
        assert len(im_end) == 1 and backend.is_eog(im_end[0])

    again = run(config, tmp_path / "work", out, files=files, log=lambda _: None)
    assert len((tmp_path / "work" / "train_log.jsonl").read_text().splitlines()) == 6
    assert again["val_code_loss"] == summary["val_code_loss"]  # resumed, not retrained
