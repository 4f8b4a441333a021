"""`localspec bench`: prompt files, the report's arithmetic, and a small end-to-end run."""

from __future__ import annotations

import json

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


@pytest.mark.parametrize("line", ['{"id": 1}', 'not json', '{"category": "x", "prompt": "a"}',
                                  '{"id": 1, "prompt": "a", "messages": [{"role": "user", "content": "b"}]}',
                                  '{"id": 1, "messages": [{"role": "alien", "content": "b"}]}'])
def test_bad_prompt_lines_name_the_line(tmp_path, line):
    path = tmp_path / "p.jsonl"
    path.write_text('{"id": 0, "prompt": "ok"}\n' + line + "\n")
    with pytest.raises(InvalidSettingsError, match=":2"):
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
