"""`localspec bench`: prompt files, the report's arithmetic, and a small end-to-end run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from localspec.bench import load_prompts, summarize
from localspec.cli import main
from localspec.errors import InvalidSettingsError


def test_prompt_file_accepts_raw_and_chat_lines(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text('{"id": 1, "category": "code", "prompt": "def f():"}\n\n'
                    '{"id": "2", "category": "chat", "messages": [{"role": "user", "content": "hi"}]}\n')
    prompts = load_prompts(path)
    assert [p.id for p in prompts] == ["1", "2"]
    assert prompts[0].prompt == "def f():" and prompts[1].messages[0].content == "hi"


MESSAGES_SHAPE = '"messages" must be a non-empty list of {"role", "content"} objects'


@pytest.mark.parametrize(("line", "message"), [
    ('{"id": 1}', 'exactly one of "prompt" or "messages"'),
    ('not json', "not valid JSON"),
    ('{"category": "x", "prompt": "a"}', '"id" is missing'),
    ('{"id": 1, "prompt": "a", "messages": [{"role": "user", "content": "b"}]}', "exactly one of"),
    ('{"id": 1, "messages": [{"role": "alien", "content": "b"}]}', "unknown chat role"),
    ('[1, 2]', "must be a JSON object"),
    ('"just a string"', "must be a JSON object"),
    ('{"id": null, "prompt": "a"}', '"id" must be a string or a number'),
    ('{"id": "a", "prompt": 123}', '"prompt" must be a string'),
    ('{"id": "a", "category": 5, "prompt": "x"}', '"category" must be a string'),
    ('{"id": "a", "messages": [{"role": "user", "content": 5}]}', MESSAGES_SHAPE),
    ('{"id": "a", "messages": [{"role": "user"}]}', MESSAGES_SHAPE),
    ('{"id": "a", "messages": "hi"}', MESSAGES_SHAPE),
    ('{"id": "a", "messages": ["hi"]}', MESSAGES_SHAPE),
    ('{"id": "a", "messages": []}', MESSAGES_SHAPE),
])
def test_bad_prompt_lines_name_the_line(tmp_path, line, message):
    path = tmp_path / "p.jsonl"
    path.write_text('{"id": 0, "prompt": "ok"}\n' + line + "\n")
    with pytest.raises(InvalidSettingsError) as caught:
        load_prompts(path)
    assert str(caught.value).startswith(f"{path}:2: ") and message in str(caught.value)


def test_prompt_file_that_is_not_utf8_is_named(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_bytes(b'{"id": 0, "prompt": "caf\xe9"}\n')
    with pytest.raises(InvalidSettingsError, match="p.jsonl: not UTF-8"):
        load_prompts(path)


def test_duplicate_prompt_ids_name_both_lines(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text('{"id": 7, "prompt": "a"}\n{"id": "b", "prompt": "b"}\n{"id": "7", "prompt": "c"}\n')
    with pytest.raises(InvalidSettingsError, match=r"p.jsonl:3: id '7' is already used on line 1"):
        load_prompts(path)


def test_summary_is_total_tokens_over_total_seconds_against_none():
    def entry(tokens, seconds, sha="x", acc=1.0):
        return {"tokens": tokens, "seconds": seconds, "mean_accepted": acc, "output_sha256": sha}

    rows = [
        {"id": "a", "category": "c1",
         "results": {"none": entry(100, 10.0), "fast": entry(100, 2.0, acc=3.0)}},
        {"id": "b", "category": "c2",
         "results": {"none": entry(100, 10.0), "fast": entry(100, 8.0, "y")}},
    ]
    summary, by_category = summarize(rows, ["none", "fast"])
    assert summary["fast"]["speedup_vs_none"] == pytest.approx(2.0)  # 200/10 vs 200/20
    assert summary["fast"]["identical_to_none"] == 0.5
    assert summary["fast"]["mean_accepted"] == 2.0
    assert by_category["c1"]["fast"]["speedup_vs_none"] == pytest.approx(5.0)
    assert by_category["c2"]["fast"]["speedup_vs_none"] == pytest.approx(1.25)


def test_bench_end_to_end_writes_json_markdown_and_chart(loopy_model, tmp_path, capsys):
    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"id": "a", "category": "loop", "prompt": "for x in self: print(x)\\n"}\n'
                       '{"id": "b", "category": "chat", "messages": [{"role": "user", "content": "hi"}]}\n')
    out = tmp_path / "r" / "bench.json"
    code = main(["bench", "-m", str(loopy_model), "--prompts", str(prompts), "--methods",
                 "lookup,peer-pld,peer-ar", "-n", "40", "--threads", "1", "--json", str(out)])
    assert code == 0
    report = json.loads(out.read_text())
    assert set(report["summary"]) == {"none", "lookup", "peer-pld", "peer-ar"}
    for method in ("lookup", "peer-pld", "peer-ar"):
        assert report["summary"][method]["identical_to_none"] == 1.0
    first = report["prompts"][0]["results"]["lookup"]
    assert set(first) >= {"tokens", "seconds", "tokens_per_s", "mean_accepted", "output_sha256"}
    assert report["summary"]["none"]["mean_accepted"] == 1.0
    assert set(report["by_category"]) == {"loop", "chat"}
    assert out.with_suffix(".md").read_text().startswith("# localspec bench")
    assert out.with_suffix(".png").read_bytes()[:4] == b"\x89PNG"


def test_bench_can_prime_the_recycling_matrix_first(loopy_model, tmp_path, capsys):
    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"id": "a", "category": "code", "prompt": "def the x"}\n')
    out = tmp_path / "bench.json"
    code = main(["bench", "-m", str(loopy_model), "--prompts", str(prompts), "--methods",
                 "recycling,auto", "-n", "24", "--threads", "1", "--prime", "--json", str(out)])
    assert code == 0
    assert "primed the recycling matrix for" in capsys.readouterr().err
    report = json.loads(out.read_text())
    assert report["settings"]["primed"] is True
    assert report["summary"]["auto"]["identical_to_none"] == 1.0


def test_bench_rejects_unknown_methods(loopy_model, tmp_path, capsys):
    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"id": "a", "prompt": "x"}\n')
    code = main(["bench", "-m", str(loopy_model), "--prompts", str(prompts), "--methods", "warp",
                 "--json", str(tmp_path / "o.json")])
    assert code == 2 and "unknown method" in capsys.readouterr().err


def test_bench_drafts_auto_and_retrieval_from_an_index(loopy_model, tmp_path, capsys, monkeypatch):
    from localspec.datastore import DatastoreDrafter

    source = tmp_path / "src"
    source.mkdir()
    (source / "a.py").write_text("for x in self: print(x)\nreturn self\n" * 5)
    index = tmp_path / "code.lsx"
    assert main(["index", "build", str(source), "-m", str(loopy_model), "--out", str(index)]) == 0
    asked = []
    propose = DatastoreDrafter.propose
    monkeypatch.setattr(DatastoreDrafter, "propose",
                        lambda self, history, budget: asked.append(budget) or propose(self, history, budget))
    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"id": "a", "category": "code", "prompt": "for x in self:"}\n')
    out = tmp_path / "bench.json"
    code = main(["bench", "-m", str(loopy_model), "--prompts", str(prompts), "--methods", "auto,retrieval",
                 "-n", "24", "--threads", "1", "--index", str(index), "--json", str(out)])
    assert code == 0
    report = json.loads(out.read_text())
    assert report["settings"]["index"] == "code.lsx"
    assert all(report["summary"][m]["identical_to_none"] == 1.0 for m in ("auto", "retrieval"))
    assert len(asked) > 0  # the datastore was drafted from


@pytest.mark.parametrize(("extra", "message"), [
    (["--methods", "lookup,recycling", "--index", "{tmp}/code.lsx"], "auto and retrieval"),
    (["--methods", "auto", "--index", "{tmp}/missing.lsx"], "does not exist"),
])
def test_bench_index_errors_are_one_line(tiny_model, tmp_path, capsys, extra, message):
    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"id": "a", "category": "code", "prompt": "x"}\n')
    (tmp_path / "code.lsx").write_text("not an index")
    code = main(["bench", "-m", str(tiny_model), "--prompts", str(prompts),
                 "--json", str(tmp_path / "r.json"), *[a.replace("{tmp}", str(tmp_path)) for a in extra]])
    err = capsys.readouterr().err
    assert code != 0 and message in err and "Traceback" not in err
    assert not (tmp_path / "r.json").exists()


def bench_args(model, tmp_path, *extra: str) -> list[str]:
    prompts = tmp_path / "p.jsonl"
    if not prompts.exists():
        prompts.write_text('{"id": "a", "category": "c", "prompt": "def f():"}\n'
                           '{"id": "b", "category": "c", "prompt": "for x in self:"}\n')
    return ["bench", "-m", str(model), "--prompts", str(prompts), "-n", "4", "--threads", "1", *extra]


@pytest.mark.parametrize(("json_path", "message"), [
    ("report.md", "must end in .json"),  # the table would overwrite the results
    ("chart.PNG", "must end in .json"),
    ("", "must end in .json"),
    ("folder.json", "is a directory"),
    ("sibling.json", "sibling.md is a directory"),
    ("afile/r.json", "is a file, not a folder"),
])
def test_bad_json_paths_are_refused_before_the_run(tiny_model, tmp_path, capsys, monkeypatch,
                                                    json_path, message):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "folder.json").mkdir()
    (tmp_path / "sibling.md").mkdir()
    (tmp_path / "sibling.json").write_text("precious")
    (tmp_path / "afile").write_text("precious")
    code = main(bench_args(tiny_model, tmp_path, "--methods", "none", "--json", json_path))
    err = capsys.readouterr().err
    assert code == 2 and "'--json'" in err and message in err and "model:" not in err  # no model loaded
    assert (tmp_path / "sibling.json").read_text() == "precious"
    assert (tmp_path / "afile").read_text() == "precious"
    assert not (tmp_path / "report.md").exists() and not (tmp_path / "chart.PNG").exists()


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs a Linux /proc")
def test_json_in_a_folder_that_takes_no_files_is_refused(tiny_model, tmp_path, capsys):
    code = main(bench_args(tiny_model, tmp_path, "--methods", "none", "--json", "/proc/r.json"))
    err = capsys.readouterr().err
    assert code == 2 and "'--json'" in err and "cannot create files in /proc" in err


def test_a_failed_write_leaves_the_old_results(loopy_model, tmp_path, capsys, monkeypatch):
    from localspec import bench

    def full_disk(report, path):
        path.write_bytes(b"half a chart")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(bench, "write_chart", full_disk)
    out = tmp_path / "part.json"
    out.write_text("precious")
    out.with_suffix(".md").write_text("precious table")
    code = main(bench_args(loopy_model, tmp_path, "--methods", "none", "--json", str(out)))
    err = capsys.readouterr().err
    assert code == 1 and "cannot write" in err and "No space left" in err and "internal error" not in err
    assert out.read_text() == "precious" and out.with_suffix(".md").read_text() == "precious table"
    assert sorted(f.name for f in tmp_path.iterdir()) == ["p.jsonl", "part.json", "part.md"]


@pytest.mark.parametrize(("extra", "message"), [
    (["--limit", "0"], "'--limit'"),
    (["--limit", "-1"], "'--limit'"),
    (["--pld-tokens", "0"], "'--pld-tokens'"),
    (["--pld-tokens", "-1"], "'--pld-tokens'"),
    (["--methods", ""], "--methods is empty"),
    (["--methods", " , "], "--methods is empty"),
    (["--backend", "torch", "--methods", "none,peer-ar"], "without --backend torch"),
    (["--backend", "torch", "--methods", "peer-pld"], "without --backend torch"),
])
def test_bad_bench_options_are_usage_errors(tiny_model, tmp_path, capsys, extra, message):
    out = tmp_path / "r.json"
    code = main(bench_args(tiny_model, tmp_path, *extra, "--json", str(out)))
    err = capsys.readouterr().err
    assert code == 2 and message in err
    assert not out.exists()


def test_repeated_methods_run_once_and_none_alone_charts_without_warnings(loopy_model, tmp_path, recwarn):
    out = tmp_path / "r.json"
    assert main(bench_args(loopy_model, tmp_path, "--methods", "none,none", "--json", str(out))) == 0
    report = json.loads(out.read_text())
    assert list(report["summary"]) == ["none"]
    assert [r["results"]["none"]["tokens"] for r in report["prompts"]] == [4, 4]  # -n 4, run once
    assert out.with_suffix(".png").exists()
    assert not [w for w in recwarn if "legend" in str(w.message)]


def test_a_prompt_too_long_for_the_context_is_named(loopy_model, tmp_path, capsys):
    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"id": "short", "prompt": "def f():"}\n'
                       '{"id": "long-one", "prompt": "' + "def the " * 400 + '"}\n')
    code = main(bench_args(loopy_model, tmp_path, "--methods", "none,peer-ar", "--ctx", "256",
                           "--json", str(tmp_path / "r.json")))
    err = capsys.readouterr().err
    assert code == 1 and "error: prompt long-one: the prompt has" in err and "context holds 256" in err
