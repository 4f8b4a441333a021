"""`localspec index build` and `--index`: a datastore from files, checked against the tokenizer."""

from __future__ import annotations

import errno
import json
import os

import numpy as np
import pytest

from localspec import indexing
from localspec.cli import main
from localspec.datastore import Datastore, DatastoreError
from tests.helpers import not_an_index

CODE = "def print_self(self):\n    for x in self:\n        print(x)\n    return self\n"


def run(capsys, *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture()
def source_tree(tmp_path):
    root = tmp_path / "src"
    (root / "pkg").mkdir(parents=True)
    (root / "pkg" / "a.py").write_text(CODE * 3)
    (root / "pkg" / "b.txt").write_text("import the self\n")
    (root / "pkg" / "blob.bin").write_bytes(b"\0\1\2" * 100)
    (root / ".git").mkdir()
    (root / ".git" / "config").write_text("[core]\n")
    (root / "empty.md").write_text("  \n")
    return root


def test_build_indexes_text_files_and_skips_the_rest(capsys, tmp_path, source_tree, tiny_model):
    out_path = tmp_path / "idx" / "code.lsx"
    code, out, err = run(capsys, "index", "build", str(source_tree), "-m", str(tiny_model),
                         "--out", str(out_path))
    assert code == 0, err
    assert "2 files" in out and "1 binary" in out and "1 empty" in out
    store = Datastore.load(out_path)
    assert store.n_files == 2
    assert store.fingerprint.startswith("vocab")


def test_generate_with_index_is_lossless_and_drafts_from_it(capsys, tmp_path, source_tree, loopy_model):
    index_path = tmp_path / "code.lsx"
    assert run(capsys, "index", "build", str(source_tree), "-m", str(loopy_model),
               "--out", str(index_path))[0] == 0
    base = ["generate", "-m", str(loopy_model), "-p", CODE[:30], "-n", "60", "--threads", "1",
            "--stats", "--no-learn", "--fixed-draft"]
    code, plain, _ = run(capsys, *base, "--drafter", "none")
    assert code == 0
    for drafter in ("auto", "retrieval"):
        code, out, err = run(capsys, *base, "--drafter", drafter, "--index", str(index_path))
        assert code == 0, err
        assert out == plain
        assert json.loads(err.strip().splitlines()[-1])["draft_tokens"] > 0


def test_index_for_another_tokenizer_is_refused(capsys, tmp_path, source_tree, tiny_model):
    index_path = tmp_path / "code.lsx"
    Datastore.build([np.arange(20)], fingerprint="vocab9:deadbeef").save(index_path)
    code, _, err = run(capsys, "generate", "-m", str(tiny_model), "-p", "x", "--threads", "1",
                       "--index", str(index_path))
    assert code == 1
    last = err.strip().splitlines()[-1]
    assert last.startswith("localspec: error:") and "another tokenizer" in last and "Traceback" not in err


@pytest.mark.parametrize("args, message", [
    (["index", "build", "/nonexistent/dir", "--out", "{tmp}/x.lsx"], "does not exist"),
    (["index", "build", "{tmp}/emptydir", "--out", "{tmp}/x.lsx"], "no text files"),
    (["index", "build", "{tmp}/emptydir"], "--out"),
    (["generate", "-p", "x", "--index", "{tmp}/missing.lsx"], "does not exist"),
    (["generate", "-p", "x", "--index", "{tmp}/notanindex.lsx"], "notanindex.lsx is not a localspec index"),
    (["generate", "-p", "x", "--drafter", "lookup", "--index", "{tmp}/x.lsx"], "auto and retrieval"),
])
def test_bad_index_input_is_one_line(capsys, tmp_path, tiny_model, args, message):
    (tmp_path / "emptydir").mkdir()
    (tmp_path / "notanindex.lsx").write_text("hello")
    args = [a.format(tmp=tmp_path) for a in args]
    if args[0] == "generate":
        args += ["-m", str(tiny_model), "--threads", "1"]
    else:
        args += ["-m", str(tiny_model)]
    code, _, err = run(capsys, *args)
    assert code != 0
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("localspec: error:"), err
    assert message in lines[0]


def one_error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("localspec: error:"), err
    return lines[0]


@pytest.mark.parametrize("kind, reason", [("empty", "empty; "), ("random", ""), ("jsonl", ""), ("zip", "")])
def test_generate_with_a_file_that_is_not_an_index_is_one_line(capsys, tmp_path, tiny_model, kind, reason):
    path = tmp_path / f"{kind}.idx"
    not_an_index(path)
    code, out, err = run(capsys, "generate", "-m", str(tiny_model), "-n", "8", "-p", "hi", "--threads", "1",
                         "--index", str(path))
    assert code == 1 and out == ""
    assert one_error_line(err) == (f"localspec: error: {path} is not a localspec index "
                                   f"({reason}build one with `localspec index build`)")


def test_bench_with_an_empty_index_is_one_line(capsys, tmp_path, tiny_model):
    (tmp_path / "empty.idx").touch()
    (tmp_path / "p.jsonl").write_text('{"prompt": "hi"}\n')
    code, _, err = run(capsys, "bench", "-m", str(tiny_model), "--prompts", str(tmp_path / "p.jsonl"),
                       "-n", "8", "--methods", "retrieval", "--index", str(tmp_path / "empty.idx"),
                       "--json", str(tmp_path / "x.json"))
    assert code == 1
    assert "empty.idx is not a localspec index (empty; " in one_error_line(err)
    assert not (tmp_path / "x.json").exists()


@pytest.fixture()
def no_tokenising(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("--out must be checked before tokenising")
    monkeypatch.setattr(indexing, "build_index", refuse)


@pytest.mark.parametrize("out", ["notes.txt/x.lsx", "notes.txt/deeper/x.lsx"])
def test_build_out_under_a_file_is_a_usage_error(capsys, tmp_path, source_tree, tiny_model, no_tokenising,
                                                 out):
    (tmp_path / "notes.txt").write_text("keep me\n")
    code, _, err = run(capsys, "index", "build", str(source_tree), "-m", str(tiny_model),
                       "--out", str(tmp_path / out))
    assert code == 2
    assert one_error_line(err) == ("localspec: error: Invalid value for '--out': "
                                   f"{tmp_path / 'notes.txt'} is a file, not a folder")
    assert (tmp_path / "notes.txt").read_text() == "keep me\n"


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="needs Linux's /proc")
def test_build_out_where_no_file_can_be_created_is_a_usage_error(capsys, source_tree, tiny_model,
                                                                 no_tokenising):
    code, _, err = run(capsys, "index", "build", str(source_tree), "-m", str(tiny_model),
                       "--out", "/proc/x.lsx")
    assert code == 2
    assert one_error_line(err).startswith(
        "localspec: error: Invalid value for '--out': cannot create files in /proc: ")
    assert not os.path.exists("/proc/x.lsx.partial")


def test_a_failed_write_keeps_the_old_index_and_leaves_no_partial(capsys, tmp_path, source_tree, tiny_model,
                                                                   monkeypatch):
    out_path = tmp_path / "code.lsx"
    out_path.write_bytes(b"the old index")

    def disk_full(self, path):
        with open(path, "wb") as f:
            f.write(b"half an index")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Datastore, "save", disk_full)
    code, out, err = run(capsys, "index", "build", str(source_tree), "-m", str(tiny_model),
                         "--out", str(out_path))
    assert code == 1 and out == ""
    assert one_error_line(err) == f"localspec: error: cannot write index {out_path}: No space left on device"
    assert out_path.read_bytes() == b"the old index"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["code.lsx", "src"]


def test_write_index_under_a_file_raises_a_datastore_error(tmp_path):
    (tmp_path / "notes.txt").write_text("keep me\n")
    with pytest.raises(DatastoreError, match="cannot write index"):
        indexing.write_index(Datastore.build([np.arange(5)]), tmp_path / "notes.txt" / "x.lsx")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]
