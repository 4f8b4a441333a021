"""The command line: output, statistics, and a clear one-line error for every bad input."""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys

import pytest

from localspec.cli import main
from localspec.gguf_export import (
    LlamaConfig,
    byte_level_tokenizer,
    random_llama_weights,
    write_llama_gguf,
)
from localspec.paths import UserDirError, make_dir


def run(capsys, *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def test_generate_lookup_equals_plain_and_stats_show_acceptance(capsys, loopy_model):
    prompt = "for x in self: print(x)\n" * 4
    base = ["generate", "-m", str(loopy_model), "-p", prompt, "-n", "80", "--stats", "--threads", "1"]
    code, plain_out, plain_err = run(capsys, *base, "--drafter", "none")
    assert code == 0
    code, spec_out, spec_err = run(capsys, *base, "--drafter", "lookup")
    assert code == 0
    assert spec_out == plain_out
    stats = json.loads(spec_err.strip().splitlines()[-1])
    assert set(stats) >= {"tokens", "seconds", "tokens_per_s", "steps", "mean_accepted",
                          "draft_tokens", "accepted_tokens", "drafter"}
    assert stats["drafter"] == "lookup" and stats["tokens"] == 80
    assert stats["mean_accepted"] > 1.0
    assert json.loads(plain_err.strip().splitlines()[-1])["mean_accepted"] == 1.0


def test_generate_chat_uses_the_template(capsys, tiny_model):
    code, out, _ = run(capsys, "generate", "-m", str(tiny_model), "-p", "hi", "--chat",
                       "--system", "be brief", "-n", "5", "--threads", "1")
    assert code == 0 and out.endswith("\n")


def test_generate_sampling_with_seed_is_reproducible(capsys, tiny_model):
    args = ["generate", "-m", str(tiny_model), "-p", "def", "-n", "12", "-t", "0.8", "--top-p",
            "0.9", "--seed", "7", "--threads", "1", "--no-learn"]
    first = run(capsys, *args)
    second = run(capsys, *args)
    assert first[0] == 0 and first[1] == second[1]


def test_info_describes_the_model(capsys, tiny_model):
    code, out, _ = run(capsys, "info", "-m", str(tiny_model), "--json")
    info = json.loads(out)
    assert code == 0
    assert info["architecture"] == "llama" and info["layers"] == 2 and info["heads"] == 4
    assert info["vocab_size"] > 256 and info["chat_template"] is True
    assert info["quantisation"] == "F32" and info["context_length"] == 2048
    code, out, _ = run(capsys, "info", "-m", str(tiny_model))
    assert "architecture: llama" in out


@pytest.fixture(scope="module")
def bad_files(tmp_path_factory, tiny_model):
    d = tmp_path_factory.mktemp("bad")
    (d / "notgguf.gguf").write_text("hello, I am text")
    data = tiny_model.read_bytes()
    (d / "truncated.gguf").write_bytes(data[: len(data) // 2])
    (d / "header-only.gguf").write_bytes(data[:40])
    tok = byte_level_tokenizer(["ab"])
    cfg = LlamaConfig(vocab_size=len(tok.tokens))
    path = write_llama_gguf(d / "weird.gguf", cfg, random_llama_weights(cfg), tok)
    raw = path.read_bytes().replace(b"llama", b"zzzzz", 1)  # general.architecture value
    (d / "unknown-arch.gguf").write_bytes(raw)
    return d


@pytest.mark.parametrize("args, message", [
    (["generate", "-m", "/nonexistent/model.gguf", "-p", "x"], "not found"),
    (["generate", "-m", "{bad}/notgguf.gguf", "-p", "x"], "not a GGUF"),
    (["generate", "-m", "{bad}/truncated.gguf", "-p", "x"], "truncated"),
    (["generate", "-m", "{bad}/header-only.gguf", "-p", "x"], "GGUF"),
    (["generate", "-m", "{bad}/unknown-arch.gguf", "-p", "x"], "architecture"),
    (["info", "-m", "{bad}/truncated.gguf"], "truncated"),
    (["generate", "-m", "{tiny}", "-p", "x", "-t", "-1"], "--temperature"),
    (["generate", "-m", "{tiny}", "-p", "x", "--top-p", "0"], "--top-p"),
    (["generate", "-m", "{tiny}", "-p", "x", "--top-k", "-3"], "--top-k"),
    (["generate", "-m", "{tiny}", "-p", "x", "--min-p", "1.5"], "--min-p"),
    (["generate", "-m", "{tiny}", "-p", "x", "-n", "0"], "--max-tokens"),
    (["generate", "-m", "{tiny}", "-p", "x", "-n", "abc"], "max-tokens"),
    (["generate", "-m", "{tiny}", "-p", "x", "--drafter", "magic"], "unknown drafter"),
    (["generate", "-m", "{tiny}", "-p", "x" * 3000, "--ctx", "256"], "context"),
    (["generate", "-m", "{tiny}"], "prompt"),
])
def test_bad_input_gives_one_line_error_and_nonzero_exit(capsys, bad_files, tiny_model, args,
                                                         message):
    args = [a.format(bad=bad_files, tiny=tiny_model) for a in args]
    code, out, err = run(capsys, *args, "--threads", "1") if args[0] == "generate" else run(
        capsys, *args)
    assert code != 0
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("localspec: error:")
    assert message.lower() in lines[0].lower()
    assert "Traceback" not in err


@pytest.mark.parametrize("args, flag", [
    (["--ctx", "1"], "--ctx"),
    (["--ctx", "4"], "--ctx"),
    (["--ctx", "-5"], "--ctx"),
    (["-n", "0"], "--max-tokens"),
    (["-t", "101"], "--temperature"),
    (["--top-p", "2"], "--top-p"),
    (["--top-k", "-1"], "--top-k"),
    (["--min-p", "-0.1"], "--min-p"),
    (["--threads", "0"], "--threads"),
    (["--draft-tokens", "256"], "--draft-tokens"),
    (["--seed", "-1"], "--seed"),
    (["--drafter", "bogus"], "unknown drafter"),
])
def test_bad_option_values_are_usage_errors_naming_the_flag(capsys, tiny_model, args, flag):
    code, out, err = run(capsys, "generate", "-m", str(tiny_model), "-p", "x", "--threads", "1", *args)
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and err.startswith("localspec: error:") and flag in err, err


def test_unknown_drafter_names_the_torch_drafters_too(capsys, tiny_model):
    code, _, err = run(capsys, "generate", "-m", str(tiny_model), "-p", "x", "--drafter", "bogus",
                       "--backend", "torch")
    assert code == 2
    assert "layerskip" in err and "polybasic" in err and "--backend torch" in err
    code, out, _ = run(capsys, "generate", "--help")
    assert code == 0 and "layerskip" in out and "polybasic" in out


def test_prompt_that_is_not_utf8_is_generated_from(capsys, monkeypatch, tiny_model):
    raw = b"\xff\xfe"
    args = ["generate", "-m", str(tiny_model), "-n", "4", "--threads", "1"]
    code, _, err = run(capsys, *args, "-p", os.fsdecode(raw))  # as the shell hands it over
    assert code == 0, err
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(raw), encoding="utf-8"))
    code, _, err = run(capsys, *args, "-p", "-")
    assert code == 0, err


@pytest.mark.parametrize("below", ["", "sub"])
def test_cache_dir_that_is_a_file_is_a_one_line_error(capsys, monkeypatch, tmp_path, tiny_model, below):
    blocker = tmp_path / "afile"
    blocker.write_text("mine")
    monkeypatch.setenv("LOCALSPEC_CACHE_DIR", str(blocker / below))
    code, out, err = run(capsys, "generate", "-m", str(tiny_model), "-p", "x", "-n", "4",
                         "--threads", "1")
    assert code == 1
    assert err.count("\n") == 1 and err.startswith("localspec: error: LOCALSPEC_CACHE_DIR="), err
    assert "is a file" in err or "inside a file" in err
    assert blocker.read_text() == "mine"
    with pytest.raises(UserDirError, match="cannot create the folder"):
        make_dir(blocker / "sub")


def test_a_system_message_needs_chat(capsys, tiny_model):
    code, out, err = run(capsys, "generate", "-m", str(tiny_model), "-p", "x", "--system", "be brief")
    assert code == 2 and "--chat" in err and not out


def test_a_cache_file_that_cannot_be_written_is_a_one_line_error(capsys, monkeypatch, tmp_path, tiny_model):
    (tmp_path / "cost_curves.json").mkdir()  # where the measured verify costs go
    monkeypatch.setenv("LOCALSPEC_CACHE_DIR", str(tmp_path))
    code, out, err = run(capsys, "generate", "-m", str(tiny_model), "-p", "x", "-n", "4", "--threads", "1")
    assert code == 1
    assert err.count("\n") == 1 and err.startswith("localspec: error: cannot write "), err
    assert [p.name for p in tmp_path.iterdir()] == ["cost_curves.json"]  # no temporary file left


@pytest.mark.skipif(shutil.which("localspec") is None, reason="console script not installed")
def test_console_script_reports_errors_without_traceback():
    proc = subprocess.run(["localspec", "generate", "-m", "/nope.gguf", "-p", "x"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1
    assert proc.stderr.strip() == "localspec: error: model file not found: /nope.gguf"


def test_module_entry_point_prints_help():
    proc = subprocess.run([sys.executable, "-m", "localspec.cli", "--help"], capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0 and "generate" in proc.stdout and "info" in proc.stdout
