"""`localspec index build` and `--index`: a datastore from files, checked against the tokenizer."""

from __future__ import annotations

import json

import numpy as np
import pytest

from localspec.cli import main
from localspec.datastore import Datastore

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
    (["generate", "-p", "x", "--index", "{tmp}/notanindex.lsx"], "cannot read datastore"),
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
